"""What a user sees of a short job: its console (each line once, no library noise, every
evaluation beside the input's values) and the metric history it leaves in train_url."""
from __future__ import annotations

import csv
import re

import pytest

from tests.e2e_helpers import TINY_AECRNET, clean_env, read_json, start

pytestmark = pytest.mark.slow

TIME = re.compile(r"^\d\d:\d\d:\d\d ")


def _lines(res):
    return [TIME.sub("", line) for line in (res.stdout + res.stderr).splitlines() if line.strip()]


def test_short_run_console_and_metric_history(tmp_path):
    obs = tmp_path / "obs"
    obs.mkdir()
    env = clean_env(str(obs))
    res = start(["--task=synth", "--data_url=obs://b/data"] + TINY_AECRNET, env)
    assert res.returncode == 0, res.stdout + res.stderr
    res = start(["--data_url=obs://b/data", "--train_url=obs://b/out", "--train.max_steps=4",
                 "--train.eval_every=2", "--train.ckpt_every=2", "--loss.cr_weight=0"]
                + TINY_AECRNET, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = _lines(res)
    repeated = {line for line in lines if lines.count(line) > 1}
    assert not repeated, repeated
    # One line per event, not a second one in other words: staging, export, final upload.
    for event in ("obs://b/data -> ", "exported ", " -> obs://b/out: "):
        assert sum(event in line for line in lines) == 1, (event, lines)
    text = "\n".join(lines)
    assert "FusedSparseAdam" not in text and "libpng" not in text
    evals = [line for line in lines if "eval on" in line]
    assert len(evals) == 2
    for line in evals:
        assert re.search(r"PSNR [\d.]+ \(input [\d.]+\) \| SSIM [\d.]+ \(input [\d.]+\) \| "
                         r"CIEDE2000 [\d.]+ \(input [\d.]+\)", line), line

    out = obs / "b" / "out"
    with open(str(out / "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], r["step"]) for r in rows] == [
        ("train", "1"), ("train", "2"), ("eval", "2"), ("train", "3"), ("train", "4"),
        ("eval", "4")]
    assert {"loss", "l1", "lr", "images_per_second", "input_psnr"} <= set(rows[0])
    assert (out / "curves.png").stat().st_size > 10000

    # Continued to 6 steps from a fresh cache (as ModelArts restarts): the history is fetched
    # from train_url and extended, no step listed twice.
    res = start(["--data_url=obs://b/data", "--train_url=obs://b/out", "--train.max_steps=6",
                 "--train.eval_every=2", "--train.ckpt_every=2", "--loss.cr_weight=0",
                 "--train.resume=auto", "--cache_dir=%s" % (tmp_path / "fresh")]
                + TINY_AECRNET, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with open(str(out / "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], int(r["step"])) for r in rows] == [
        (kind, step) for step in range(1, 7) for kind in ("train", "eval")
        if kind == "train" or step % 2 == 0]

    # Fine-tuning from this run's best.ckpt, by URL: a new run in its own train_url.
    res = start(["--data_url=obs://b/data", "--train_url=obs://b/tuned", "--train.max_steps=1",
                 "--loss.cr_weight=0", "--net_weights=obs://b/out/ckpt/best.ckpt"]
                + TINY_AECRNET, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    took = [line for line in _lines(res) if "is a training checkpoint" in line]
    assert len(took) == 1 and "left out opt.*" in took[0], took
    run = read_json(str(obs / "b" / "tuned" / "run.json"))
    assert run["model"]["net_weights"] == "obs://b/out/ckpt/best.ckpt"

    # Evaluating the run: no VGG banner (no VGG is built), the same line format.
    res = start(["--task=eval", "--data_url=obs://b/data", "--train_url=obs://b/out",
                 "--loss.cr_weight=0.1"] + TINY_AECRNET, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    text = "\n".join(_lines(res))
    assert "VGG" not in text and "FusedSparseAdam" not in text
    assert re.search(r"SSIM [\d.]+ \(input [\d.]+\)", text)

    # A job that fails on bad input says so once, as the last line.
    res = start(["--task=eval", "--data_url=obs://b/data", "--train_url=obs://b/other",
                 "--eval.checkpoint=obs://b/out/config.yaml"] + TINY_AECRNET, env)
    assert res.returncode == 2
    errors = [line for line in _lines(res) if "config.yaml" in line and "ERROR" in line]
    assert not errors and res.stderr.strip().splitlines()[-1].startswith("error: ")
