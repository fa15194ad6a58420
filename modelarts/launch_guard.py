"""Fail fast under msrun: a worker that ends before it joins the cluster ends the launch.

Why this is needed (MindSpore 2.8, mindspore/parallel/cluster/process_entity/_api.py):
msrun's ``_ProcessManager.join_processes`` polls only its *workers*. When one exits
non-zero it SIGKILLs the other workers' process groups and then waits, with no time-out, for
the *scheduler* (the same boot file with MS_ROLE=MS_SCHED). The scheduler sits in
``communication.init()`` serving the cluster, and while no worker has registered it ends only
when the topology build times out (MS_TOPO_TIMEOUT = msrun ``--cluster_time_out``, 600 s by
default). Workers call init() only after staging their data, which can take longer than any
time-out one would like to set, so a worker whose data_url was wrong kept msrun up for 10
minutes. The scheduler cannot watch for this itself: init() holds the GIL, so no Python
thread of that process runs until it returns.

How:

* a worker that ends with a non-zero status before init() returned calls
  ``report_failure()`` (start.py does, on every error path): it writes a small JSON marker
  into the launch folder ``<LAUNCH_GUARD_DIR or tmp>/msrun-<MS_SCHED_HOST>-<MS_SCHED_PORT>``;
  a worker whose init() returned calls ``note_joined()`` (apply_context does), after which
  failures are MindSpore's business again (its heartbeats notice a lost node); it leaves a
  marker only where a watcher created the folder, so that nothing is left behind elsewhere;
* the scheduler calls ``start_watcher()`` before init(): it starts this file as a separate
  stdlib-only process that polls the launch folder and this node's worker processes, and
  stops the scheduler (SIGTERM, then SIGKILL) when

  - a failure marker newer than the scheduler's start appears (the error is logged first),
  - or every worker process on this node has gone while none had joined the cluster (a
    worker killed or crashed before it could write a marker; msrun had then killed the
    others). Workers are found as msrun's children running the scheduler's command line and
    then followed by pid, so this still holds after ``msrun --join=False`` has exited.

  msrun then sees the scheduler's non-zero status and exits 1. A healthy launch is never
  timed: while workers are alive and have not failed, the watcher waits as long as the
  scheduler does. It also exits as soon as the scheduler does.

Multi-node: the scheduler runs on node 0 only. Failures of node-0 workers always end the
launch; a worker on another node reaches the scheduler only through a folder every node
mounts (set LAUNCH_GUARD_DIR to it). Without one, that node's msrun still exits at once (it
has no scheduler to wait for) and node 0 waits for the topology time-out as before.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set

log = logging.getLogger(__name__)

POLL_S = 0.5
# Once workers are known, look for new ones (a full /proc scan) only every this many polls.
RESCAN_POLLS = 20
# Seconds every local worker must have been gone (none joined, no marker) before the watcher
# calls it a failure. Longer than MindSpore's scheduler takes to notice a finished cluster
# (it checks every 5 s), should a joined marker be missing; long enough for a worker's own
# failure marker to land first, so that the scheduler log names the error.
GONE_GRACE_S = 10.0
# How long the scheduler gets to end on SIGTERM before SIGKILL.
TERM_GRACE_S = 5.0
# After stopping the scheduler, how long to wait for this node's workers to end (msrun kills
# them) before removing the launch folder, so that a late failure marker is removed too.
CLEANUP_WAIT_S = 10.0
FAILED_PREFIX = "failed-"
JOINED_PREFIX = "joined-"

_joined = False  # this worker's init() returned
_watcher: Optional[subprocess.Popen] = None  # kept so that it is not collected while running


# --------------------------------------------------------------------------- the launch folder

def launch_dir(launch) -> str:
    """The folder where the processes of one msrun launch leave markers for its scheduler.
    ``launch``: a ``modelarts.environment.MsrunLaunch`` (anything with sched_host,
    sched_port and guard_dir)."""
    base = launch.guard_dir or tempfile.gettempdir()
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", "msrun-%s-%s" % (launch.sched_host, launch.sched_port))
    return os.path.join(base, name)


def _marker_name(prefix: str) -> str:
    return "%s%s-%d.json" % (prefix, re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()),
                             os.getpid())


def _write_marker(directory: str, prefix: str, data: Dict[str, Any]) -> str:
    path = os.path.join(directory, _marker_name(prefix))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, sort_keys=True)
    os.replace(tmp, path)  # a reader never sees half a marker
    return path


def read_markers(directory: str, prefix: str, since: float) -> List[Dict[str, Any]]:
    """Markers with this prefix written at or after ``since`` (epoch seconds), oldest first.
    Older ones are from an earlier launch with the same scheduler address."""
    found = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".json")):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                data = json.load(f)
            written = float(data.get("time", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # being replaced, or not ours
        if written >= since:
            found.append(data)
    return sorted(found, key=lambda d: d["time"])


def remove_stale(directory: str, since: float) -> None:
    """Delete markers older than ``since``: nobody will trust them again."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            if os.path.getmtime(path) < since:
                os.remove(path)
        except OSError:
            pass


