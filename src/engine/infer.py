"""--task infer: restore every image of a folder (or one file) and write one PNG per input.

Any size works: inputs are padded (reflect) to the net's multiple and the output cropped back;
an input larger than `infer.tile` goes through the net in overlapping tiles whose overlaps are
blended with linear ramps, so memory stays bounded by the tile, not the photo. An exported
MindIR runs the same way: one with any height/width takes tiles of `infer.tile`, one with a
fixed input size takes tiles of exactly that size.

What a file means (image or raw, value range, output scale) is the recipe's business
(`Recipe.infer_input`, `net_input`, `net_output`, `output_scale`); this module only walks
files, tiles, writes and reports."""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from src.data.images import pad_to
from src.errors import UserError

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- inputs

def find_inputs(root: str, extensions: Sequence[str]) -> List[Tuple[str, str]]:
    """(path, relative path) of every file under `root` (a folder, or one file) whose
    extension is in `extensions` (any case), sorted; hidden files and folders are skipped."""
    exts = tuple(e.lower() for e in extensions)
    if os.path.isfile(root):
        return [(root, os.path.basename(root))]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(exts):
                path = os.path.join(folder, name)
                found.append((path, os.path.relpath(path, root).replace(os.sep, "/")))
    return sorted(found, key=lambda item: item[1])


def output_names(rels: Sequence[str]) -> Dict[str, str]:
    """Input relative path → output relative path: the same folders and stem, `.png`. Two
    inputs with one stem (a.jpg, a.png) keep their extension in the name (a_jpg.png)."""
    stems: Dict[str, int] = {}
    for rel in rels:
        stem = os.path.splitext(rel)[0]
        stems[stem] = stems.get(stem, 0) + 1
    names = {}
    for rel in rels:
        stem, ext = os.path.splitext(rel)
        names[rel] = (stem + "_" + ext[1:].lower() if stems[stem] > 1 else stem) + ".png"
    return names


# --------------------------------------------------------------------------- tiling

def tile_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Offsets of tiles of `tile` covering `length`, consecutive ones sharing at least
    `overlap`; the last one ends at `length`."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def _ramp(size: int, ramp: int, lead: bool, trail: bool) -> np.ndarray:
    """1-D blending weights: rising over `ramp` at a leading edge shared with a neighbour,
    falling at a trailing one; never 0, so every pixel has weight."""
    w = np.ones(size, np.float32)
    ramp = min(ramp, size)
    if ramp > 0:
        edge = (np.arange(ramp, dtype=np.float32) + 0.5) / ramp
        if lead:
            w[:ramp] = np.minimum(w[:ramp], edge)
        if trail:
            w[size - ramp:] = np.minimum(w[size - ramp:], edge[::-1])
    return w


def restore(predict: Predict, x: np.ndarray, *, multiple: int, tile: Tuple[int, int],
            overlap: int, scale: int = 1, fixed: bool = False) -> np.ndarray:
    """(C, H, W) input → (3, H·scale, W·scale) output of `predict` ((1, C, h, w) →
    (1, 3, h·scale, w·scale)). The input is padded to `multiple`; when it is larger than
    `tile` (h, w) it goes in overlapping tiles blended over `overlap` pixels. `fixed`: predict
    takes exactly `tile` (a fixed-size MindIR), so smaller inputs are padded up to it."""
    c, h, w = x.shape
    m = int(multiple)
    ph, pw = h + (-h) % m, w + (-w) % m
    th, tw = int(tile[0]), int(tile[1])
    if fixed:
        ph, pw = max(ph, th), max(pw, tw)
    elif ph <= th and pw <= tw:
        th, tw = ph, pw          # one pass over the whole (padded) input
    else:
        th, tw = min(th, ph), min(tw, pw)
    xp = pad_to(np.asarray(x, np.float32), ph, pw)
    s = int(scale)
    rows, cols = tile_starts(ph, th, overlap), tile_starts(pw, tw, overlap)
    if len(rows) == 1 and len(cols) == 1:
        out = _check(predict(np.ascontiguousarray(xp[None, :, :th, :tw])), th * s, tw * s)
        return np.ascontiguousarray(out[0, :, :h * s, :w * s])
    acc = np.zeros((3, ph * s, pw * s), np.float32)
    weight = np.zeros((ph * s, pw * s), np.float32)
    for i, top in enumerate(rows):
        wy = _ramp(th * s, overlap * s, i > 0, i < len(rows) - 1)
        for j, left in enumerate(cols):
            wx = _ramp(tw * s, overlap * s, j > 0, j < len(cols) - 1)
            part = xp[None, :, top:top + th, left:left + tw]
            out = _check(predict(np.ascontiguousarray(part)), th * s, tw * s)[0]
            win = wy[:, None] * wx[None, :]
            ys, xs = slice(top * s, (top + th) * s), slice(left * s, (left + tw) * s)
            acc[:, ys, xs] += out * win
            weight[ys, xs] += win
    acc /= weight
    return np.ascontiguousarray(acc[:, :h * s, :w * s])


