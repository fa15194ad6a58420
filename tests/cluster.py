"""Start one data-parallel launch on this machine: a scheduler and N workers of one script.

MindSpore 2.3 and later ship `msrun`, which does exactly that. MindSpore 2.0-2.2 have no
launcher: their "dynamic cluster" is started by hand, every process with environment variables
(MS_ROLE=MS_SCHED for the scheduler, MS_ROLE=MS_WORKER for each worker, MS_WORKER_NUM,
MS_SCHED_HOST, MS_SCHED_PORT, MS_NODE_ID). `launch()` uses msrun when the interpreter's
MindSpore has it and otherwise starts the processes itself, with the variables msrun gives
them (recorded from msrun 2.8: tests/test_environment.py) and the same log files
(`<log_dir>/scheduler.log`, `<log_dir>/worker_<i>.log`), so that the multi-process tests
prove the same cluster on both.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import pytest

HOST = "127.0.0.1"


def msrun_path() -> Optional[str]:
    """The msrun installed next to this interpreter (MindSpore >= 2.3), or None."""
    return shutil.which("msrun", path=os.path.dirname(sys.executable))


#: For the tests that need a working cluster. Started through the MS_* variables on MindSpore
#: 2.0, a worker sometimes stalls in init() right after registering, sends no heartbeat for
#: 30 s and the scheduler drops it ("The node: 0 is timed out"): seen here in about half the
#: launches on a loaded 2-core machine, never with msrun on 2.8; the cause is not known. Not
#: strict: such a test runs every time and reports XPASS when the cluster formed.
STALLS_ON_MINDSPORE_2_0 = pytest.mark.xfail(
    msrun_path() is None, strict=False,
    reason="MindSpore 2.0 dynamic cluster: a worker can stall in init() after registering "
           "and be dropped as timed out (cause unknown; README, What is tested where)")
POLL_S = 0.2


def launcher_name() -> str:
    return "msrun" if msrun_path() else "environment variables"


class Launch:
    """A running launch; `wait()` gives its exit status the way msrun does: 0 when every
    process ended with 0, else non-zero."""

    def __init__(self, argv: Sequence[str], *, workers: int, port: int, log_dir: str,
                 env: Dict[str, str], cwd: str, cluster_time_out: Optional[int] = None):
        os.makedirs(log_dir, exist_ok=True)
        self.log_dir = log_dir
        self.output = ""
        msrun = msrun_path()
        # Both launchers start the workers with the `python` on PATH: make it this one.
        env = dict(env, PATH=os.path.dirname(sys.executable) + os.pathsep
                   + env.get("PATH", os.environ.get("PATH", "")))
        if msrun:
            cmd = [msrun, "--worker_num=%d" % workers, "--local_worker_num=%d" % workers,
                   "--master_port=%d" % port, "--log_dir=%s" % log_dir, "--join=True"]
            if cluster_time_out is not None:
                cmd.append("--cluster_time_out=%d" % cluster_time_out)
            self._msrun = subprocess.Popen(cmd + list(argv), env=env, cwd=cwd,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True, start_new_session=True)
            self._procs: List[subprocess.Popen] = []
            return
        self._msrun = None
        common = dict(env, MS_SCHED_HOST=HOST, MS_SCHED_PORT=str(port),
                      MS_WORKER_NUM=str(workers), RANK_SIZE=str(workers))
        if cluster_time_out is not None:
            common["MS_TOPO_TIMEOUT"] = str(cluster_time_out)
        roles = [("scheduler.log", dict(common, MS_ROLE="MS_SCHED", RANK_ID="0"))]
        roles += [("worker_%d.log" % i, dict(common, MS_ROLE="MS_WORKER", MS_NODE_ID=str(i),
                                             RANK_ID=str(i), DEVICE_ID=str(i)))
                  for i in range(workers)]
        # The same command line for all (modelarts/launch_guard.py finds the workers as the
        # scheduler's siblings running its command), each in its own process group.
        cmd = [sys.executable] + list(argv)
        self._procs = []
        for name, proc_env in roles:
            with open(os.path.join(log_dir, name), "w") as log:
                self._procs.append(subprocess.Popen(cmd, env=proc_env, cwd=cwd, stdout=log,
                                                    stderr=subprocess.STDOUT,
                                                    start_new_session=True))

    def wait(self, timeout: float) -> int:
        """Wait for the launch to end (TimeoutError after `timeout` s, everything stopped)."""
        if self._msrun is not None:
            try:
                self.output, _ = self._msrun.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop()
                raise TimeoutError("msrun ran past %.0f s" % timeout) from None
            return self._msrun.returncode
        scheduler, workers = self._procs[0], self._procs[1:]
        deadline = time.monotonic() + timeout
        # As msrun: watch the workers; when one fails, end the others and wait for the
        # scheduler, which leaves on its own once the cluster is gone.
        while any(w.poll() is None for w in workers):
            # A failed worker ends the launch; so does a failed scheduler (MindSpore 2.0's
            # scheduler exits 1 once it has declared workers lost, and they would keep trying
            # to reconnect to it until the time-out).
            if any(w.poll() not in (None, 0) for w in workers) or scheduler.poll():
                for w in workers:
                    _kill_group(w)
                break
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("the launch ran past %.0f s" % timeout)
            time.sleep(POLL_S)
        try:
            scheduler.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError("the scheduler ran past %.0f s" % timeout) from None
        codes = [p.returncode for p in self._procs]
        if scheduler.returncode:
            # msrun, too, repeats the scheduler's errors on its console.
            with open(os.path.join(self.log_dir, "scheduler.log"), errors="replace") as f:
                self.output = "".join(line for line in f if "ERROR" in line)
        return next((c for c in codes if c), 0)

    def stop(self) -> None:
        for p in ([self._msrun] if self._msrun is not None else []) + self._procs:
            _kill_group(p)

    def logs(self, pattern: str = "worker_*.log") -> str:
        import glob

        return "".join(open(p, errors="replace").read()
                       for p in sorted(glob.glob(os.path.join(self.log_dir, pattern))))


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def launch(argv: Sequence[str], *, workers: int, port: int, log_dir: str,
           env: Dict[str, str], cwd: str, cluster_time_out: Optional[int] = None) -> Launch:
    """Start `python argv...` as a scheduler and `workers` workers on this machine."""
    return Launch(argv, workers=workers, port=port, log_dir=log_dir, env=env, cwd=cwd,
                  cluster_time_out=cluster_time_out)


def run(argv: Sequence[str], *, timeout: float = 900, **kwargs) -> Launch:
    """launch() and wait; the finished Launch has `.returncode`."""
    la = launch(argv, **kwargs)
    la.returncode = la.wait(timeout)
    return la