# --------------------------------------------------------------------------- worker side

def note_joined(launch) -> None:
    """This worker's init() returned: from now on a failure is not reported here (MindSpore's
    heartbeats take over), and the watcher knows the cluster formed."""
    global _joined
    _joined = True
    if launch is None or launch.role != "worker":
        return
    if not os.path.isdir(launch_dir(launch)):
        return  # no watcher created it (scheduler on another node): nobody would read it
    try:
        _write_marker(launch_dir(launch), JOINED_PREFIX,
                      {"rank": launch.rank, "host": socket.gethostname(), "pid": os.getpid(),
                       "time": time.time()})
    except OSError as err:
        log.debug("could not note the cluster join in %s: %s", launch_dir(launch), err)


def joined() -> bool:
    return _joined


def report_failure(launch, status: int, error: str) -> Optional[str]:
    """Tell the launch's scheduler that this worker is ending with ``status`` before joining
    the cluster. Returns the marker path, or None when there is nothing to do (not an msrun
    worker, already joined, status 0) or it could not be written. Never raises: it runs on
    the way out of a failure that must stay the reported one."""
    if launch is None or launch.role != "worker" or _joined or not status:
        return None
    try:
        # Created here too: the watcher may not have started yet, and a folder every node
        # mounts may be the only way to the scheduler.
        os.makedirs(launch_dir(launch), exist_ok=True)
        return _write_marker(launch_dir(launch), FAILED_PREFIX, {
            "rank": launch.rank, "host": socket.gethostname(), "pid": os.getpid(),
            "status": status, "error": str(error)[:2000], "time": time.time()})
    except Exception as err:  # noqa: BLE001 - the original failure matters more
        log.warning("could not report the failure to msrun's scheduler in %s: %s",
                    launch_dir(launch), err)
        return None


# --------------------------------------------------------------------------- processes (Linux)

def process_start_time(pid: Optional[int] = None) -> Optional[float]:
    """When a process started, in epoch seconds (±10 ms), from /proc; None where unknown."""
    try:
        with open("/proc/%d/stat" % (pid or os.getpid())) as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        return time.time() - since_boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _cmdline(pid: int) -> Optional[bytes]:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read()
    except OSError:
        return None


def _stat(pid: int) -> Optional[List[str]]:
    """/proc/<pid>/stat after the command name: [state, ppid, ...]; None where unreadable."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _parent(pid: int) -> Optional[int]:
    """The parent of a live process; None for a zombie or a process that is not there."""
    fields = _stat(pid)
    if not fields or fields[0] == "Z":
        return None
    try:
        return int(fields[1])
    except (ValueError, IndexError):
        return None


def sibling_workers(sched_pid: int, launcher_pid: int) -> Optional[List[int]]:
    """The workers msrun started on this node: its other children running the scheduler's own
    command line (msrun runs the same command for both; its `tail -f` helpers differ).
    Zombies are left out. None when /proc cannot tell."""
    own = _cmdline(sched_pid)
    if not own:
        return None
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    return [p for p in pids if p != sched_pid and _parent(p) == launcher_pid
            and _cmdline(p) == own]


def _alive(pid: int) -> bool:
    """Running (a zombie is not); True where /proc cannot say more than kill(0) does."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat(pid)
    return not fields or fields[0] != "Z"


# --------------------------------------------------------------------------- scheduler side

