"""Running start.py as a user would: a subprocess with a filesystem-mocked OBS."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = os.path.join(REPO, "start.py")

# Tiny AECR-Net runs: seconds per step on 2 cores, still the real network and data path.
TINY_AECRNET = [
    "--synth.num_scenes=4", "--synth.height=64", "--synth.width=64",
    "--data.batch_size=2", "--data.num_workers=1", "--train.log_every=1",
    "--export.height=32", "--export.width=32", "--eval.max_images=2",
]


def clean_env(mock_root: str, **extra) -> dict:
    """The caller's environment minus anything that would make start.py think it runs on a
    cluster, plus the OBS mock root."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MA_", "VC_", "MS_", "RANK", "DLS_", "OBS_", "S3_", "AWS_"))
           and k not in ("DEVICE_ID", "ASCEND_DEVICE_ID", "JOB_ID", "RANK_TABLE_FILE")}
    env["OBS_MOCK_ROOT"] = mock_root
    env.setdefault("OMP_NUM_THREADS", "2")
    env.update(extra)
    return env


def start(args, env, timeout=600, cwd=None):
    """Run start.py; jobs stage into a cache beside the mock root, never the repo's ./runs."""
    args = list(args)
    if not any(a.startswith("--cache_dir") for a in args) and "--task=plan" not in args:
        root = env.get("OBS_MOCK_ROOT") or tempfile.mkdtemp(prefix="e2e-")
        args.append("--cache_dir=" + os.path.join(os.path.dirname(root), "cache"))
    return subprocess.run([sys.executable, START] + args, env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)
