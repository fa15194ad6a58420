from __future__ import annotations

import json

import numpy as np
import pytest

from tests import cluster

ms = pytest.importorskip("mindspore")
from mindspore import nn, ops  # noqa: E402

from src.engine.step import build_train_step, parse_loss_scale, prefix_parameter_names  # noqa: E402
from src.errors import UserError  # noqa: E402

TRUE_W = np.array([[1.0], [-2.0], [0.5]], np.float32)


pytestmark = pytest.mark.usefixtures("pynative_mode")


def _data(n=32, seed=0):
    x = np.random.default_rng(seed).random((n, 3)).astype(np.float32)
    return x, x @ TRUE_W + 0.25


def _model(lr=0.1, seed=0):
    net = nn.Dense(3, 1)
    rng = np.random.default_rng(seed)
    net.weight.set_data(ms.Tensor(rng.normal(size=(1, 3)).astype(np.float32)))
    net.bias.set_data(ms.Tensor(np.zeros(1, np.float32)))
    opt = nn.Adam(net.trainable_params(), learning_rate=lr)

    def forward(x, y):
        pred = net(x)
        return ops.reduce_mean((pred - y) ** 2), pred

    return net, opt, forward


def _params(net):
    return [p.asnumpy().copy() for p in net.trainable_params()]


def test_linear_model_converges_in_graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    net, opt, forward = _model()
    step = build_train_step(forward, opt)
    x, y = _data()
    first, _ = step(x, y)
    for _ in range(150):
        loss, pred = step(x, y)
    assert float(loss) < 1e-3 < float(first)
    assert pred.shape == (32, 1)
    np.testing.assert_allclose(net.weight.asnumpy(), TRUE_W.T, atol=0.05)
    # The step must not rename parameters (checkpoints use the names).
    assert [p.name for p in net.trainable_params()] == ["weight", "bias"]


def test_jit_step_equals_eager_step():
    x, y = _data()
    results = []
    for jit in (True, False):
        net, opt, forward = _model()
        step = build_train_step(forward, opt, jit=jit)
        losses = [float(step(x, y)[0]) for _ in range(3)]
        results.append((losses, _params(net), opt.moment1[0].asnumpy().copy()))
    (l1, p1, m1), (l2, p2, m2) = results
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m1, m2, rtol=1e-5, atol=1e-7)


