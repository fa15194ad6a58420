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
