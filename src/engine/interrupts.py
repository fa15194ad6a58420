"""Interrupts that wait for a step boundary.

The platform stops a job with SIGTERM at any moment. Raised in the middle of a train step, the
exception would land after the optimizer applied an update but before the loop counted it, and
the checkpoint saved on the way out would claim one step less than its weights hold: a resume
then runs past the end of the learning-rate schedule. So the job's signal handlers call
``deliver(exc)``: outside a ``step_boundary()`` block the exception is raised at once (staging,
evaluation and uploads may be cut short anywhere), inside one it is raised when the block ends,
where the loop's step counter and every optimizer agree.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional

_depth = 0
_pending: Optional[BaseException] = None


def deliver(exc: BaseException) -> None:
    """Raise ``exc`` now, or at the end of the current ``step_boundary()`` block. Called from
    signal handlers, which Python runs in the main thread."""
    global _pending
    if _depth > 0 and threading.current_thread() is threading.main_thread():
        if _pending is None:
            _pending = exc
        return
    raise exc


@contextlib.contextmanager
def step_boundary() -> Iterator[None]:
    """A block that an interrupt does not cut in two (a train step and its counting, a
    checkpoint write)."""
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