def _check(out: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.asarray(out, np.float32)
    if out.ndim != 4 or out.shape[0] != 1 or out.shape[1] != 3 or out.shape[2:] != (h, w):
        raise ValueError("the net returned shape %s; expected (1, 3, %d, %d)"
                         % (out.shape, h, w))
    return out


# --------------------------------------------------------------------------- MindIR

def mindir_input_shape(path: str) -> List[int]:
    """The input shape recorded in a MindIR file (-1: any size)."""
    from mindspore.train import mind_ir_pb2

    model = mind_ir_pb2.ModelProto()
    try:
        with open(path, "rb") as f:
            model.ParseFromString(f.read())
    except Exception as exc:  # protobuf's DecodeError and I/O errors alike
        raise UserError("eval.checkpoint=%s is not a MindIR file this MindSpore reads: %s"
                        % (path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)) from exc
    inputs = [list(t.dims) for i in model.graph.input for t in i.tensor]
    if len(inputs) != 1 or len(inputs[0]) != 4:
        raise UserError("MindIR %s has inputs %s; expected one (1, C, H, W) image" % (path, inputs))
    return [int(d) for d in inputs[0]]


class MindIRNet:
    """An exported MindIR as a callable net: (1, C, h, w) → (1, C', h', w') numpy. Holds one
    loaded graph per input shape: MindSpore 2.0 crashes when one dynamic-size graph runs a
    second shape, and tiles share one shape, so this costs one load per image size at most."""

    def __init__(self, path: str):
        self.path = path
        self.shape = mindir_input_shape(path)
        self.dynamic = self.shape[2] < 0 or self.shape[3] < 0
        self._graphs: Dict[tuple, object] = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import mindspore as ms
        from mindspore import nn

        key = tuple(x.shape)
        if key not in self._graphs:
            if len(self._graphs) >= 4:
                self._graphs.clear()
            self._graphs[key] = nn.GraphCell(ms.load(self.path))
        out = self._graphs[key](ms.Tensor(np.ascontiguousarray(x, np.float32)))
        return (out[0] if isinstance(out, (tuple, list)) else out).asnumpy()


# --------------------------------------------------------------------------- the task

class _Progress:
    def __init__(self, total: int, every: int):
        self.total, self.every = total, max(1, int(every))
        self.started = self.last = time.time()

    def tick(self, done: int, failed: int) -> None:
        now = time.time()
        if done % self.every and done != self.total and now - self.last < 30:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        log.info("infer: %d/%d images, %.2f images/s, ETA %s%s", done, self.total, rate,
                 _duration(eta), ", %d unreadable" % failed if failed else "")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return "%ds" % seconds
    if seconds < 3600:
        return "%dm%02ds" % divmod(seconds, 60)
    return "%dh%02dm" % divmod(seconds // 60, 60)


def run_infer(recipe, predict: Predict, inputs: Sequence[Tuple[str, str]], out_dir: str, *,
              tile: Tuple[int, int], overlap: int, multiple: int, fixed: bool = False,
              log_every: int = 10, on_written: Optional[Callable[[str], None]] = None) -> dict:
    """Restore `inputs` ((path, relative path) pairs) into `out_dir` with `predict`; a file
    the recipe cannot read is named, skipped and counted. → summary for run.json."""
    from src.data.images import save_png, to_hwc

    names = output_names([rel for _, rel in inputs])
    progress = _Progress(len(inputs), log_every)
    failed: List[str] = []
    written = 0
    pixels = 0
    for n, (path, rel) in enumerate(inputs, 1):
        try:
            x, info = recipe.infer_input(path)
        except UserError as err:
            log.error("skipped %s: %s", rel, err)
            failed.append(rel)
            progress.tick(n, len(failed))
            continue
        out = restore(predict, x, multiple=multiple, tile=tile, overlap=overlap,
                      scale=recipe.output_scale(), fixed=fixed)
        hwc = to_hwc(out)
        alpha = info.get("alpha")
        if alpha is not None and alpha.shape == hwc.shape[:2]:
            hwc = np.concatenate([hwc, alpha[:, :, None]], axis=2)
        dest = os.path.join(out_dir, *names[rel].split("/"))
        save_png(dest, hwc, bits=16 if info.get("bits", 8) > 8 else 8)
        written += 1
        pixels += hwc.shape[0] * hwc.shape[1]
        if on_written is not None:
            on_written(dest)
        progress.tick(n, len(failed))
    seconds = time.time() - progress.started
    summary = {"images": written, "unreadable": len(failed), "failed": failed,
               "seconds": round(seconds, 3),
               "images_per_s": round(written / seconds, 4) if seconds > 0 else None,
               "megapixels": round(pixels / 1e6, 3)}
    log.info("infer: restored %d image(s) in %.1f s into %s%s", written, seconds, out_dir,
             "; %d unreadable file(s) skipped: %s" % (len(failed), ", ".join(failed))
             if failed else "")
    return summary
