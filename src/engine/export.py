"""MindIR export with a round-trip check: the file is loaded back (ms.load + nn.GraphCell) and
must reproduce the eager net's output, so a broken export fails the job that made it instead
of the deployment that uses it. A dynamic export takes any height and width (inputs traced as
Tensor(shape=[N, C, None, None])): it is checked at the example's size and at a second one."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


class ExportMismatch(RuntimeError):
    pass


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@contextlib.contextmanager
def graph_mode():
    """Run the body in GRAPH_MODE and restore the previous mode. A GraphCell (a loaded MindIR)
    executes only there on MindSpore 2.0 ("The graph generated form MindIR is not support to
    execute in the PynativeMode"); later versions also run it in PYNATIVE_MODE."""
    import mindspore as ms

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=previous)


def run_mindir(path: str, *inputs):
    """Load the MindIR at `path` and run it once on `inputs` (numpy arrays or Tensors); a tuple
    of numpy outputs."""
    import mindspore as ms
    from mindspore import nn

    tensors = [x if isinstance(x, ms.Tensor) else ms.Tensor(np.asarray(x)) for x in inputs]
    with graph_mode():
        out = nn.GraphCell(ms.load(path))(*tensors)
    return tuple(o.asnumpy() for o in _as_tuple(out))


def export_mindir(cell, example_inputs: Sequence[np.ndarray], path: str, *, check: bool = True,
                  atol: float = 1e-4, dynamic: bool = False, multiple: int = 16) -> str:
    """Export `cell` (inference mode) to `path` (.mindir) traced with `example_inputs`; when
    `check`, the loaded graph's outputs must match the eager ones within `atol` (max abs).
    `dynamic`: the last two axes of every input are left free; the check also runs inputs
    `multiple` (a size the net accepts) taller and 2·`multiple` wider."""
    import mindspore as ms

    if not path.endswith(".mindir"):
        raise ValueError("export path must end with .mindir: %s" % path)
    cell.set_train(False)
    arrays = [np.asarray(x) for x in example_inputs]
    if dynamic:
        traced = [ms.Tensor(shape=list(a.shape[:-2]) + [None, None], dtype=ms.float32)
                  for a in arrays]
    else:
        traced = [ms.Tensor(a) for a in arrays]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # ms.export appends the suffix itself.
    ms.export(cell, *traced, file_name=path[:-len(".mindir")], file_format="MINDIR")
    if not os.path.isfile(path):
        raise RuntimeError("ms.export wrote no %s" % path)
    if check:
        _round_trip(cell, arrays, path, atol)
        if dynamic:
            grow = [(0, 0)] * (arrays[0].ndim - 2) + [(0, multiple), (0, 2 * multiple)]
            _round_trip(cell, [np.pad(a, grow, mode="reflect") for a in arrays], path, atol)
        # The caller reports the export (with its time): this detail is for the debug log.
        log.debug("exported %s%s; round trip max abs diff within %.1g", path,
                  " (any height and width)" if dynamic else "", atol)
    return path


def _round_trip(cell, arrays: Sequence[np.ndarray], path: str, atol: float) -> None:
    """The loaded file must give the eager net's outputs on `arrays`. A fresh GraphCell per
    size: MindSpore 2.0 crashes when one dynamic-size graph runs a second shape."""
    import mindspore as ms

    tensors = [ms.Tensor(a) for a in arrays]
    eager = [o.asnumpy() for o in _as_tuple(cell(*tensors))]
    graph = run_mindir(path, *tensors)
    if len(graph) != len(eager):
        raise ExportMismatch("%s returns %d outputs, the eager net %d"
                             % (path, len(graph), len(eager)))
    for i, (a, b) in enumerate(zip(eager, graph)):
        if a.shape != b.shape:
            raise ExportMismatch("%s output %d has shape %s, the eager net %s"
                                 % (path, i, b.shape, a.shape))
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) \
            if a.size else 0.0
        if not diff <= atol:
            raise ExportMismatch("%s output %d differs from the eager net by %.3g (max abs, "
                                 "allowed %.1g)" % (path, i, diff, atol))
