"""Whole jobs through start.py on tiny synthetic data with OBS mocked to a folder.

These are the runs a user does before paying for Ascend hours: synth → train → eval/export,
a job killed by SIGTERM, and two data-parallel ranks (msrun, or MindSpore's MS_*
variables where it has no msrun).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests import cluster
from tests.e2e_helpers import REPO, START, TINY_AECRNET, clean_env, read_json, start

pytestmark = pytest.mark.slow


@pytest.fixture()
def obs(tmp_path):
    root = tmp_path / "obs"
    root.mkdir()
    return root


def synth_aecrnet(obs, env, data="obs://bucket/data"):
    res = start(["--task=synth", "--data_url=" + data] + TINY_AECRNET, env)
    assert res.returncode == 0, res.stdout + res.stderr
    return data


def test_train_uploads_everything_to_train_url(obs, tmp_path):
    env = clean_env(str(obs))
    data = synth_aecrnet(obs, env)
    assert any((obs / "bucket" / "data").rglob("*.png"))
    res = start(["--data_url=" + data, "--train_url=obs://bucket/out", "--train.max_steps=4",
                 "--train.ckpt_every=2", "--train.eval_every=4"] + TINY_AECRNET, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = obs / "bucket" / "out"
    run = read_json(str(out / "run.json"))
    assert run["status"] == "finished"
    for key in ("psnr", "ssim", "ciede2000", "reference_psnr"):
        assert key in run["metrics"], run["metrics"]
    assert (out / "config.yaml").is_file()
    assert sorted(p.name for p in (out / "ckpt").glob("step_*.ckpt")) == [
        "step_00000002.ckpt", "step_00000004.ckpt"]
    assert (out / "export" / "aecrnet.mindir").is_file()
    assert list((out / "samples").glob("*.png"))
    assert (out / "logs" / "rank_0.log").is_file()

    assert [a["status"] for a in run["attempts"]] == ["finished"]
    assert run["checkpoint"]["path"] == "ckpt/step_00000004.ckpt"
    train_record = (out / "run.json").read_bytes()
    best = (out / "ckpt" / "best.ckpt").read_bytes()

    # The same checkpoint evaluates as a separate job, in a folder of its own.
    res = start(["--task=eval", "--data_url=" + data, "--train_url=obs://bucket/eval",
                 "--eval.checkpoint=obs://bucket/out/ckpt/step_00000004.ckpt"] + TINY_AECRNET, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (evaluated,) = (obs / "bucket" / "eval" / "eval").glob("*/run.json")
    assert read_json(str(evaluated))["metrics"]["psnr"] == pytest.approx(
        run["metrics"]["psnr"], abs=1e-3)

    # Later jobs on the same train_url (fresh cache, as on ModelArts): eval takes the run's
    # newest checkpoint and keeps to eval/<time>/; the same training command finds its run
    # finished; another run is refused. None of them touches the run's files.
    fresh = ["--cache_dir=%s" % (tmp_path / "fresh")]
    res = start(["--task=eval", "--data_url=" + data, "--train_url=obs://bucket/out"] + fresh
                + TINY_AECRNET, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (again,) = (out / "eval").glob("*/run.json")
    evaluated = read_json(str(again))
    assert evaluated["metrics"]["psnr"] == pytest.approx(run["metrics"]["psnr"], abs=1e-3)
    assert evaluated["checkpoint"] == "obs://bucket/out/ckpt/step_00000004.ckpt"
    assert (again.parent / "samples").is_dir() and (again.parent / "logs" / "rank_0.log").is_file()
    res = start(["--data_url=" + data, "--train_url=obs://bucket/out", "--train.max_steps=4",
                 "--train.ckpt_every=2", "--train.eval_every=4"] + fresh + TINY_AECRNET, env)
    assert res.returncode == 0 and "already finished (step 4): nothing to train" in res.stdout
    res = start(["--data_url=" + data, "--train_url=obs://bucket/out", "--train.max_steps=5"]
                + fresh + TINY_AECRNET, env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "obs://bucket/out already holds run cfg-" in res.stderr
    assert "differs from its config.yaml in train.max_steps 4 → 5" in res.stderr
    assert (out / "run.json").read_bytes() == train_record
    assert (out / "ckpt" / "best.ckpt").read_bytes() == best

    # train.resume=auto continues it with the new settings.
    res = start(["--data_url=" + data, "--train_url=obs://bucket/out", "--train.resume=auto",
                 "--train.max_steps=5", "--train.eval_every=0"] + fresh + TINY_AECRNET, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    resumed = read_json(str(out / "run.json"))
    assert (resumed["train"]["start_step"], resumed["train"]["steps"]) == (4, 5)
    assert [(a["first_step"], a["last_step"]) for a in resumed["attempts"]] == [(0, 4), (4, 5)]
    assert (out / "ckpt" / "step_00000005.ckpt").is_file()

    # Converted official weights are exported with no training checkpoint.
    res = start(["--task=export", "--train_url=obs://bucket/export", "--eval.checkpoint=none"]
                + TINY_AECRNET, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert list((obs / "bucket" / "export" / "export").glob("*/export/aecrnet.mindir"))
    assert not (obs / "bucket" / "export" / "ckpt").exists()


def test_sigterm_after_first_checkpoint_keeps_it_in_train_url(obs):
    env = clean_env(str(obs))
    data = synth_aecrnet(obs, env)
    out = obs / "bucket" / "killed"
    proc = subprocess.Popen(
        [sys.executable, START, "--data_url=" + data, "--train_url=obs://bucket/killed",
         "--train.max_steps=100000", "--train.ckpt_every=1", "--train.eval_every=0"] + TINY_AECRNET,
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not list((out / "ckpt").glob("step_*.ckpt")):
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "no checkpoint reached train_url while training"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "Traceback" not in output, output[-3000:]
    run = read_json(str(out / "run.json"))
    assert run["status"] == "interrupted"
    assert list((out / "ckpt").glob("step_*.ckpt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@cluster.STALLS_ON_MINDSPORE_2_0
def test_two_ranks_train_in_data_parallel(obs, tmp_path):
    """msrun, or where MindSpore has none (< 2.3) the same cluster through its variables."""
    env = clean_env(str(obs), JOB_ID="e2e-msrun")
    data = synth_aecrnet(obs, env)
    launch = cluster.run([START, "--data_url=" + data, "--train_url=obs://bucket/dp",
                          "--cache_dir=%s" % (tmp_path / "cache"), "--train.max_steps=3",
                          "--train.ckpt_every=3", "--train.eval_every=0"] + TINY_AECRNET,
                         workers=2, port=_free_port(), log_dir=str(tmp_path / "msrun_logs"),
                         env=env, cwd=REPO, timeout=900)
    assert launch.returncode == 0, launch.output[-2000:] + launch.logs()[-4000:]
    out = obs / "bucket" / "dp"
    run = read_json(str(out / "run.json"))
    assert run["status"] == "finished"
    assert (run["rank_size"], run["platform"]) == (2, "msrun")
    assert [p.name for p in (out / "ckpt").glob("step_*.ckpt")] == ["step_00000003.ckpt"]
    rank_logs = [(out / "logs" / ("rank_%d.log" % r)).read_text() for r in (0, 1)]
    # One copy per node: local rank 0 downloads, rank 1 waits for it.
    assert sum("staged obs://bucket/data" in text for text in rank_logs) == 1, rank_logs
    sums = [re.findall(r"trainable parameter checksum .*: (\w+)", text) for text in rank_logs]
    assert sums[0] and sums[0] == sums[1], sums


def _launch_processes(marker: str) -> list:
    """Processes whose command line mentions `marker` (this test's own folders)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_worker_failing_before_init_ends_the_launch_at_once(obs, tmp_path):
    """A wrong data_url: both workers fail while staging, long before communication init.
    The launch used to end only when its scheduler's 600 s cluster time-out ran out."""
    env = clean_env(str(obs), LAUNCH_GUARD_DIR=str(tmp_path / "guard"))
    logs = tmp_path / "msrun_logs"
    started = time.monotonic()
    launch = cluster.launch([START, "--data_url=obs://bucket/no_such_data",
                             "--train_url=obs://bucket/failed",
                             "--cache_dir=%s" % (tmp_path / "cache")],
                            workers=2, port=_free_port(), log_dir=str(logs), env=env, cwd=REPO)
    try:
        code = launch.wait(timeout=120)
    except TimeoutError:
        code = None
    seconds = time.monotonic() - started
    output = launch.output
    worker_logs = launch.logs()
    scheduler_log = (logs / "scheduler.log").read_text()
    assert seconds < 30, "the launch took %.1f s to give up:\n%s" % (seconds, scheduler_log[-3000:])
    assert code, output[-3000:]
    assert "obs://bucket/no_such_data does not exist" in worker_logs, worker_logs[-3000:]
    # The scheduler says why it stopped, and the launcher repeats it on its console.
    assert re.search(r"\[ERROR\] launch_guard: worker rank \d .*obs://bucket/no_such_data",
                     scheduler_log), scheduler_log[-3000:]
    assert "launch_guard" in output
    # Nothing of this launch is left running (the watcher included), nothing left in the guard.
    deadline = time.time() + 10
    while _launch_processes(str(tmp_path)) and time.time() < deadline:
        time.sleep(0.5)
    assert _launch_processes(str(tmp_path)) == []
    assert list((tmp_path / "guard").glob("*/*")) == []


# The other two models, each as small as its config allows: synthetic data, a few steps.
TINY_SINGAN = [
    "--config=configs/singan_dehaze_demo.yaml", "--data.train.crop=32", "--data.num_workers=1",
    "--net.generator.ngf=4", "--net.discriminator.ndf=4", "--loss.nce.num_patches=16",
    "--loss.nce.mlp_dim=8", "--loss.mmd.num_samples=16", "--synth.num_hazy=3",
    "--synth.num_clear=2", "--synth.num_test=1", "--synth.height=40", "--synth.width=36",
    "--synth.photos=false", "--export.height=32", "--export.width=32",
]
TINY_LSID = [
    "--config=configs/lsid_demo.yaml", "--synth.num_scenes=2", "--synth.num_test_scenes=0",
    "--synth.num_val_scenes=1", "--synth.height=64", "--synth.width=96",
    "--data.train.crop=32", "--data.num_workers=1", "--preprocess.workers=1",
    "--eval.max_images=1", "--export.height=32", "--export.width=48",
]


@pytest.mark.parametrize("model", ["singan_dehaze", "lsid"])
def test_each_model_trains_evaluates_and_exports_through_start_py(obs, tmp_path, model):
    """What `python start.py` does on ModelArts, for SinGAN-Dehaze and LSID (AECR-Net: the
    first test): synthetic data, training with a checkpoint, evaluation, a MindIR."""
    env = clean_env(str(obs))
    if model == "lsid":
        tiny, data = TINY_LSID, "obs://bucket/hdf5"
        steps = [["--task=synth", "--synth.output_url=obs://bucket/raw"],
                 ["--task=preprocess", "--preprocess.raw_url=obs://bucket/raw",
                  "--data_url=" + data]]
    else:
        tiny, data = TINY_SINGAN, "obs://bucket/data"
        steps = [["--task=synth", "--data_url=" + data]]
    for args in steps:
        res = start(args + tiny, env)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    res = start(["--data_url=" + data, "--train_url=obs://bucket/out", "--train.max_steps=2",
                 "--train.ckpt_every=2", "--train.eval_every=2"] + tiny, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = obs / "bucket" / "out"
    run = read_json(str(out / "run.json"))
    assert run["status"] == "finished"
    assert "psnr" in run["metrics"], run["metrics"]
    assert [p.name for p in (out / "ckpt").glob("step_*.ckpt")] == ["step_00000002.ckpt"]
    assert (out / "export" / ("%s.mindir" % model)).is_file()
