from __future__ import annotations

import io
import os

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import nn, ops  # noqa: E402

from src.data.loader import Loader  # noqa: E402
from src.engine import interrupts  # noqa: E402
from src.engine.checkpoint import CheckpointManager, resolve_resume  # noqa: E402
from src.engine.loop import NonFiniteLoss, train  # noqa: E402
from src.engine.progress import ProgressLogger, current_lr, format_seconds  # noqa: E402
from src.engine.step import build_train_step  # noqa: E402
from src.errors import UserError  # noqa: E402
from src.recipes.base import Recipe, RecipeContext  # noqa: E402

SIZE = 12


def smooth_image(rng, h, w):
    """Low-frequency content: what a small conv can learn to denoise in a few steps."""
    coarse = rng.random((3, 3, 3)).astype(np.float32)
    ys, xs = np.linspace(0, 2, h), np.linspace(0, 2, w)
    y0, x0 = np.minimum(ys.astype(int), 1), np.minimum(xs.astype(int), 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    c = coarse
    top = c[:, y0][:, :, x0] * (1 - fx) + c[:, y0][:, :, x0 + 1] * fx
    bottom = c[:, y0 + 1][:, :, x0] * (1 - fx) + c[:, y0 + 1][:, :, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def hazy(clean):
    return (0.6 * clean + 0.3).astype(np.float32)


class HazySource:
    """Smooth clean images, a uniform haze and a little noise from the sample's own rng."""

    def __len__(self):
        return 10

    def load(self, index, rng):
        clean = smooth_image(np.random.default_rng(index), SIZE, SIZE)
        noisy = hazy(clean) + rng.normal(0, 0.02, clean.shape).astype(np.float32)
        return {"input": noisy, "target": clean}


class ToyDehazer(Recipe):
    """One 3x3 conv predicting the residual: the smallest real restoration model."""

    name = "toy"

    def __init__(self, cfg, ctx, *, fail_at=None, nan_at=None, signal_at=None):
        super().__init__(cfg, ctx)
        self.fail_at, self.nan_at, self.signal_at = fail_at, nan_at, signal_at
        self.calls = 0

    def train_loader(self):
        return Loader(HazySource(), 2, seed=self.ctx.seed, workers=1,
                      num_shards=self.ctx.num_shards, shard_id=self.ctx.shard_id)

    def val_samples(self):
        rng = np.random.default_rng(99)
        for i in range(2):
            clean = smooth_image(rng, 13, 15)  # odd size: padded by evaluate
            noisy = hazy(clean)
            yield {"input": noisy, "target": clean, "reference": noisy, "name": "val%d" % i}

    def build(self):
        ms.set_seed(self.cfg["seed"])
        self.net = nn.Conv2d(3, 3, 3, has_bias=True, weight_init="zeros")
        self.opt = nn.Adam(self.net.trainable_params(),
                           learning_rate=np.linspace(3e-3, 1e-3, 20).astype(np.float32).tolist())
        net = self.net

        def forward(x, y):
            out = x + net(x)
            return ops.reduce_mean(ops.abs(out - y)), out

        self.step = build_train_step(forward, self.opt, jit=True)

    def train_step(self, batch):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt()
        target = batch["target"]
        if self.calls == self.nan_at:
            target = target * np.nan
        loss, _ = self.step(batch["input"], target)
        if self.calls == self.signal_at:
            # What the job's SIGTERM handler does when the signal lands after the update.
            interrupts.deliver(KeyboardInterrupt())
        return {"loss": loss}

    def predict(self, x):
        self.net.set_train(False)
        x = ms.Tensor(x)
        return (x + self.net(x)).asnumpy()

    def checkpoint_cells(self):
        return {"net": self.net, "opt": self.opt}

    def export_cell(self):
        return self.net, [np.zeros((1, 3, 8, 8), np.float32)]

    @classmethod
    def synthesize(cls, cfg, out_dir):
        return {}


def _cfg(**train):
    t = {"max_steps": 6, "log_every": 2, "eval_every": 3, "ckpt_every": 2, "keep_last": 2,
         "resume": "", "jit": True, "loss_scale": 1.0}
    t.update(train)
    return {"model": "toy", "seed": 3, "train": t,
            "eval": {"pad_multiple": 4, "num_samples": 1, "max_images": 0}}


def _run(out, cfg, events=None, **kw):
    ctx = RecipeContext(data_dir="", output_dir=str(out), seed=cfg["seed"])
    recipe = ToyDehazer(cfg, ctx, **kw)
    recipe.build()
    manager = CheckpointManager(str(out / "ckpt"), keep_last=cfg["train"]["keep_last"])
    summary = train(recipe, cfg, output_dir=str(out), ckpt=manager, is_main=True,
                    on_event=(lambda name, **d: events.append((name, d))) if events is not None
                    else None,
                    resume_from=resolve_resume(cfg["train"]["resume"], manager.directory))
    return recipe, summary


pytestmark = pytest.mark.usefixtures("pynative_mode")


def test_train_checkpoints_eval_and_resume(tmp_path):
    events = []
    full, summary_full = _run(tmp_path / "full", _cfg(max_steps=8))

    recipe, summary = _run(tmp_path / "a", _cfg(), events)
    assert summary["steps"] == 6 and summary["start_step"] == 0
    assert summary["first_step_seconds"] > 0 and summary["images_per_second"] > 0
    m = summary["metrics"]
    assert m["count"] == 2 and m["step"] == 6 and "images" not in m
    assert m["psnr"] > m["reference_psnr"]  # the dehazer learned something in 6 steps
    files = sorted(os.listdir(str(tmp_path / "a" / "ckpt")))
    assert files == ["best.ckpt", "step_00000004.ckpt", "step_00000006.ckpt"]
    assert os.listdir(str(tmp_path / "a" / "samples")) == ["val0.png"]
    names = [n for n, _ in events]
    assert names.count("step_log") == 3 and names.count("eval") == 2
    # ckpt at 2, eval at 3 (first metric: saved as best), ckpt at 4, eval+ckpt at 6.
    assert [d["step"] for n, d in events if n == "checkpoint"] == [2, 3, 4, 6]
    log = next(d for n, d in events if n == "step_log")
    assert set(log) >= {"step", "terms", "lr", "images_per_second", "eta_seconds"}
    assert log["lr"] == pytest.approx(np.linspace(3e-3, 1e-3, 20)[2])

    # Resume to 8 steps: same weights as the uninterrupted 8-step run (optimizer state and the
    # data position mid-epoch both continue).
    resumed, summary = _run(tmp_path / "a", _cfg(max_steps=8, resume="auto"))
    assert summary["start_step"] == 6 and summary["steps"] == 8
    np.testing.assert_allclose(resumed.net.weight.asnumpy(), full.net.weight.asnumpy(),
                               rtol=1e-5, atol=1e-7)
    assert int(resumed.opt.global_step.asnumpy()[0]) == 8

    # Nothing left to do: no steps, no new files.
    _, summary = _run(tmp_path / "a", _cfg(max_steps=8, resume="auto"))
    assert summary["steps"] == 8 and summary["start_step"] == 8


def _csv_rows(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_csv_and_curves_follow_the_run_and_its_resume(tmp_path):
    from src.data.images import read_image

    out = tmp_path / "run"
    _run(out, _cfg())
    rows = _csv_rows(str(out / "metrics.csv"))
    train_rows = [r for r in rows if r["kind"] == "train"]
    eval_rows = [r for r in rows if r["kind"] == "eval"]
    assert [int(r["step"]) for r in train_rows] == [2, 4, 6]
    assert [int(r["step"]) for r in eval_rows] == [3, 6]
    assert all(float(r["loss"]) > 0 and float(r["lr"]) > 0 for r in train_rows)
    assert all(float(r["images_per_second"]) > 0 for r in train_rows[1:])
    assert [int(r["epoch"]) for r in train_rows] == [0, 0, 1]  # 5 batches of 2 per epoch
    last = eval_rows[-1]
    assert float(last["psnr"]) > float(last["input_psnr"]) > 0
    assert 0 < float(last["ssim"]) <= 1 and float(last["input_ciede2000"]) > 0
    curves = read_image(str(out / "curves.png"))
    assert curves.shape[0] >= 600 and curves.shape[1] >= 900
    # The sample grid is captioned (dark text on the white band) and large enough to read.
    grid = read_image(str(out / "samples" / "val0.png"))
    assert grid.shape[0] > 256 and grid.shape[1] > 3 * 256
    assert grid[:20].min() < 0.3

    # Resumed from step 4 to 8: the rows past step 4 are written again, once each.
    _run(out, _cfg(max_steps=8, resume=str(out / "ckpt" / "step_00000004.ckpt")))
    rows = _csv_rows(str(out / "metrics.csv"))
    assert [(r["kind"], int(r["step"])) for r in rows] == [
        ("train", 2), ("eval", 3), ("train", 4), ("train", 6), ("eval", 6), ("train", 8),
        ("eval", 8)]


def test_interrupt_saves_progress_then_propagates(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, _cfg(ckpt_every=0, eval_every=0, max_steps=20), fail_at=4)
    assert os.listdir(str(tmp_path / "ckpt")) == ["step_00000003.ckpt"]


def test_signal_mid_step_saves_a_consistent_checkpoint(tmp_path):
    """A SIGTERM landing after step 4's update must not leave a checkpoint that says step 3:
    its optimizer would be one update ahead and a resume would run past the schedule."""
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, _cfg(ckpt_every=0, eval_every=0, max_steps=20), signal_at=4)
    assert os.listdir(str(tmp_path / "ckpt")) == ["step_00000004.ckpt"]
    resumed, summary = _run(tmp_path, _cfg(ckpt_every=0, eval_every=0, max_steps=20,
                                           resume="auto"))
    assert summary["start_step"] == 4 and summary["steps"] == 20
    assert int(resumed.opt.global_step.asnumpy()[0]) == 20


def test_an_interrupt_before_an_evaluation_does_not_skip_it(tmp_path):
    """Stopped right after step 3 (an eval step) and resumed: step 3 is evaluated first, so
    best.ckpt ends as in the run that never stopped."""
    cfg = dict(max_steps=6, eval_every=3, ckpt_every=2)
    _run(tmp_path / "full", _cfg(**cfg))
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", _cfg(**cfg), signal_at=3)
    events = []
    _run(tmp_path / "cut", _cfg(resume="auto", **cfg), events)
    assert [d["step"] for n, d in events if n == "eval"] == [3, 6]
    full = CheckpointManager(str(tmp_path / "full" / "ckpt"))
    cut = CheckpointManager(str(tmp_path / "cut" / "ckpt"))
    assert (cut.best_step, cut.best_metric) == (full.best_step, pytest.approx(full.best_metric))


def test_checkpoint_cut_mid_step_is_refused(tmp_path):
    recipe, _ = _run(tmp_path, _cfg(ckpt_every=0, eval_every=0, max_steps=3))
    # What older versions wrote: 3 updates applied, step 2 recorded.
    manager = CheckpointManager(str(tmp_path / "bad"))
    bad = manager.save(2, recipe.checkpoint_cells())
    with pytest.raises(UserError, match="says step 2 but its optimizer.*opt: 3.*saved in the "
                                        "middle of a step"):
        _run(tmp_path / "x", _cfg(max_steps=5, resume=bad))


def test_non_finite_loss_stops_without_saving(tmp_path):
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 3"):
        _run(tmp_path, _cfg(ckpt_every=2, eval_every=0, log_every=1, max_steps=20), nan_at=3)
    assert os.listdir(str(tmp_path / "ckpt")) == ["step_00000002.ckpt"]


def test_short_lr_schedule_is_caught_before_training(tmp_path):
    with pytest.raises(ValueError, match="learning-rate array of 20 steps, shorter than "
                                         "train.max_steps 21"):
        _run(tmp_path, _cfg(max_steps=21))


def test_progress_lines_and_lr_reading():
    stream = io.StringIO()
    p = ProgressLogger(100, every=10, batch_size=4, world_size=8, stream=stream, is_tty=False)
    p.start(0)
    assert p.update(5, {"loss": 1.0}) is None
    p._t0 -= 20.0
    p._t_last -= 20.0  # pretend 10 steps took 20 s
    rec = p.update(10, {"loss": np.float32(0.5), "cr": 0.25}, lr=1e-4)
    assert rec["images_per_second"] == pytest.approx(32 * 10 / 20.0, rel=0.01)
    assert rec["eta_seconds"] == pytest.approx(180.0, rel=0.01)
    line = stream.getvalue()
    assert line.startswith("step  10/100 | loss 0.5 cr 0.25 | lr 0.0001 | 16.0 img/s")
    assert "ETA 3m00s" in line and line.endswith("\n")

    tty = io.StringIO()
    p = ProgressLogger(3, every=1, batch_size=1, stream=tty, is_tty=True)
    p.update(1, {"loss": 1.0})
    p.update(2, {"loss": 1.0})
    p.close()
    assert tty.getvalue().count("\r") == 2 and tty.getvalue().endswith("\n")
    assert format_seconds(3725) == "1h02m" and format_seconds(float("nan")) == "?"

    net = nn.Dense(2, 1)
    opt = nn.Adam(net.trainable_params(), learning_rate=[0.3, 0.2, 0.1])
    opt.global_step.set_data(ms.Tensor(np.array([1], np.int32)))
    assert current_lr({"net": net, "opt": opt}) == pytest.approx(0.2)
    assert int(opt.global_step.asnumpy()[0]) == 1  # reading did not advance it
    opt.global_step.set_data(ms.Tensor(np.array([7], np.int32)))
    assert current_lr({"opt": opt}) == pytest.approx(0.1)
    assert current_lr({"opt": nn.SGD(net.trainable_params(), 0.05)}) == pytest.approx(0.05)
    assert current_lr({"net": net}) is None
