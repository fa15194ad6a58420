"""A rank waiting for its node's data copy says so: once at the start, then every 30 s."""
from __future__ import annotations

import logging
import re
import threading
import time

from modelarts import staging
from modelarts.staging import NodeOnce


def test_waiting_for_the_copy_is_said_at_once_and_periodically(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(staging, "WAIT_REPORT_S", 0.2)
    monkeypatch.setattr(staging, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(staging, "POLL_S", 0.02)
    now = time.time()
    copier = NodeOnce(str(tmp_path), "job-1", True, launch_time=now, timeout=60)
    waiter = NodeOnce(str(tmp_path), "job-1", False, launch_time=now, timeout=60)

    def copy():
        time.sleep(0.9)
        return {"files": 3}

    thread = threading.Thread(target=copier.run, args=("data|obs://b/d", "obs://b/d", copy))
    with caplog.at_level(logging.INFO, logger="modelarts.staging"):
        thread.start()
        assert waiter.run("data|obs://b/d", "obs://b/d", lambda: {}) == {"files": 3}
        thread.join()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("waiting for local rank 0 to copy obs://b/d (60 s left")
    still = [line for line in lines if line.startswith("still waiting")]
    assert 1 <= len(still) <= 6, lines  # ~4 in 0.9 s; fewer on a loaded machine
    # What is awaited, its state, the time so far and the seconds left.
    assert re.match(r"still waiting for local rank 0 to copy obs://b/d: copier alive, \d+ s so "
                    r"far, (5\d|60) s left$", still[-1]), still[-1]
    assert re.match(r"using obs://b/d as copied by local rank 0 \(waited \d+\.\d s\)$",
                    lines[-1]), lines[-1]
