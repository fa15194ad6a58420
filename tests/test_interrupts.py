"""src.engine.interrupts: a signal's exception waits for the end of a deferred block."""
from __future__ import annotations

import os
import signal

import pytest

from src.engine import interrupts


class Stop(Exception):
    pass


@pytest.fixture
def sigusr1_stops():
    old = signal.signal(signal.SIGUSR1, lambda *_: interrupts.deliver(Stop()))
    yield
    signal.signal(signal.SIGUSR1, old)


def test_outside_a_block_the_signal_raises_at_once(sigusr1_stops):
    with pytest.raises(Stop):
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(1000):
            pass
        pytest.fail("not raised")


def test_inside_a_block_it_waits_for_the_end(sigusr1_stops):
    done = []
    with pytest.raises(Stop):
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGUSR1)
            with interrupts.deferred():  # nested blocks: only the outermost end raises
                done.append("inner")
            assert interrupts.pending()
            done.append("outer")
    assert done == ["inner", "outer"] and not interrupts.pending()


def test_an_error_inside_the_block_wins_and_clears_the_signal(sigusr1_stops):
    with pytest.raises(ValueError):
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGUSR1)
            raise ValueError("the block's own failure")
    assert not interrupts.pending()
    with interrupts.deferred():
        pass  # nothing left over to raise here
