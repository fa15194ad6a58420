"""Chaos: a training job killed again and again, restarted each time with the same command on a
fresh cache (what ModelArts' auto restart does), must end exactly where an uninterrupted run
ends — same step, same weights, export present, every attempt in run.json.

AECR-Net runs against the OBS SDK backend on moto_server behind the fault-injecting proxy, so
a kill can land while a checkpoint upload is in flight; SinGAN-Dehaze (two optimizers) against
the filesystem mock. Kills: SIGTERM at a random step and at a random moment after the job
started (staging, compilation or training), SIGKILL while a checkpoint file is being written
(the process is frozen with SIGSTOP first, so the kill is known to land mid-write), SIGKILL
while a checkpoint upload is in flight, and SIGKILL at a random step.

Tolerance: the weights must be equal to 1e-6. Measured: bit-identical (max abs diff 0.0) —
data order, augmentation and the GAN's random draws derive from (seed, step), MindSpore's CPU
kernels are deterministic run to run, and a checkpoint holds everything the next step reads
(weights, FastDeconv's running statistics, Adam moments and step).
"""
from __future__ import annotations

import glob
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import cluster

from tests.e2e_helpers import REPO, START, TINY_AECRNET, clean_env, read_json, start

pytestmark = pytest.mark.slow

ms = pytest.importorskip("mindspore")

STEP_LINE = re.compile(r"\bstep +(\d+)/\d+ \|")


class Attempt:
    """One launch of start.py, its console in a file, killed by the test when it says."""

    def __init__(self, args, env, log_path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, START] + list(args), env=env, cwd=REPO,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def text(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def step(self) -> int:
        steps = STEP_LINE.findall(self.text())
        return int(steps[-1]) if steps else 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, predicate, what: str, timeout: float = 300.0, poll: float = 0.05):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.alive(), "the job ended before %s:\n%s" % (what, self.text()[-3000:])
            assert time.monotonic() < deadline, "timed out waiting for %s" % what
            time.sleep(poll)

    def kill(self, sig) -> int:
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGSTOP:
            return 0
        return self.finish(timeout=120)

    def finish(self, timeout: float = 600) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
        return code


def kill_mid_write(attempt: Attempt, ckpt_dir: str, timeout: float = 300.0) -> None:
    """SIGKILL while a checkpoint file is being written: freeze the process the moment its
    temporary file appears, check it is still there (so the write is unfinished), kill."""
    pattern = os.path.join(ckpt_dir, ".step_*.tmp*")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert attempt.alive(), attempt.text()[-3000:]
        if glob.glob(pattern):
            attempt.kill(signal.SIGSTOP)
            if glob.glob(pattern):
                assert attempt.kill(signal.SIGKILL) == -signal.SIGKILL
                return
            os.kill(attempt.proc.pid, signal.SIGCONT)  # just finished: wait for the next one
        time.sleep(0.0005)
    pytest.fail("no checkpoint write was caught in %.0f s" % timeout)


def final_weights(path: str) -> dict:
    params = ms.load_checkpoint(path)
    return {k: v.asnumpy() for k, v in params.items() if not k.startswith(("opt", "__"))}


def assert_same_weights(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    worst = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)
    assert worst <= 1e-6, "weights differ from the uninterrupted run by %g" % worst
    return worst


