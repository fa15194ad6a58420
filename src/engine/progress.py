"""Training progress: one line every N steps with the loss terms, learning rate, throughput and
ETA. Loss terms stay Tensors between log steps: converting one to a float waits for the device,
so doing it every step would stall the pipeline."""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Dict, Optional

log = logging.getLogger(__name__)


def to_float(value) -> float:
    if hasattr(value, "asnumpy"):
        value = value.asnumpy()
    try:
        return float(value)
    except TypeError:  # a 1-element array
        return float(value.reshape(-1)[0])


def to_floats(terms: Dict[str, object]) -> Dict[str, float]:
    return {k: to_float(v) for k, v in terms.items()}


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return "%dh%02dm" % (h, m) if h else ("%dm%02ds" % (m, s) if m else "%ds" % s)


def current_lr(cells: Dict[str, object]) -> Optional[float]:
    """Learning rate the first optimizer among `cells` applies at its next step, read without
    advancing it (Optimizer.get_lr() increments global_step)."""
    from mindspore import Tensor, nn

    for cell in cells.values():
        if not isinstance(cell, nn.Optimizer):
            continue
        lr = cell.learning_rate
        if isinstance(lr, (tuple, list)):  # group learning rates: report the first group's
            lr = lr[0]
        try:
            step = int(cell.global_step.asnumpy().reshape(-1)[0])
            if isinstance(lr, nn.Cell):
                values = getattr(lr, "learning_rate", None)
                if values is not None and hasattr(values, "asnumpy") and values.ndim == 1:
                    # A per-step array: index it (clamped) instead of gathering past its end.
                    arr = values.asnumpy()
                    return float(arr[min(step, len(arr) - 1)])
                return to_float(lr(Tensor(step)))
            return to_float(lr)
        except Exception as exc:  # logging must never stop training
            log.debug("cannot read the learning rate: %s", exc)
            return None
    return None


class ProgressLogger:
    """`update(step, terms, lr)` after every step; emits a line when `step` is a multiple of
    `every` (or the last step). Throughput counts images on all ranks: batch × world_size."""

    def __init__(self, total_steps: int, *, every: int, batch_size: int, world_size: int = 1,
                 stream=None, is_tty: Optional[bool] = None):
        self.total = int(total_steps)
        self.every = max(1, int(every))
        self.images_per_step = int(batch_size) * int(world_size)
        self.stream = stream
        if is_tty is None:
            target = stream if stream is not None else sys.stderr
            is_tty = bool(getattr(target, "isatty", lambda: False)())
        self.is_tty = is_tty
        self._open_line = False
        self.start(0)

    def start(self, step: int) -> None:
        """Measure throughput from here (call after the first, compiling, step)."""
        self._t0 = self._t_last = time.time()
        self._step0 = self._step_last = int(step)

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (evaluation, checkpointing) out of throughput and ETA."""
        self._t0 += seconds
        self._t_last += seconds

    def update(self, step: int, terms: Dict[str, object], lr: Optional[float] = None, *,
               force: bool = False) -> Optional[dict]:
        """→ the logged record (floats) when a line was written, else None."""
        step = int(step)
        if not (force or step % self.every == 0 or step == self.total):
            return None
        values = to_floats(terms)
        now = time.time()
        window = step - self._step_last
        elapsed = now - self._t_last
        sec_per_step = elapsed / window if window > 0 else float("nan")
        total_steps = step - self._step0
        avg = (now - self._t0) / total_steps if total_steps > 0 else sec_per_step
        eta = avg * max(0, self.total - step) if total_steps > 0 else float("nan")
        record = {
            "step": step,
            "terms": values,
            "lr": lr,
            "images_per_second": (self.images_per_step / sec_per_step
                                  if window > 0 and sec_per_step > 0 else None),
            "seconds_per_step": sec_per_step if window > 0 else None,
            "eta_seconds": eta if math.isfinite(eta) else None,
        }
        self._t_last, self._step_last = now, step
        self._emit(self.format(record))
        return record

    def format(self, record: dict) -> str:
        width = len(str(self.total))
        parts = ["step %*d/%d" % (width, record["step"], self.total)]
        parts.append(" ".join("%s %.4g" % (k, v) for k, v in record["terms"].items()))
        if record["lr"] is not None:
            parts.append("lr %.3g" % record["lr"])
        if record["images_per_second"] is not None:
            parts.append("%.1f img/s" % record["images_per_second"])
            parts.append("%.3f s/step" % record["seconds_per_step"])
        if record["eta_seconds"] is not None:
            parts.append("ETA %s" % format_seconds(record["eta_seconds"]))
        return " | ".join(parts)

    def _emit(self, line: str) -> None:
        if self.is_tty:
            stream = self.stream if self.stream is not None else sys.stderr
            stream.write("\r\x1b[2K" + line)
            stream.flush()
            self._open_line = True
            log.debug(line)
        elif self.stream is not None:
            self.stream.write(line + "\n")
            self.stream.flush()
        else:
            # Off a terminal (ModelArts' log pane, the per-rank log files): plain log lines.
            log.info(line)

    def close(self) -> None:
        """End a \\r-updated line so what follows starts on its own line."""
        if self._open_line:
            stream = self.stream if self.stream is not None else sys.stderr
            stream.write("\n")
            stream.flush()
            self._open_line = False
