from __future__ import annotations

import os

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import nn, ops  # noqa: E402

from src.engine.checkpoint import (  # noqa: E402
    CheckpointManager, load_net_weights, resolve_resume)
from src.engine.step import build_train_step  # noqa: E402
from src.errors import UserError  # noqa: E402

X = np.random.default_rng(0).random((8, 3)).astype(np.float32)
Y = (X @ np.array([[1.0], [2.0], [-1.0]], np.float32)).astype(np.float32)


pytestmark = pytest.mark.usefixtures("pynative_mode")


class Tiny(nn.Cell):
    def __init__(self, hidden=4):
        super().__init__()
        self.a = nn.Dense(3, hidden)
        self.b = nn.Dense(hidden, 1)

    def construct(self, x):
        return self.b(ops.relu(self.a(x)))


def _setup(seed, total_steps=10, hidden=4):
    ms.set_seed(seed)
    net = Tiny(hidden)
    # A per-step learning-rate array: its position must survive a resume.
    lr = np.linspace(0.05, 0.005, total_steps).astype(np.float32).tolist()
    opt = nn.Adam(net.trainable_params(), learning_rate=lr)

    def forward(x, y):
        return ops.reduce_mean((net(x) - y) ** 2), x

    return net, opt, build_train_step(forward, opt, jit=False)


def _state(net, opt):
    return ([p.asnumpy().copy() for p in net.trainable_params()]
            + [m.asnumpy().copy() for m in opt.moment1] + [m.asnumpy().copy() for m in opt.moment2]
            + [opt.global_step.asnumpy().copy(), opt.beta1_power.asnumpy().copy()])