def test_aecrnet_survives_kills_mid_checkpoint_and_mid_upload(faulty_s3, tmp_path):
    rng = random.Random(20261130)
    bucket = faulty_s3.name
    env = clean_env("", **faulty_s3.env)
    env.pop("OBS_MOCK_ROOT")
    data = "s3://%s/data" % bucket
    res = start(["--task=synth", "--data_url=" + data, "--train_url=s3://%s/records" % bucket,
                 "--cache_dir=%s" % (tmp_path / "synth")] + TINY_AECRNET, env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    job = ["--data_url=" + data, "--train.max_steps=40", "--train.ckpt_every=2",
           "--train.eval_every=10", "--train.keep_last=2"] + TINY_AECRNET

    ref = Attempt(job + ["--train_url=s3://%s/ref" % bucket,
                         "--cache_dir=%s" % (tmp_path / "ref")], env, str(tmp_path / "ref.log"))
    assert ref.finish() == 0, ref.text()[-3000:]

    train_url = "s3://%s/chaos" % bucket
    launches = []

    def launch():
        cache = tmp_path / ("cache%d" % len(launches))  # a fresh /cache every time
        attempt = Attempt(job + ["--train_url=" + train_url, "--cache_dir=%s" % cache], env,
                          str(tmp_path / ("attempt%d.log" % len(launches))))
        attempt.ckpt_dir = str(cache / "output" / bucket / "chaos" / "ckpt")
        launches.append(attempt)
        return attempt

    # 1. SIGTERM at a random step.
    a = launch()
    target = rng.randint(3, 7)
    a.wait_for(lambda: a.step() >= target, "step %d" % target)
    assert a.kill(signal.SIGTERM) == 128 + signal.SIGTERM
    # 2. SIGKILL in the middle of writing a checkpoint file.
    a = launch()
    kill_mid_write(a, a.ckpt_dir)
    # 3. SIGKILL while a checkpoint upload is in flight (the proxy holds the PUT for 5 s).
    a = launch()
    a.wait_for(lambda: a.step() >= 1, "the first step")
    faulty_s3.proxy.add("delay", "PUT", key=r"chaos/ckpt/step_", times=1, seconds=5)
    a.wait_for(lambda: sum(n for k, n in faulty_s3.proxy.injected.items()
                           if k.startswith("delay")) >= 1, "a delayed upload", poll=0.01)
    assert a.kill(signal.SIGKILL) == -signal.SIGKILL
    # 4. SIGTERM at a random moment after the job started: staging, compiling or training.
    a = launch()
    a.wait_for(lambda: "task train, output" in a.text(), "the job to start")
    time.sleep(rng.uniform(0.2, 6.0))
    assert a.kill(signal.SIGTERM) == 128 + signal.SIGTERM
    # 5. SIGKILL at a random step.
    a = launch()
    target = rng.randint(2, 6)
    a.wait_for(lambda: a.step() >= target, "step %d" % target)
    assert a.kill(signal.SIGKILL) == -signal.SIGKILL
    # The same command once more: it carries on to the end.
    a = launch()
    assert a.finish() == 0, a.text()[-3000:]
    assert "continuing run cfg-" in a.text()

    listed = sorted(o["Key"] for o in faulty_s3.client.list_objects_v2(
        Bucket=bucket, Prefix="chaos/").get("Contents", []))
    run = read_json_from_s3(faulty_s3, "chaos/run.json", tmp_path)
    assert run["status"] == "finished" and run["checkpoint"]["step"] == 40
    statuses = [att["status"] for att in run["attempts"]]
    assert statuses == ["interrupted", "lost", "lost", "interrupted", "lost", "finished"], \
        run["attempts"]
    for earlier, later in zip(run["attempts"], run["attempts"][1:]):
        # Each attempt continues from the newest checkpoint that reached train_url.
        assert later["first_step"] == earlier["last_step"], run["attempts"]
    assert "chaos/export/aecrnet.mindir" in listed
    assert [k for k in listed if "/ckpt/" in k] == [
        "chaos/ckpt/best.ckpt", "chaos/ckpt/step_00000038.ckpt", "chaos/ckpt/step_00000040.ckpt"]
    assert not [k for k in listed if "tmp" in k or k.endswith(".part")]

    got = final_weights(download(faulty_s3, "chaos/ckpt/step_00000040.ckpt", tmp_path))
    want = final_weights(download(faulty_s3, "ref/ckpt/step_00000040.ckpt", tmp_path))
    assert_same_weights(got, want)


def download(s3, key: str, tmp_path) -> str:
    path = str(tmp_path / "downloads" / key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    s3.client.download_file(s3.name, key, path)
    return path


def read_json_from_s3(s3, key: str, tmp_path) -> dict:
    return read_json(download(s3, key, tmp_path))


SINGAN = [
    "--config=configs/singan_dehaze_demo.yaml", "--data.train.crop=32", "--data.num_workers=1",
    "--net.generator.ngf=4", "--net.discriminator.ndf=4", "--loss.nce.num_patches=16",
    "--loss.nce.mlp_dim=8", "--loss.mmd.num_samples=16", "--synth.num_hazy=3",
    "--synth.num_clear=2", "--synth.num_test=1", "--synth.height=40", "--synth.width=36",
    "--synth.photos=false", "--export.height=32", "--export.width=32", "--train.log_every=1",
]


def test_singan_two_optimizers_survive_kills(tmp_path):
    rng = random.Random(7)
    obs = tmp_path / "obs"
    obs.mkdir()
    env = clean_env(str(obs))
    res = start(["--task=synth", "--data_url=obs://b/data", "--train_url=obs://b/records"]
                + SINGAN, env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    job = SINGAN + ["--data_url=obs://b/data", "--train.max_steps=16", "--train.ckpt_every=2",
                    "--train.eval_every=8", "--train.keep_last=1"]
    ref = Attempt(job + ["--train_url=obs://b/ref", "--cache_dir=%s" % (tmp_path / "ref")],
                  env, str(tmp_path / "ref.log"))
    assert ref.finish() == 0, ref.text()[-3000:]

    def launch(i):
        cache = tmp_path / ("cache%d" % i)
        attempt = Attempt(job + ["--train_url=obs://b/chaos", "--cache_dir=%s" % cache], env,
                          str(tmp_path / ("attempt%d.log" % i)))
        attempt.ckpt_dir = str(cache / "output" / "b" / "chaos" / "ckpt")
        return attempt

    a = launch(0)
    target = rng.randint(3, 6)
    a.wait_for(lambda: a.step() >= target, "step %d" % target)
    assert a.kill(signal.SIGTERM) == 128 + signal.SIGTERM
    a = launch(1)
    kill_mid_write(a, a.ckpt_dir)
    a = launch(2)
    assert a.finish() == 0, a.text()[-3000:]

    out = obs / "b" / "chaos"
    run = read_json(str(out / "run.json"))
    assert [att["status"] for att in run["attempts"]] == ["interrupted", "lost", "finished"]
    assert (out / "export" / "singan_dehaze.mindir").is_file()
    got = final_weights(str(out / "ckpt" / "step_00000016.ckpt"))
    want = final_weights(str(obs / "b" / "ref" / "ckpt" / "step_00000016.ckpt"))
    assert_same_weights(got, want)


@cluster.STALLS_ON_MINDSPORE_2_0
def test_ranks_resume_together(tmp_path):
    """Every rank of a data-parallel job restores the same checkpoint (one copy per node);
    launched by msrun, or where MindSpore has none (< 2.3) through its MS_* variables."""
    import socket

    obs = tmp_path / "obs"
    env = clean_env(str(obs))
    res = start(["--task=synth", "--data_url=obs://b/data", "--train_url=obs://b/rec"]
                + TINY_AECRNET, env)
    assert res.returncode == 0, res.stderr[-2000:]

    def launch(i, steps, extra=()):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        argv = [START, "--data_url=obs://b/data", "--train_url=obs://b/dp",
                "--cache_dir=%s" % (tmp_path / ("cache%d" % i)), "--train.max_steps=%d" % steps,
                "--train.ckpt_every=3", "--train.eval_every=0",
                "--export.enabled=false"] + list(extra) + TINY_AECRNET
        done = cluster.run(argv, workers=2, port=port, log_dir=str(tmp_path / ("msrun%d" % i)),
                           env=env, cwd=REPO, timeout=900)
        text = done.logs()
        assert done.returncode == 0, done.output[-2000:] + text[-4000:]
        return text

    launch(0, 3)
    launch(1, 5, ["--train.resume=auto"])
    rank_logs = [(obs / "b" / "dp" / "logs" / ("rank_%d.log" % r)).read_text() for r in (0, 1)]
    for text in rank_logs:  # each rank's log holds both launches
        assert "resuming from" in text and "at step 3" in text, text[-3000:]
        assert "trained 2 steps (3 → 5)" in text
    sums = [re.findall(r"trainable parameter checksum .*: (\w+)", text)[-1] for text in rank_logs]
    assert sums[0] == sums[1], sums


def test_sigterm_during_startup_ends_cleanly(tmp_path):
    """SIGTERM while MindSpore is being imported or the model built (the moments a restart
    storm hits) ends the attempt as interrupted, never with SIGABRT or a traceback."""
    obs = tmp_path / "obs"
    env = clean_env(str(obs))
    res = start(["--task=synth", "--data_url=obs://b/data", "--train_url=obs://b/rec"]
                + TINY_AECRNET, env)
    assert res.returncode == 0, res.stderr[-2000:]
    job = ["--data_url=obs://b/data", "--train_url=obs://b/out", "--train.max_steps=1000",
           "--train.eval_every=0"] + TINY_AECRNET
    for i, delay in enumerate((0.3, 1.0, 2.0, 3.0)):
        a = Attempt(job + ["--cache_dir=%s" % (tmp_path / ("c%d" % i))], env,
                    str(tmp_path / ("a%d.log" % i)))
        a.wait_for(lambda a=a: "task train, output" in a.text(), "the job to start", poll=0.01)
        time.sleep(delay)
        code = a.kill(signal.SIGTERM)
        assert code == 128 + signal.SIGTERM, (delay, a.text()[-3000:])
        assert "Traceback" not in a.text() and "Fatal Python error" not in a.text()
    run = read_json(str(obs / "b" / "out" / "run.json"))
    assert [att["status"] for att in run["attempts"]] == ["interrupted"] * 4
