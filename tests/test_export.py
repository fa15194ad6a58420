from __future__ import annotations

import os

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import nn  # noqa: E402

from src.engine.export import ExportMismatch, export_mindir, run_mindir  # noqa: E402


class SmallNet(nn.Cell):
    def __init__(self):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(3, 4, 3, pad_mode="valid", has_bias=True)
        self.out = nn.Conv2d(4, 3, 1, has_bias=True)
        self.act = nn.ReLU()
        self.sig = nn.Sigmoid()

    def construct(self, x):
        return self.sig(self.out(self.act(self.conv(self.pad(x))))) + x


def test_export_round_trip(tmp_path):
    ms.set_seed(0)
    net = SmallNet()
    x = np.random.default_rng(0).random((1, 3, 8, 12)).astype(np.float32)
    path = export_mindir(net, [x], str(tmp_path / "sub" / "small.mindir"))
    assert path.endswith("small.mindir") and os.path.getsize(path) > 0
    assert not net.training
    (graph,) = run_mindir(path, x)
    np.testing.assert_allclose(graph, net(ms.Tensor(x)).asnumpy(), atol=1e-5)


def test_export_mismatch_is_reported(tmp_path, monkeypatch):
    ms.set_seed(0)
    net = SmallNet()
    x = np.random.default_rng(0).random((1, 3, 8, 8)).astype(np.float32)
    other = export_mindir(SmallNet(), [x], str(tmp_path / "other.mindir"), check=False)
    real_load = ms.load
    # Simulate a broken export: the file read back is another net's.
    monkeypatch.setattr(ms, "load", lambda path, *a, **k: real_load(other, *a, **k))
    with pytest.raises(ExportMismatch, match=r"differs from the eager net by [0-9.e-]+ \(max abs"):
        export_mindir(net, [x], str(tmp_path / "net.mindir"))
    with pytest.raises(ValueError, match=".mindir"):
        export_mindir(net, [x], str(tmp_path / "net.onnx"))


@pytest.fixture
def graph_mode():
    """Loaded MindIR graphs run in graph mode only on MindSpore 2.0 (as in the job)."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=previous)


def test_dynamic_export_runs_any_size(tmp_path, graph_mode):
    from src.engine.infer import MindIRNet, mindir_input_shape

    ms.set_seed(0)
    net = SmallNet()
    x = np.random.default_rng(0).random((1, 3, 8, 12)).astype(np.float32)
    path = export_mindir(net, [x], str(tmp_path / "any.mindir"), dynamic=True, multiple=4)
    assert mindir_input_shape(path) == [1, 3, -1, -1]
    graph = MindIRNet(path)
    assert graph.dynamic
    for h, w in ((8, 12), (20, 9), (8, 12)):
        y = np.random.default_rng(h).random((1, 3, h, w)).astype(np.float32)
        np.testing.assert_allclose(graph(y), net(ms.Tensor(y)).asnumpy(), atol=1e-5)
    fixed = export_mindir(net, [x], str(tmp_path / "fixed.mindir"))
    assert mindir_input_shape(fixed) == [1, 3, 8, 12] and not MindIRNet(fixed).dynamic
