"""Interrupts that wait until it is safe to stop.

The platform stops a job with SIGTERM at any moment. Raised in the middle of a train step, the
exception would land after the optimizer applied an update but before the loop counted it, and
the checkpoint saved on the way out would claim one step less than its weights hold: a resume
then runs past the end of the learning-rate schedule. Raised inside MindSpore (its import, a
graph compile calling back into Python), it can leave the process unable even to exit
(measured: an interrupted ``import mindspore`` ends in SIGABRT at interpreter shutdown).

So the job's signal handlers call ``deliver(exc)``: outside a ``deferred()`` block the exception
is raised at once (waiting for a data copy, uploading: plain Python), inside one it is raised
when the block ends — after the train step and its counting, the checkpoint write, the
MindSpore import and model build, the evaluation, the export.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional

_depth = 0
_pending: Optional[BaseException] = None


def deliver(exc: BaseException) -> None:
    """Raise ``exc`` now, or at the end of the current ``deferred()`` block. Called from signal
    handlers, which Python runs in the main thread."""
    global _pending
    if _depth > 0 and threading.current_thread() is threading.main_thread():
        if _pending is None:
            _pending = exc
        return
    raise exc


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that an interrupt does not cut in two (see the module docstring)."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    except BaseException:
        _depth -= 1
        if _depth == 0:
            _pending = None  # the block failed on its own: that error ends the job anyway
        raise
    _depth -= 1
    if _depth == 0 and _pending is not None:
        exc, _pending = _pending, None
        raise exc


def pending() -> bool:
    return _pending is not None
