"""Outputs on their way to train_url while the job runs.

* ``Pusher`` uploads files in one background thread, in the order they were queued; a queued
  file is read when its turn comes (a newer version queued meanwhile is not sent twice), and
  ``then`` callbacks run after a successful upload (the run record points to a checkpoint only
  once it is complete in train_url). A failed push is logged, never fatal: the final upload
  sends it again.
* ``LogPusher`` sends one rank's log every ``every`` seconds when it has grown, and at once when
  asked (at checkpoints), so the log of a job that is killed is in train_url up to that point.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Callable, Dict, List, Optional, Tuple

import obs_sync

log = logging.getLogger(__name__)


def remote_join(url: str, rel: str) -> str:
    return url.rstrip("/") + "/" + rel


class Pusher:
    def __init__(self, output_dir: str, upload_to: str, *, retries: int):
        self.output_dir = output_dir
        self.upload_to = upload_to
        self.retries = retries
        self.failed: List[str] = []
        self._queue: queue.Queue[Optional[Tuple[str, Optional[Callable[[], None]]]]] = \
            queue.Queue()
        self._pending: Dict[str, List[Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="job-push", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def rel(self, path: str) -> str:
        rel = os.path.relpath(os.path.abspath(path), self.output_dir)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise ValueError("push(%r): not under the output folder %s" % (path, self.output_dir))
        return rel.replace(os.sep, "/")

    def push(self, path: str, then: Optional[Callable[[], None]] = None) -> None:
        path = os.path.abspath(path)
        self.rel(path)
        if self._thread is None:
            return  # the job is over: the final upload has taken everything
        with self._lock:
            queued = path in self._pending
            self._pending.setdefault(path, [])
            if then is not None:
                self._pending[path].append(then)
        if not queued:
            self._queue.put((path, None))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                path = item[0]
                with self._lock:
                    callbacks = self._pending.pop(path, [])
                self._send(path, callbacks)
            finally:
                self._queue.task_done()

    def _send(self, path: str, callbacks: List[Callable[[], None]]) -> None:
        rel = self.rel(path)
        if not os.path.exists(path):
            log.debug("not pushing %s: removed before its turn (keep_last)", rel)
            return
        try:
            obs_sync.sync(path, remote_join(self.upload_to, rel), incremental=False, threads=1,
                          retries=self.retries)
        except Exception as err:  # never kill training over an upload
            self.failed.append(rel)
            log.warning("push of %s to %s failed (the final upload retries it): %s", rel,
                        self.upload_to, obs_sync.mask_credentials(str(err)))
            return
        for callback in callbacks:
            try:
                callback()
            except Exception as err:
                log.warning("after pushing %s: %s: %s", rel, type(err).__name__,
                            obs_sync.mask_credentials(str(err)))

    def wait(self) -> None:
        """Block until every push queued so far has been attempted."""
        if self._thread is not None:
            self._queue.join()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()


class LogPusher:
    """Uploads ``path`` to ``url`` every ``every`` seconds when it changed, and on ``poke()``;
    ``on_tick`` runs after each periodic upload."""

    def __init__(self, path: str, url: str, *, every: float, retries: int,
                 on_tick: Optional[Callable[[], None]] = None):
        self.path = path
        self.url = url
        self.on_tick = on_tick  # also run every `every` seconds (the run record's heartbeat)
        self.every = float(every)
        self.retries = retries
        self._sent: Optional[Tuple[int, int]] = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if self.every > 0:
            self._thread = threading.Thread(target=self._work, name="log-push", daemon=True)
            self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.every)
            self._wake.clear()
            if not self._stop.is_set():
                self.send()
                if self.on_tick is not None:
                    try:
                        self.on_tick()
                    except Exception as err:  # a heartbeat must never stop training
                        log.warning("run record heartbeat failed: %s",
                                    obs_sync.mask_credentials(str(err)))

    def send(self, *, force: bool = False) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return
        state = (st.st_size, st.st_mtime_ns)
        if state == self._sent and not force:
            return
        try:
            obs_sync.sync(self.path, self.url, incremental=False, threads=1,
                          retries=self.retries)
            self._sent = state
        except Exception as err:
            log.warning("log upload to %s failed (retried later): %s", self.url,
                        obs_sync.mask_credentials(str(err)))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()


def prune_checkpoints(ckpt_url: str, keep_last: int, protect: Tuple[str, ...], *,
                      retries: int) -> List[str]:
    """Remove step checkpoints under ``ckpt_url`` beyond the newest ``keep_last``, never the
    names in ``protect`` (what the run record points to) nor best.ckpt. → names removed."""
    from modelarts.run_record import step_of

    if keep_last <= 0:
        return []
    names = sorted((step_of(n), n) for n in obs_sync.list_files(ckpt_url, retries=retries)
                   if "/" not in n and step_of(n) is not None)
    doomed = [n for _, n in names[:-keep_last] if n not in protect]
    for name in doomed:
        obs_sync.remove(remote_join(ckpt_url, name), retries=retries)
    return doomed
