"""Checkpoints: nets AND optimizers in one file per step, written atomically, last K kept.

File layout: every parameter of `cells[key]` is stored as `<key>.<parameter name>` (`net.`,
`opt.`, `g.`, `d.`, `opt_g.` ...); a parameter shared by several cells (an optimizer holds its
net's weights) is stored once, under the first non-optimizer cell that has it. `extra` (step,
epoch, metric, anything JSON-serialisable) is stored as one JSON blob named `__extra__`.

An optimizer's learning-rate values are not stored: they come from the config (so a resumed run
may extend max_steps or change the schedule), and its `global_step`, which is stored, is where
the schedule continues."""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from src.errors import UserError, reraise_disk_error

log = logging.getLogger(__name__)

EXTRA_KEY = "__extra__"
BEST_NAME = "best.ckpt"
_STEP_RE = re.compile(r"^step_(\d+)\.ckpt$")


def _is_optimizer(cell) -> bool:
    from mindspore import nn

    return isinstance(cell, nn.Optimizer)


def _named_parameters(cells: Dict[str, object]) -> Dict[str, object]:
    """'key.name' → Parameter for every stored parameter, in a stable order (see module doc)."""
    order = ([k for k, c in cells.items() if not _is_optimizer(c)]
             + [k for k, c in cells.items() if _is_optimizer(c)])
    seen = set()
    out: Dict[str, object] = {}
    for key in order:
        cell = cells[key]
        is_opt = _is_optimizer(cell)
        for name, param in cell.parameters_and_names():
            if id(param) in seen:
                continue
            seen.add(id(param))
            if is_opt and name.startswith("learning_rate"):
                continue
            out["%s.%s" % (key, param.name if is_opt else name)] = param
    return out


def _read(path: str, what: str = "checkpoint") -> Dict[str, object]:
    import mindspore as ms

    if not os.path.isfile(path):
        raise UserError("%s not found: %s" % (what, path))
    try:
        return ms.load_checkpoint(path)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError for bad files
        raise UserError("cannot read %s %s (%s: %s): the file is corrupt or truncated; delete it "
                        "or point to another one" % (what, path, type(exc).__name__,
                                                     str(exc).splitlines()[0] if str(exc) else ""
                                                     )) from exc


def _decode_extra(params: Dict[str, object]) -> dict:
    blob = params.pop(EXTRA_KEY, None)
    if blob is None:
        return {}
    return json.loads(bytes(np.asarray(blob.asnumpy(), dtype=np.uint8)).decode("utf-8"))