def test_resume_continues_like_an_uninterrupted_run(tmp_path):
    net, opt, step = _setup(0)
    for _ in range(3):
        step(X, Y)
    manager = CheckpointManager(str(tmp_path), keep_last=2)
    path = manager.save(3, {"net": net, "opt": opt}, {"epoch": 1, "note": "x"})
    assert os.path.basename(path) == "step_00000003.ckpt"
    for _ in range(3):
        step(X, Y)
    uninterrupted = _state(net, opt)

    net2, opt2, step2 = _setup(1)  # different initial weights
    extra = manager.load(manager.latest(), {"net": net2, "opt": opt2})
    assert extra == {"step": 3, "epoch": 1, "note": "x"}
    assert int(opt2.global_step.asnumpy()[0]) == 3
    for _ in range(3):
        step2(X, Y)
    for a, b in zip(uninterrupted, _state(net2, opt2)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_names_prefixed_shared_params_stored_once_lr_not_stored(tmp_path):
    net, opt, _ = _setup(0)
    path = CheckpointManager(str(tmp_path)).save(1, {"opt": opt, "net": net}, {})
    names = set(ms.load_checkpoint(path))
    assert {"net.a.weight", "net.b.bias", "opt.global_step", "opt.moment1.a.weight",
            "__extra__"} <= names
    assert not any(n.startswith("opt.a.") or "learning_rate" in n for n in names)
    # Resuming with a longer schedule (different max_steps) works.
    net3, opt3, _ = _setup(2, total_steps=30)
    CheckpointManager(str(tmp_path)).load(path, {"net": net3, "opt": opt3})
    np.testing.assert_array_equal(net3.a.weight.asnumpy(), net.a.weight.asnumpy())


def test_keep_last_best_and_notifications(tmp_path):
    net, opt, _ = _setup(0)
    saved = []
    manager = CheckpointManager(str(tmp_path), keep_last=2, on_saved=saved.append)
    cells = {"net": net, "opt": opt}
    manager.save(10, cells, {}, metric=20.0)
    net.a.bias.set_data(ms.Tensor(np.full(4, 7.0, np.float32)))
    manager.save(20, cells, {}, metric=25.0)
    manager.save(30, cells, {}, metric=22.0)
    manager.save(40, cells, {}, metric=float("nan"))
    files = sorted(os.listdir(str(tmp_path)))
    assert files == ["best.ckpt", "step_00000030.ckpt", "step_00000040.ckpt"]
    assert [os.path.basename(p) for p in saved] == [
        "step_00000010.ckpt", "best.ckpt", "step_00000020.ckpt", "best.ckpt",
        "step_00000030.ckpt", "step_00000040.ckpt"]
    assert (manager.best_metric, manager.best_step) == (25.0, 20)
    extra = manager.load(str(tmp_path / "best.ckpt"), {"net": net})  # a subset of the cells
    assert extra["step"] == 20 and extra["metric"] == 25.0
    # A new manager (a resumed job) knows the best so far.
    again = CheckpointManager(str(tmp_path))
    assert again.best_metric == 25.0 and not again.is_better(24.0) and again.is_better(26.0)
    assert again.latest().endswith("step_00000040.ckpt")


def test_non_writer_writes_nothing(tmp_path):
    net, opt, _ = _setup(0)
    manager = CheckpointManager(str(tmp_path / "c"), is_writer=False, on_saved=pytest.fail)
    assert manager.save(1, {"net": net}, {}, metric=1.0) is None
    assert not (tmp_path / "c").exists()


def test_load_errors_name_file_and_parameters(tmp_path):
    net, opt, _ = _setup(0)
    manager = CheckpointManager(str(tmp_path))
    path = manager.save(5, {"net": net, "opt": opt}, {})
    with pytest.raises(UserError, match="not found: .*nope.ckpt"):
        manager.load(str(tmp_path / "nope.ckpt"), {"net": net})
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(open(path, "rb").read()[:100])
    with pytest.raises(UserError, match="broken.ckpt.*corrupt or truncated"):
        manager.load(str(broken), {"net": net})
    wider, _, _ = _setup(0, hidden=6)
    with pytest.raises(UserError,
                       match=r"shape mismatch .*net.a.weight \(6, 3\) vs \(4, 3\) in the file"):
        manager.load(path, {"net": wider})
    with pytest.raises(UserError, match=r"missing gen.a.bias"):
        manager.load(path, {"gen": net})

    class Bigger(Tiny):
        def __init__(self):
            super().__init__()
            self.c = nn.Dense(1, 1)

    with pytest.raises(UserError, match=r"missing net.c.bias, net.c.weight"):
        manager.load(path, {"net": Bigger()})
    small = nn.Dense(3, 4)
    with pytest.raises(UserError, match=r"unexpected net.a.bias"):
        manager.load(path, {"net": small})
    # Nothing was half-loaded by the failed attempts.
    before = net.a.weight.asnumpy().copy()
    with pytest.raises(UserError):
        manager.load(path, {"net": net, "extra": Bigger()})
    np.testing.assert_array_equal(before, net.a.weight.asnumpy())


def test_no_temp_files_and_stale_ones_removed(tmp_path):
    (tmp_path / ".step_00000001.tmp.ckpt").write_bytes(b"half")
    net, _, _ = _setup(0)
    manager = CheckpointManager(str(tmp_path))
    manager.save(2, {"net": net}, {})
    assert sorted(os.listdir(str(tmp_path))) == ["step_00000002.ckpt"]


def test_resolve_resume(tmp_path):
    d = str(tmp_path)
    assert resolve_resume("", d) is None and resolve_resume(None, d) is None
    assert resolve_resume("auto", d) is None
    net, _, _ = _setup(0)
    manager = CheckpointManager(d)
    manager.save(3, {"net": net}, {})
    latest = manager.save(12, {"net": net}, {})
    assert resolve_resume("auto", d) == latest
    assert resolve_resume(d, str(tmp_path / "other")) == latest
    assert resolve_resume(latest, "") == latest
    with pytest.raises(UserError, match="train.resume: checkpoint .*missing.ckpt does not exist"):
        resolve_resume(str(tmp_path / "missing.ckpt"), d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="has no step_"):
        resolve_resume(str(empty), d)


def test_load_net_weights_plain_and_prefixed(tmp_path):
    src, opt, _ = _setup(0)
    plain = str(tmp_path / "w.ckpt")
    ms.save_checkpoint(src, plain)
    dst, _, _ = _setup(1)
    report = load_net_weights(dst, plain)
    assert report == {"loaded": 4, "missing": [], "unexpected": [], "prefix": "", "step": None}
    np.testing.assert_array_equal(dst.b.weight.asnumpy(), src.b.weight.asnumpy())

    # A training checkpoint of this package: the net's entries, the optimizer's left out.
    train_ckpt = CheckpointManager(str(tmp_path / "c")).save(7, {"net": src, "opt": opt}, {})
    fresh, _, _ = _setup(2)
    report = load_net_weights(fresh, train_ckpt)
    assert (report["prefix"], report["step"], report["loaded"]) == ("net.", 7, 4)
    np.testing.assert_array_equal(fresh.a.weight.asnumpy(), src.a.weight.asnumpy())
    assert load_net_weights(dst, train_ckpt, prefix="net.")["loaded"] == 4
    class Other(nn.Cell):
        def __init__(self):
            super().__init__()
            self.c = nn.Dense(3, 4)

    with pytest.raises(UserError, match=r"none of the parameters of Other .*start with a\., b\."):
        load_net_weights(Other(), plain)

    # Plain weights given where a training checkpoint is expected: the right key is named.
    with pytest.raises(UserError, match="plain network weights.*--net_weights=.*w.ckpt"):
        CheckpointManager(str(tmp_path / "c")).load(plain, {"net": dst, "opt": opt})
    with pytest.raises(UserError, match="no parameters under prefix 'g.'"):
        load_net_weights(dst, train_ckpt, prefix="g.")

    wider, _, _ = _setup(0, hidden=6)
    with pytest.raises(UserError, match="shape mismatch"):
        load_net_weights(wider, plain)
    report = load_net_weights(wider, plain, strict=False)  # only b.bias fits
    assert report["missing"] == [] and report["unexpected"] == []
    np.testing.assert_array_equal(wider.b.bias.asnumpy(), src.b.bias.asnumpy())
