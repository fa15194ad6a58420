"""The README's demos stay runnable: each demo config, shortened (fewer steps, a smaller
synthetic set), runs synth → (preprocess →) train through start.py as the README gives it, its
loss falls, and it ends by printing the before/after metrics and where its sample grid is."""
from __future__ import annotations

import os
import re

import pytest

from tests.e2e_helpers import clean_env, read_json, start

pytestmark = pytest.mark.slow

STEP_LOSS = re.compile(r"step +(\d+)/\d+ \| loss ([0-9.e+-]+)")


def _losses(log: str) -> list:
    return [float(loss) for _, loss in STEP_LOSS.findall(log)]


def _check_run(res, out, metric_count: int) -> None:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    losses = _losses(res.stdout)
    assert len(losses) >= 20, res.stdout[-2000:]
    head, tail = losses[:5], losses[-10:]
    assert sum(tail) / len(tail) < 0.8 * sum(head) / len(head), losses
    run = read_json(str(out / "run.json"))
    assert run["status"] == "finished"
    result = re.search(r"result on (\d+) validation images, input → output: PSNR ([0-9.]+) dB → "
                       r"([0-9.]+) dB .*, SSIM ([0-9.]+) → ([0-9.]+) .*, CIEDE2000 ([0-9.]+) → "
                       r"([0-9.]+)", res.stdout)
    assert result, res.stdout[-2000:]
    assert int(result.group(1)) == metric_count
    metrics = run["metrics"]
    assert float(result.group(3)) == pytest.approx(metrics["psnr"], abs=0.01)
    assert float(result.group(2)) == pytest.approx(metrics["reference_psnr"], abs=0.01)
    grid = re.search(r"sample grid \(input \| output \| target\): obs://\S+ \((\S+)\)", res.stdout)
    assert grid and os.path.isfile(grid.group(1)), res.stdout[-2000:]


def test_aecrnet_demo_runs_and_its_loss_falls(tmp_path):
    obs = tmp_path / "obs"
    env = clean_env(str(obs))
    small = ["--synth.num_scenes=8", "--synth.num_val=2", "--data_url=obs://demo/data",
             "--train_url=obs://demo/out"]
    res = start(["--task=synth"] + small, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = start(small + ["--train.max_steps=40", "--train.log_every=1", "--train.eval_every=0",
                         "--train.ckpt_every=0", "--export.enabled=false"], env)
    assert "plain L1" in res.stdout
    _check_run(res, obs / "demo" / "out", 2)


def test_lsid_demo_runs_and_its_loss_falls(tmp_path):
    obs = tmp_path / "obs"
    env = clean_env(str(obs))
    config = "--config=configs/lsid_demo.yaml"
    small = [config, "--synth.num_scenes=3", "--synth.num_val_scenes=1",
             "--synth.num_test_scenes=1", "--synth.height=128", "--synth.width=128",
             "--train_url=obs://demo/lsid/out"]
    for task in ("synth", "preprocess"):
        res = start(["--task=" + task] + small, env)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = start(small + ["--train.max_steps=40", "--train.log_every=1", "--train.eval_every=0",
                         "--train.ckpt_every=0", "--export.enabled=false",
                         "--schedule.decay_step=40", "--eval.max_images=2"], env)
    _check_run(res, obs / "demo" / "lsid" / "out", 2)