def test_static_loss_scale_gives_the_same_update():
    x, y = _data()
    out = []
    for scale in (1.0, 1024.0):
        net, opt, forward = _model()
        step = build_train_step(forward, opt, loss_scale=scale, jit=False)
        loss = float(step(x, y)[0])
        out.append((loss, _params(net)))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-6)  # the reported loss is unscaled
    for a, b in zip(out[0][1], out[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_nan_loss_with_dynamic_scaling_skips_the_update():
    net, opt, forward = _model()
    step = build_train_step(forward, opt, loss_scale="dynamic")
    x, y = _data()
    step(x, y)
    before, steps_before = _params(net), int(opt.global_step.asnumpy()[0])
    moments = opt.moment1[0].asnumpy().copy()
    scale = step.scale_value
    bad_y = y.copy()
    bad_y[0, 0] = np.nan
    loss, _ = step(x, bad_y)
    assert not np.isfinite(float(loss))
    for a, b in zip(before, _params(net)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(moments, opt.moment1[0].asnumpy())
    assert int(opt.global_step.asnumpy()[0]) == steps_before  # the LR schedule did not advance
    assert step.scale_value == scale / 2
    loss, _ = step(x, y)  # and training goes on
    assert np.isfinite(float(loss)) and not np.array_equal(before[0], _params(net)[0])


def test_two_compiled_steps_in_one_process():
    """The GAN pattern: G step and D step (on a detached fake), each with its own optimizer."""
    g = nn.Dense(2, 2)
    d = nn.Dense(2, 1)
    prefix_parameter_names({"g": g, "d": d})  # both would be 'weight'/'bias' otherwise
    assert [p.name for p in d.trainable_params()] == ["d.weight", "d.bias"]
    # Per-step learning rates, as every recipe gives them: MindSpore 2.0 advances global_step
    # only for a dynamic learning rate (2.8 always does), and resuming counts steps by it.
    lrs = ms.Tensor(np.full(10, 0.01, np.float32))
    opt_g = nn.Adam(g.trainable_params(), lrs)
    opt_d = nn.Adam(d.trainable_params(), lrs)

    def g_forward(z):
        fake = g(z)
        return ops.reduce_mean((d(fake) - 1.0) ** 2), fake

    def d_forward(real, fake):
        fake = ops.stop_gradient(fake)
        loss = ops.reduce_mean((d(real) - 1.0) ** 2) + ops.reduce_mean(d(fake) ** 2)
        return loss, loss

    g_step = build_train_step(g_forward, opt_g)
    d_step = build_train_step(d_forward, opt_d)
    z = np.random.default_rng(0).random((4, 2)).astype(np.float32)
    real = np.ones((4, 2), np.float32)
    d_before, g_before = _params(d), _params(g)
    for _ in range(3):
        _, fake = g_step(z)
        g_mid = _params(g)
        d_step(real, fake)
        for a, b in zip(g_mid, _params(g)):  # D's step leaves G alone
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(d_before[0], _params(d)[0])
    assert not np.array_equal(g_before[0], _params(g)[0])
    assert int(opt_g.global_step.asnumpy()[0]) == int(opt_d.global_step.asnumpy()[0]) == 3


def test_parse_loss_scale():
    assert parse_loss_scale("dynamic") == "dynamic"
    assert parse_loss_scale(" Dynamic ") == "dynamic"
    assert parse_loss_scale("128") == 128.0
    assert parse_loss_scale(1) == 1.0
    for bad in (0.5, "fast", True, None):
        with pytest.raises(UserError, match="train.loss_scale"):
            parse_loss_scale(bad)


DP_WORKER = r'''
import json
import os
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
import mindspore as ms
from mindspore import nn, ops
from mindspore.communication import get_group_size, get_rank, init

ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
init()
if os.environ.get("MS_ROLE") == "MS_SCHED":
    # MindSpore 2.0's init() returns on the scheduler once the workers are done (2.1 release
    # notes: "users no longer need to adapt the script for the Scheduler role").
    sys.exit(0)
rank, size = get_rank(), get_group_size()
ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                             device_num=size)
from src.engine.step import build_train_step

net = nn.Dense(3, 1, weight_init="ones", bias_init="zeros")
opt = nn.SGD(net.trainable_params(), 0.1)


def forward(x, y):
    return ops.reduce_mean((net(x) - y) ** 2), x


step = build_train_step(forward, opt, distributed=True, loss_scale="dynamic")
x = np.full((2, 3), rank + 1, np.float32)
y = np.zeros((2, 1), np.float32)
loss1 = float(step(x, y)[0].asnumpy())
first = net.weight.asnumpy().ravel().tolist()
if rank == 1:
    y[0, 0] = np.nan  # one rank overflows: every rank must skip the step
loss2 = float(step(x, y)[0].asnumpy())
print("RESULT", rank, json.dumps({"first": first, "second": net.weight.asnumpy().ravel().tolist(),
                                  "loss1": loss1, "loss2_finite": bool(np.isfinite(loss2))}),
      flush=True)
'''


@pytest.mark.slow
@cluster.STALLS_ON_MINDSPORE_2_0
def test_data_parallel_mean_gradients_and_joint_skip_in_a_cluster(tmp_path):
    """Two CPU ranks: gradients are averaged, and a non-finite gradient on one rank makes
    both skip the step (the replicas stay identical)."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(DP_WORKER)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = cluster.run([str(script), "x", repo], workers=2, port=port,
                         log_dir=str(tmp_path / "logs"), env=env, cwd=str(tmp_path), timeout=300)
    text = launch.logs()
    assert launch.returncode == 0, launch.output[-2000:] + text[-3000:]
    results = [line.split(" ", 2) for line in text.splitlines() if line.startswith("RESULT")]
    assert sorted(r[1] for r in results) == ["0", "1"]
    # Rank r has x = r + 1, pred 3(r + 1): the mean gradient is 2·mean(3(r+1)·(r+1)) = 15.
    for _, _, rest in results:
        got = json.loads(rest)
        np.testing.assert_allclose(got["first"], [-0.5] * 3, rtol=1e-6)
        np.testing.assert_allclose(got["second"], [-0.5] * 3, rtol=1e-6)
        # Every rank reads the mean loss (9 and 36 → 22.5), and so sees the other's NaN too.
        assert got["loss1"] == pytest.approx(22.5)
        assert got["loss2_finite"] is False


def test_adam_is_built_without_mindspores_unused_sparse_kernel_notice():
    """nn.Adam constructs FusedSparseAdam (sparse gradients only); MindSpore 2.8 logs it as
    deprecated on construction. adam() builds the same optimizer without that line, and
    leaves MindSpore's other warnings alone."""
    import logging

    from mindspore import log as ms_log

    from src.engine.step import adam

    decorator = pytest.importorskip("mindspore.common._decorator")
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = ms_log._get_logger()
    handler = Keep()
    logger.addHandler(handler)
    net = nn.Dense(2, 1)
    try:
        getattr(decorator, "DEPRECATE_SET", set()).clear()  # it warns once per process
        opt = adam(net.trainable_params(), learning_rate=0.1)
        assert isinstance(opt, nn.Adam)
        assert not any("FusedSparseAdam" in m for m in seen), seen
        logger.warning("another MindSpore warning")
        assert "another MindSpore warning" in seen
        getattr(decorator, "DEPRECATE_SET", set()).clear()
        nn.Adam(net.trainable_params(), learning_rate=0.1)
        notices = [m for m in seen if "FusedSparseAdam" in m]
    finally:
        logger.removeHandler(handler)
    if ms.__version__.startswith("2.8"):
        assert notices  # the notice adam() keeps out is real in this version