def _few(names, n: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (" ... (%d in all)" % len(names) if len(names) > n else "")


def _assign(targets: Dict[str, object], values: Dict[str, object], path: str,
            strict_unexpected: Optional[List[str]] = None) -> None:
    """Shape-check, then copy values into the Parameters (all or nothing)."""
    import mindspore as ms

    missing = [n for n in targets if n not in values]
    unexpected = strict_unexpected or []
    mismatched = ["%s %s vs %s in the file" % (n, tuple(p.shape), tuple(values[n].shape))
                  for n, p in targets.items()
                  if n in values and tuple(p.shape) != tuple(values[n].shape)]
    problems = []
    if missing:
        problems.append("missing %s" % _few(missing))
    if unexpected:
        problems.append("unexpected %s" % _few(unexpected))
    if mismatched:
        problems.append("shape mismatch %s" % _few(mismatched, 3))
    if problems:
        raise UserError("checkpoint %s does not fit the model (%s): was it written by another "
                        "model or config?" % (path, "; ".join(problems)))
    for name, param in targets.items():
        value = values[name]
        param.set_data(ms.Tensor(value.asnumpy()).astype(param.dtype))


class CheckpointManager:
    """Saves `step_%08d.ckpt` files into `directory`, keeps the newest `keep_last` (0 keeps
    all) and `best.ckpt`. Only the writer (rank 0) touches the disk; on other ranks save() is a
    no-op returning None, and load()/latest() still work (every rank restores)."""

    def __init__(self, directory: str, *, keep_last: int = 3, is_writer: bool = True,
                 on_saved: Optional[Callable[[str], None]] = None):
        self.directory = directory
        self.keep_last = int(keep_last)
        self.is_writer = bool(is_writer)
        self.on_saved = on_saved
        self.best_metric: Optional[float] = None
        self.best_step: Optional[int] = None
        if self.is_writer:
            os.makedirs(directory, exist_ok=True)
            self._remove_temporaries()  # a crash mid-write left them; never valid
            best = os.path.join(directory, BEST_NAME)
            if os.path.isfile(best):
                self._load_best_metric(best)

    def _remove_temporaries(self) -> None:
        # Ours (.step_N.tmp.ckpt, .best.tmp.ckpt) and what MindSpore writes on the way to them.
        for stale in glob.glob(os.path.join(self.directory, ".*.tmp*")):
            try:
                os.remove(stale)
            except OSError:
                pass

    def _load_best_metric(self, path: str) -> None:
        import mindspore as ms

        try:
            extra = _decode_extra(dict(ms.load_checkpoint(path,
                                                          choice_func=lambda n: n == EXTRA_KEY)))
        except Exception as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return
        if extra.get("metric") is not None:
            self.best_metric = float(extra["metric"])
            self.best_step = extra.get("step")

    # -- listing ----------------------------------------------------------------------------
    def checkpoints(self) -> List[Tuple[int, str]]:
        """(step, path) of the step checkpoints present, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            m = _STEP_RE.match(name)
            if m:
                found.append((int(m.group(1)), os.path.join(self.directory, name)))
        return sorted(found)

    def latest(self) -> Optional[str]:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def path_for(self, step: int) -> str:
        return os.path.join(self.directory, "step_%08d.ckpt" % int(step))

    def is_better(self, metric: Optional[float]) -> bool:
        return (metric is not None and np.isfinite(metric)
                and (self.best_metric is None or metric > self.best_metric))

    # -- saving -----------------------------------------------------------------------------
    def save(self, step: int, cells: Dict[str, object], extra: Optional[dict] = None,
             metric: Optional[float] = None) -> Optional[str]:
        """Write step_<step>.ckpt (and best.ckpt when `metric` beats the best so far, higher is
        better). Returns the path, or None on non-writers."""
        if not self.is_writer:
            return None
        import mindspore as ms

        extra = dict(extra or {})
        extra["step"] = int(step)
        if metric is not None:
            extra["metric"] = float(metric)
        blob = np.frombuffer(json.dumps(extra, sort_keys=True).encode("utf-8"), dtype=np.uint8)
        records = [{"name": n, "data": p} for n, p in _named_parameters(cells).items()]
        records.append({"name": EXTRA_KEY, "data": ms.Tensor(blob.copy())})

        path = self.path_for(step)
        # A half-written checkpoint must never carry the final name: the uploader pushes it and
        # a resume would pick it up. save_checkpoint wants a .ckpt suffix.
        tmp = os.path.join(self.directory, ".%s.tmp.ckpt" % os.path.basename(path)[:-5])
        try:
            os.makedirs(self.directory, exist_ok=True)
            ms.save_checkpoint(records, tmp)
            os.replace(tmp, path)
        except OSError as err:
            self._remove_temporaries()
            needed = sum(int(np.prod(r["data"].shape)) * r["data"].itemsize for r in records)
            reraise_disk_error(err, self.directory, needed)
        log.info("saved checkpoint %s", path)
        self._notify(path)

        if self.is_better(metric):
            best = os.path.join(self.directory, BEST_NAME)
            tmp_best = os.path.join(self.directory, ".best.tmp.ckpt")
            try:
                shutil.copyfile(path, tmp_best)
                os.replace(tmp_best, best)
            except OSError as err:
                self._remove_temporaries()
                reraise_disk_error(err, self.directory, os.path.getsize(path))
            self.best_metric, self.best_step = float(metric), int(step)
            log.info("new best %.4f at step %d → %s", metric, step, best)
            self._notify(best)
        self._prune()
        return path

    def _notify(self, path: str) -> None:
        if self.on_saved is not None:
            self.on_saved(path)

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for _, old in self.checkpoints()[:-self.keep_last]:
            try:
                os.remove(old)
            except FileNotFoundError:
                pass

    # -- loading ----------------------------------------------------------------------------
    def load(self, path: str, cells: Dict[str, object]) -> dict:
        return load_checkpoint(path, cells)


def load_checkpoint(path: str, cells: Dict[str, object]) -> dict:
    """Restore every cell (nets and optimizers: moments, global step) from a checkpoint written
    by CheckpointManager.save; returns its extra dict (step, epoch, ...). Parameters of other
    cell keys in the file (a GAN checkpoint's `d.` when only `g` is given) are ignored."""
    values = dict(_read(path))
    written_here = EXTRA_KEY in values  # every CheckpointManager file has it
    extra = _decode_extra(values)
    targets = _named_parameters(cells)
    prefixes = tuple("%s." % k for k in cells)
    if values and not written_here and not any(n.startswith(prefixes) for n in values):
        # Converted official weights (plain parameter names) are not a training state.
        raise UserError("checkpoint %s holds plain network weights (names like %s), not a "
                        "training checkpoint of this package (%s): load it with "
                        "--net_weights=%s (and --eval.checkpoint=none to evaluate or export "
                        "the net as built)" % (path, _few(values, 2),
                                               ", ".join(p + "*" for p in prefixes), path))
    unexpected = [n for n in values if n.startswith(prefixes) and n not in targets
                  and not re.match(r"^[^.]+\.learning_rate", n)]
    _assign(targets, values, path, unexpected)
    # Callers say it in their words ("resuming from ...", "loaded <URL>"): debug detail here.
    log.debug("restored %s from %s (step %s)", ", ".join(cells), path, extra.get("step"))
    return extra


def _training_prefix(values: Dict[str, object], targets: Dict[str, object]) -> Optional[str]:
    """The `<key>.` under which a training checkpoint (CheckpointManager's layout) holds every
    parameter of the net, or None when the file names the net's parameters plainly."""
    if any(n in values for n in targets):
        return None
    roots = sorted({n.split(".", 1)[0] for n in values if "." in n},
                   key=lambda r: (r != "net", r))  # the package's single-net key first
    for root in roots:
        if all(root + "." + n in values for n in targets):
            return root + "."
    return None


def load_net_weights(net, path: str, prefix: Optional[str] = None, *,
                     strict: bool = True) -> dict:
    """Load plain weights (a converted .ckpt, or the `prefix` part of a training checkpoint,
    e.g. prefix='net.') into `net`. Without `prefix`, a training checkpoint of this package
    (best.ckpt, step_*.ckpt) is recognised: the net's entries are taken, the optimizer state
    and the other cells' entries are left out (one log line says so). Strict: every net
    parameter must be in the file and every file entry (under the prefix) must be used.
    → {'loaded', 'missing', 'unexpected', 'prefix', 'step'}."""
    values = dict(_read(path, "weights file"))
    extra = _decode_extra(values) if EXTRA_KEY in values else {}
    targets = dict(net.parameters_and_names())
    if prefix is None:
        prefix = _training_prefix(values, targets)
        if prefix:
            others = sorted({n.split(".", 1)[0] + ".*" for n in values
                             if not n.startswith(prefix)})
            log.info("%s is a training checkpoint (step %s): took its %s* entries for %s; "
                     "left out %s (optimizer state and other cells: the run starts afresh)",
                     path, extra.get("step", "?"), prefix, type(net).__name__,
                     ", ".join(others) or "nothing")
    if prefix:
        values = {n[len(prefix):]: v for n, v in values.items() if n.startswith(prefix)}
        if not values:
            raise UserError("weights file %s has no parameters under prefix %r" % (path, prefix))
    missing = [n for n in targets if n not in values]
    unexpected = [n for n in values if n not in targets]
    if strict:
        if missing and not any(n in values for n in targets):
            roots = sorted({n.split(".", 1)[0] + "." for n in values if "." in n})
            raise UserError("weights file %s has none of the parameters of %s (missing %s; its "
                            "names start with %s): is it the weights of another model?" % (
                                path, type(net).__name__, _few(missing, 3), _few(roots, 5)))
        _assign(targets, values, path, unexpected)
    else:
        usable = {n: p for n, p in targets.items()
                  if n in values and tuple(values[n].shape) == tuple(p.shape)}
        _assign(usable, values, path)
        if missing or unexpected:
            log.warning("%s: %d parameters loaded, %d missing (%s), %d unused (%s)", path,
                        len(usable), len(missing), _few(missing, 3), len(unexpected),
                        _few(unexpected, 3))
    return {"loaded": len(targets) - len(missing), "missing": missing, "unexpected": unexpected,
            "prefix": prefix or "", "step": extra.get("step")}


def resolve_resume(value, directory: str) -> Optional[str]:
    """Config `train.resume`: '' → None (fresh start); 'auto' → the newest checkpoint in
    `directory`, or None; a checkpoint file → it; a directory → its newest checkpoint."""
    if value is None or str(value).strip() == "" or value is False:
        return None
    value = str(value).strip()
    if value.lower() == "auto":
        return CheckpointManager(directory, is_writer=False).latest()
    if os.path.isdir(value):
        latest = CheckpointManager(value, is_writer=False).latest()
        if latest is None:
            raise UserError("train.resume: directory %s has no step_*.ckpt" % value)
        return latest
    if not os.path.isfile(value):
        raise UserError("train.resume: checkpoint %s does not exist (use '' for a fresh start "
                        "or 'auto' for the newest in the output dir)" % value)
    return value