class Watcher:
    """Decides, one poll at a time, whether the scheduler should stop. The process table is
    injected so that tests can drive it: ``find_workers()`` lists this node's workers while
    msrun is their parent (None: cannot tell), ``alive(pid)`` follows one."""

    def __init__(self, directory: str, since: float, *,
                 find_workers: Callable[[], Optional[List[int]]],
                 alive: Callable[[int], bool], grace: float = GONE_GRACE_S):
        self.directory = directory
        self.since = since
        self.find_workers = find_workers
        self.alive = alive
        self.grace = grace
        # Followed by pid: after `msrun --join=False` exits they are no longer its children.
        self.workers: Set[int] = set()
        self.gone_since: Optional[float] = None
        self._polls = 0

    def poll(self, now: float) -> Optional[str]:
        """A one-line reason to stop the scheduler, or None to keep waiting."""
        failed = read_markers(self.directory, FAILED_PREFIX, self.since)
        if failed:
            return "; ".join(_describe(m) for m in failed)
        if read_markers(self.directory, JOINED_PREFIX, self.since):
            return None  # the cluster formed: MindSpore's heartbeats watch the workers now
        self._polls += 1
        if self._polls % RESCAN_POLLS == 1 or not any(self.alive(p) for p in self.workers):
            self.workers.update(self.find_workers() or ())
        if not self.workers:
            return None  # not started yet, or this node runs no workers (scheduler only)
        if any(self.alive(pid) for pid in self.workers):
            self.gone_since = None
            return None
        if self.gone_since is None:
            self.gone_since = now
        if now - self.gone_since >= self.grace:
            return ("every worker process on this node has ended before joining the cluster "
                    "(killed or crashed without a report, or done with a task that never "
                    "joins it); see the worker logs")
        return None


def _describe(marker: Dict[str, Any]) -> str:
    rank = marker.get("rank")
    who = "worker rank %s" % rank if rank is not None else "a worker"
    return "%s (pid %s on %s) failed before joining the cluster, exit status %s: %s" % (
        who, marker.get("pid"), marker.get("host"), marker.get("status"), marker.get("error"))


def _say(message: str) -> None:
    # Goes to scheduler.log. msrun greps that file for "ERROR" when the scheduler fails and
    # prints the match on its console.
    sys.stderr.write("%s [ERROR] launch_guard: %s\n" % (time.strftime("%H:%M:%S"), message))
    sys.stderr.flush()


def stop_process(pid: int, grace: float = TERM_GRACE_S) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``grace`` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def watch(directory: str, since: float, sched_pid: int, launcher_pid: int,
          grace: float = GONE_GRACE_S, poll_s: float = POLL_S) -> int:
    """The watcher process's loop: returns when the scheduler has gone (0) or after stopping
    it (1)."""
    remove_stale(directory, since)
    watcher = Watcher(directory, since,
                      find_workers=lambda: sibling_workers(sched_pid, launcher_pid),
                      alive=_alive, grace=grace)
    while True:
        if os.getppid() != sched_pid or not _alive(sched_pid):
            _cleanup(directory)
            return 0  # the scheduler ended on its own
        reason = watcher.poll(time.time())
        if reason:
            _say("%s; stopping msrun's scheduler (pid %d) so that the launch ends now "
                 "instead of at the cluster time-out" % (reason, sched_pid))
            stop_process(sched_pid)
            deadline = time.monotonic() + CLEANUP_WAIT_S
            while any(_alive(p) for p in watcher.workers) and time.monotonic() < deadline:
                time.sleep(0.2)
            _cleanup(directory)
            return 1
        time.sleep(poll_s)


def _cleanup(directory: str) -> None:
    for name in _listdir(directory):
        try:
            os.remove(os.path.join(directory, name))
        except OSError:
            pass
    try:
        os.rmdir(directory)
    except OSError:
        pass  # a late marker, or another node's: the next launch's watcher removes it


def _listdir(directory: str) -> Iterable[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return ()


def start_watcher(launch, *, grace: float = GONE_GRACE_S) -> Optional[subprocess.Popen]:
    """Start the watcher for this scheduler process (call it before init()). None when this
    is not msrun's scheduler or the platform has no /proc to tell process start times."""
    global _watcher
    if launch is None or launch.role != "scheduler":
        return None
    since = process_start_time()
    if since is None:
        log.warning("launch guard off: no /proc, so a worker failing before init() leaves "
                    "msrun waiting for its cluster time-out")
        return None
    directory = launch_dir(launch)
    # Isolated mode (-I): the watcher imports only the standard library, and this file by path.
    cmd = [sys.executable, "-I", os.path.abspath(__file__), directory, repr(since),
           str(os.getpid()), str(os.getppid()), repr(grace)]
    try:
        # Before init(): workers note their join only where a watcher will read and clean up.
        os.makedirs(directory, exist_ok=True)
        _watcher = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, close_fds=True)
    except OSError as err:  # the launch itself must not fail for its guard
        log.warning("launch guard off: could not start its watcher: %s", err)
        return None
    log.info("launch guard: watching %s for workers that fail before joining the cluster",
             directory)
    return _watcher


def _main(argv: List[str]) -> int:
    directory, since, sched_pid, launcher_pid, grace = argv
    try:
        return watch(directory, float(since), int(sched_pid), int(launcher_pid), float(grace))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
