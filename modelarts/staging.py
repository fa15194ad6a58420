"""Once per node: local rank 0 does a copy, the other local ranks wait for it.

A marker file in ``<cache_dir>/.staging/`` names the job and what was copied and carries the
outcome: a failed copy's error is raised on every waiting rank instead of leaving them hanging,
and a marker written before this launch started is never trusted (job ids repeat: "local",
msrun's port). Waiters give up ``timeout`` seconds after the copying rank's last heartbeat.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from typing import Callable, Dict, List, Optional

import obs_sync
from src.errors import UserError

log = logging.getLogger(__name__)

STAGING_DIR = ".staging"
HEARTBEAT_S = 2.0
POLL_S = 0.2
# Ranks of one launch start within this many seconds of each other: a marker written longer
# before this process started is from an earlier launch.
LAUNCH_SKEW_S = 120.0
# A waiting rank says it is still waiting this often (a silent job looks hung to ModelArts).
WAIT_REPORT_S = 30.0


def write_json(path: str, data: dict) -> None:
    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")

    obs_sync.atomic_local_write(path, dump)


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # not there yet, or being replaced


def process_start_time() -> float:
    """When this process started (Linux), so that every rank of a launch agrees on what is
    'before this launch' however long its imports took; now, where /proc is missing."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class NodeOnce:
    """``run(key, what, action)``: ``action()`` on local rank 0, its result on every local
    rank. ``finish()`` removes this launch's done markers once nobody can still wait on them."""

    def __init__(self, cache_dir: str, job_id: str, is_node_main: bool, *, launch_time: float,
                 timeout: float):
        self.cache_dir = cache_dir
        self.job_id = str(job_id)
        self.is_node_main = is_node_main
        self.launch_time = launch_time
        self.timeout = timeout
        self._done: List[str] = []

    def markers(self, key: str) -> Dict[str, str]:
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]
        job = re.sub(r"[^A-Za-z0-9_.-]", "_", self.job_id)
        base = os.path.join(self.cache_dir, STAGING_DIR, "%s-%s" % (job, digest))
        return {"done": base + ".done", "failed": base + ".failed", "running": base + ".running",
                "digest": digest}

    def run(self, key: str, what: str, action: Callable[[], dict]) -> dict:
        markers = self.markers(key)
        if self.is_node_main:
            return self._run_and_mark(markers, what, action)
        return self._wait(markers, what)

    def finish(self) -> None:
        for path in self._done:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        self._done = []

    def _run_and_mark(self, markers: Dict[str, str], what: str,
                      action: Callable[[], dict]) -> dict:
        folder = os.path.dirname(markers["done"])
        os.makedirs(folder, exist_ok=True)
        # Whatever an earlier launch left for this copy (any job id) is void.
        for name in os.listdir(folder):
            if name.rsplit(".", 1)[0].endswith("-" + markers["digest"]):
                try:
                    os.remove(os.path.join(folder, name))
                except FileNotFoundError:
                    pass
        stamp = {"job_id": self.job_id, "what": what, "pid": os.getpid()}
        stop = threading.Event()

        def heartbeat() -> None:
            while True:
                write_json(markers["running"], dict(stamp, time=time.time()))
                if stop.wait(HEARTBEAT_S):
                    return

        beat = threading.Thread(target=heartbeat, name="stage-heartbeat", daemon=True)
        beat.start()
        try:
            result = action()
        except BaseException as err:
            user = isinstance(err, UserError)
            write_json(markers["failed"], dict(stamp, time=time.time(), user_error=user,
                                               error=str(err) if user
                                               else "%s: %s" % (type(err).__name__, err)))
            raise
        else:
            write_json(markers["done"], dict(stamp, time=time.time(), result=result))
            self._done.append(markers["done"])
            return result
        finally:
            stop.set()
            beat.join()
            try:
                os.remove(markers["running"])
            except FileNotFoundError:
                pass

    def _fresh(self, marker: Optional[dict]) -> bool:
        return (marker is not None and marker.get("job_id") == self.job_id
                and float(marker.get("time", 0)) >= self.launch_time - LAUNCH_SKEW_S)

    def _wait(self, markers: Dict[str, str], what: str) -> dict:
        waited_since = time.time()
        next_report = waited_since + WAIT_REPORT_S
        log.info("waiting for local rank 0 to copy %s (%.0f s left: the wait ends %.0f s after "
                 "the copier's last sign of life, rank_table_timeout)", what, self.timeout,
                 self.timeout)
        while True:
            done = read_json(markers["done"])
            if self._fresh(done):
                log.info("using %s as copied by local rank 0 (waited %.1f s)", what,
                         time.time() - waited_since)
                return done.get("result") or {}
            failed = read_json(markers["failed"])
            if self._fresh(failed):
                message = "local rank 0 could not copy %s: %s" % (what, failed.get("error"))
                if failed.get("user_error"):
                    raise UserError(message)
                raise RuntimeError(message)
            alive = waited_since
            running = read_json(markers["running"])
            if self._fresh(running):
                alive = max(alive, float(running["time"]))
            now = time.time()
            if now - alive > self.timeout:
                raise UserError(
                    "waited %.0f s for local rank 0 to copy %s and it gave no sign of life for "
                    "%.0f s (rank_table_timeout=%g): see logs/rank_*.log of this node's first "
                    "rank" % (now - waited_since, what, now - alive, self.timeout))
            if now >= next_report:
                log.info("still waiting for local rank 0 to copy %s: copier %s, %.0f s so far, "
                         "%.0f s left", what,
                         "alive" if self._fresh(running) else "not started yet",
                         now - waited_since, self.timeout - (now - alive))
                next_report = now + WAIT_REPORT_S
            time.sleep(POLL_S)
