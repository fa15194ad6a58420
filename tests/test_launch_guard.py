"""The msrun launch guard: failure markers, the watcher's decisions, and the watcher process
stopping a scheduler that cannot stop itself. No MindSpore, no msrun (the end-to-end run is in
test_e2e_jobs.py)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import start
from modelarts import launch_guard
from modelarts.environment import MsrunLaunch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def not_joined(monkeypatch):
    monkeypatch.setattr(launch_guard, "_joined", False)


def worker(tmp_path, rank=1) -> MsrunLaunch:
    return MsrunLaunch("worker", "127.0.0.1", "18571", rank, str(tmp_path))


def scheduler(tmp_path) -> MsrunLaunch:
    return MsrunLaunch("scheduler", "127.0.0.1", "18571", None, str(tmp_path))


def msrun_environ(monkeypatch, tmp_path, role="MS_WORKER"):
    for name, value in {"MS_ROLE": role, "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "18571",
                        "MS_WORKER_NUM": "2", "MS_NODE_ID": "1", "RANK_ID": "1",
                        "LAUNCH_GUARD_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)


# --------------------------------------------------------------------------- markers

def test_launch_dir_is_named_after_the_scheduler_address(tmp_path, monkeypatch):
    assert launch_guard.launch_dir(worker(tmp_path)) == str(tmp_path / "msrun-127.0.0.1-18571")
    assert launch_guard.launch_dir(worker(tmp_path)) == launch_guard.launch_dir(scheduler(tmp_path))
    monkeypatch.setattr(launch_guard.tempfile, "gettempdir", lambda: "/tmpx")
    ipv6 = MsrunLaunch("worker", "fe80::1", "8118", 0, None)
    assert launch_guard.launch_dir(ipv6) == "/tmpx/msrun-fe80__1-8118"


def test_failure_report_is_read_back_by_the_scheduler_side(tmp_path):
    before = time.time()
    path = launch_guard.report_failure(worker(tmp_path), 2, "obs://b/nope does not exist")
    assert path and os.path.dirname(path) == launch_guard.launch_dir(worker(tmp_path))
    [marker] = launch_guard.read_markers(os.path.dirname(path), "failed-", before)
    assert (marker["rank"], marker["status"], marker["pid"]) == (1, 2, os.getpid())
    assert marker["error"] == "obs://b/nope does not exist"
    # A marker from before this scheduler started belongs to an earlier launch.
    assert launch_guard.read_markers(os.path.dirname(path), "failed-", time.time() + 1) == []


@pytest.mark.parametrize("case", ["no launch", "scheduler", "status 0", "joined"])
def test_failure_report_only_from_a_failing_worker_before_init(tmp_path, case):
    launch = {"no launch": None, "scheduler": scheduler(tmp_path)}.get(case, worker(tmp_path))
    if case == "joined":
        launch_guard.note_joined(launch)
    assert launch_guard.report_failure(launch, 0 if case == "status 0" else 2, "x") is None
    assert launch_guard.read_markers(str(tmp_path / "msrun-127.0.0.1-18571"), "failed-", 0) == []


def test_join_is_noted_only_where_a_watcher_reads_it(tmp_path):
    directory = tmp_path / "msrun-127.0.0.1-18571"
    launch_guard.note_joined(worker(tmp_path))      # scheduler elsewhere: leave nothing behind
    assert launch_guard.joined() and not directory.exists()
    directory.mkdir()                                # what start_watcher does
    launch_guard.note_joined(worker(tmp_path))
    [marker] = launch_guard.read_markers(str(directory), "joined-", 0)
    assert (marker["rank"], marker["pid"]) == (1, os.getpid())


def test_failure_report_never_raises(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    launch = MsrunLaunch("worker", "h", "1", 0, str(blocker))
    assert launch_guard.report_failure(launch, 2, "boom") is None
    assert "could not report the failure" in caplog.text


def test_unreadable_and_foreign_files_are_ignored(tmp_path):
    (tmp_path / "failed-half.json").write_text("{")
    (tmp_path / "failed-list.json").write_text("[1]")
    (tmp_path / "notes.txt").write_text("hello")
    assert launch_guard.read_markers(str(tmp_path), "failed-", 0) == []


def test_stale_markers_are_removed(tmp_path):
    old, new = tmp_path / "failed-old.json", tmp_path / "failed-new.json"
    for p in (old, new):
        p.write_text(json.dumps({"time": 1.0}))
    os.utime(old, (1000, 1000))
    launch_guard.remove_stale(str(tmp_path), since=2000)
    assert not old.exists() and new.exists()


# --------------------------------------------------------------------------- decisions

class Table:
    """A fake process table: `children` are what msrun's children look like now (None: /proc
    cannot tell), `running` the pids still alive wherever their parent went."""

    def __init__(self, children=None, running=()):
        self.children, self.running = children, set(running)

    def start(self, *pids):
        self.children = sorted(set(self.children or ()) | set(pids))
        self.running |= set(pids)

    def end(self, *pids):
        self.children = [p for p in self.children or () if p not in pids]
        self.running -= set(pids)


def make_watcher(tmp_path, table, since=0.0):
    return launch_guard.Watcher(str(tmp_path), since, find_workers=lambda: table.children,
                                alive=lambda pid: pid in table.running, grace=10.0)


def write(tmp_path, name, **data):
    (tmp_path / name).write_text(json.dumps(dict({"time": 100.0}, **data)))


def test_watcher_waits_while_workers_are_alive_however_long(tmp_path):
    table = Table()
    table.start(11, 12)
    watcher = make_watcher(tmp_path, table)
    assert all(watcher.poll(t) is None for t in (0, 60, 3600, 86400))  # staging takes its time


def test_watcher_stops_on_a_failure_marker_and_names_the_error(tmp_path):
    table = Table()
    table.start(11, 12)
    watcher = make_watcher(tmp_path, table, since=50)
    write(tmp_path, "failed-old.json", time=10.0, rank=0, error="an earlier launch")
    assert watcher.poll(0) is None
    write(tmp_path, "failed-vm-11.json", rank=0, pid=11, host="vm", status=2,
          error="obs://b/nope does not exist")
    reason = watcher.poll(1)
    assert "worker rank 0 (pid 11 on vm)" in reason and "exit status 2" in reason
    assert "obs://b/nope does not exist" in reason and "earlier launch" not in reason


def test_watcher_stops_when_all_local_workers_vanished_before_joining(tmp_path):
    table = Table()
    watcher = make_watcher(tmp_path, table)
    assert watcher.poll(0) is None            # /proc cannot tell: keep waiting
    table.children = []
    assert watcher.poll(1) is None            # none seen yet (or a scheduler-only node)
    table.start(11, 12)
    assert watcher.poll(2) is None
    table.end(11)
    assert watcher.poll(3) is None
    table.end(12)
    assert watcher.poll(4) is None            # a failure marker may still be on its way
    assert watcher.poll(13.9) is None
    assert "every worker process on this node has ended" in watcher.poll(14)


def test_watcher_follows_workers_after_msrun_exits(tmp_path):
    """`msrun --join=False` returns once it has started everything: its workers live on under
    another parent and must keep the scheduler alive."""
    table = Table()
    table.start(11, 12)
    watcher = make_watcher(tmp_path, table)
    assert watcher.poll(0) is None
    table.children = []                       # re-parented, still running
    assert all(watcher.poll(t) is None for t in (1, 100, 10000))
    table.running.clear()
    assert watcher.poll(10001) is None and watcher.poll(10011) is not None


def test_watcher_grace_restarts_when_a_worker_shows_up_again(tmp_path):
    table = Table()
    table.start(11)
    watcher = make_watcher(tmp_path, table)
    watcher.poll(0)
    table.end(11)
    watcher.poll(1)
    table.start(13)
    watcher.poll(2)
    table.end(13)
    assert watcher.poll(3) is None                    # gone again from here: 10 s more
    assert watcher.poll(12.9) is None and watcher.poll(13) is not None


def test_watcher_leaves_a_formed_cluster_to_mindspore(tmp_path):
    table = Table()
    table.start(11, 12)
    watcher = make_watcher(tmp_path, table)
    watcher.poll(0)
    write(tmp_path, "joined-vm-11.json", rank=0)
    table.end(11, 12)                         # workers done: the scheduler ends by itself
    assert watcher.poll(1) is None and watcher.poll(100) is None


# --------------------------------------------------------------------------- processes

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]

# A stand-in for msrun's boot file: as the scheduler it starts the watcher, then blocks the
# way init() does; as a worker it only blocks (staging).
FAKE_BOOT_FILE = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, %r)
    from modelarts import launch_guard
    from modelarts.environment import msrun_launch
    if os.environ["MS_ROLE"] == "MS_SCHED":
        watcher = launch_guard.start_watcher(msrun_launch(), grace=float(sys.argv[2]))
        print(watcher.pid, flush=True)
    time.sleep(float(sys.argv[1]))
""" % REPO)
GRACE = "1.0"


def spawn(tmp_path, role="MS_SCHED", seconds=60.0):
    env = dict(os.environ, MS_ROLE=role, MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT="18571",
               LAUNCH_GUARD_DIR=str(tmp_path))
    return subprocess.Popen([sys.executable, "-c", FAKE_BOOT_FILE, str(seconds), GRACE], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def spawn_scheduler(tmp_path, seconds=60.0):
    proc = spawn(tmp_path, "MS_SCHED", seconds)
    return proc, int(proc.stdout.readline())


def wait_gone(pid, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not launch_guard._alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_watcher_process_stops_the_scheduler_on_a_failure_report(tmp_path):
    proc, watcher_pid = spawn_scheduler(tmp_path)
    try:
        time.sleep(0.5)
        started = time.time()
        launch_guard.report_failure(worker(tmp_path, rank=0), 2, "obs://b/nope does not exist")
        _, err = proc.communicate(timeout=15)
        assert time.time() - started < 5
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM
    assert "[ERROR] launch_guard: worker rank 0" in err and "obs://b/nope does not exist" in err
    assert wait_gone(watcher_pid)
    assert not (tmp_path / "msrun-127.0.0.1-18571").exists()   # nothing left behind


def test_watcher_process_ends_with_its_scheduler(tmp_path):
    proc, watcher_pid = spawn_scheduler(tmp_path, seconds=0.5)
    proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert wait_gone(watcher_pid, timeout=5)


def test_watcher_process_waits_for_live_workers_and_stops_when_they_vanish(tmp_path):
    """Like msrun: this test process is the launcher, the workers run the scheduler's command
    line. Alive (staging) they keep the scheduler waiting past every grace period; killed
    without a word (as msrun kills the rest after a crash) they end it."""
    workers = [spawn(tmp_path, "MS_WORKER") for _ in range(2)]
    proc, watcher_pid = spawn_scheduler(tmp_path)
    try:
        time.sleep(float(GRACE) + 2)
        assert proc.poll() is None, proc.stderr.read()
        for w in workers:
            w.kill()
            w.wait()
        started = time.time()
        _, err = proc.communicate(timeout=15)
        assert time.time() - started < float(GRACE) + 3
    finally:
        for p in workers + [proc]:
            p.kill()
            p.wait()
    assert proc.returncode == -signal.SIGTERM
    assert "every worker process on this node has ended before joining the cluster" in err
    assert wait_gone(watcher_pid)


# A stand-in for `msrun --join=False`: starts the scheduler and two workers, lingers, exits.
FAKE_MSRUN = textwrap.dedent("""
    import json, os, subprocess, sys, time
    boot, guard, linger, log = sys.argv[1:]
    def start(role):
        env = dict(os.environ, MS_ROLE=role, MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT="18572",
                   LAUNCH_GUARD_DIR=guard)
        return subprocess.Popen([sys.executable, "-c", boot, "60", "1.0"], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(log, "a"))
    procs = [start("MS_SCHED"), start("MS_WORKER"), start("MS_WORKER")]
    time.sleep(float(linger))
    print(json.dumps([p.pid for p in procs]), flush=True)
""")


def test_watcher_process_outlives_msrun_join_false(tmp_path):
    log = tmp_path / "scheduler.log"
    launcher = subprocess.run([sys.executable, "-c", FAKE_MSRUN, FAKE_BOOT_FILE, str(tmp_path),
                               "2.0", str(log)], capture_output=True, text=True, timeout=60)
    sched, *workers = json.loads(launcher.stdout)
    try:
        time.sleep(float(GRACE) + 2)          # msrun has gone; its workers still stage
        assert launch_guard._alive(sched), log.read_text()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        assert wait_gone(sched, timeout=float(GRACE) + 5), log.read_text()
    finally:
        for pid in [sched] + workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert "every worker process on this node has ended before joining the cluster" in log.read_text()


def test_no_watcher_outside_an_msrun_scheduler(tmp_path):
    assert launch_guard.start_watcher(None) is None
    assert launch_guard.start_watcher(worker(tmp_path)) is None


def test_sibling_workers_are_the_launchers_children_with_the_scheduler_command_line():
    sched = subprocess.Popen(SLEEPER)
    workers = [subprocess.Popen(SLEEPER) for _ in range(2)]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(61)"])
    try:
        found = launch_guard.sibling_workers(sched.pid, os.getpid())
        assert sorted(found) == sorted(w.pid for w in workers)
        workers[0].kill()
        workers[0].wait()
        workers[1].kill()   # not reaped: a zombie counts as gone
        time.sleep(0.3)
        assert launch_guard.sibling_workers(sched.pid, os.getpid()) == []
    finally:
        for p in [sched, other] + workers:
            p.kill()
            p.wait()


def test_process_start_time_is_when_the_process_started():
    before = time.time()
    proc = subprocess.Popen(SLEEPER)
    try:
        started = launch_guard.process_start_time(proc.pid)
        assert before - 0.1 <= started <= time.time() + 0.1
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- start.py

@pytest.mark.parametrize("raised, status", [
    (start.UserError("--data_url=obs://b/nope does not exist"), 2),
    (RuntimeError("out of memory"), 1),
    (SystemExit(143), 143),
    (KeyboardInterrupt(), 130),
])
def test_every_failure_leaving_main_is_reported(tmp_path, monkeypatch, raised, status):
    msrun_environ(monkeypatch, tmp_path)

    def fail(argv):
        raise raised
    monkeypatch.setattr(start, "parse_argv", fail)
    if isinstance(raised, start.UserError):
        assert start.main([]) == 2
    else:
        with pytest.raises(type(raised)):
            start.main([])
    [marker] = launch_guard.read_markers(str(tmp_path / "msrun-127.0.0.1-18571"), "failed-", 0)
    assert (marker["rank"], marker["status"]) == (1, status)
    assert str(raised) in marker["error"]


def test_success_and_clean_exits_are_not_reported(tmp_path, monkeypatch):
    msrun_environ(monkeypatch, tmp_path)
    monkeypatch.setattr(start, "parse_argv", lambda argv: (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        start.main([])
    assert not (tmp_path / "msrun-127.0.0.1-18571").exists()


def test_bad_config_in_an_msrun_worker_reaches_the_scheduler(tmp_path):
    """The real boot file as msrun starts a worker, failing before anything is staged."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK", "MA_"))}
    env.update(MS_ROLE="MS_WORKER", MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT="18571",
               MS_WORKER_NUM="2", MS_NODE_ID="0", RANK_ID="0", LAUNCH_GUARD_DIR=str(tmp_path))
    res = subprocess.run([sys.executable, os.path.join(REPO, "start.py"), "--train.max_stpes=3"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    [marker] = launch_guard.read_markers(str(tmp_path / "msrun-127.0.0.1-18571"), "failed-", 0)
    assert marker["rank"] == 0 and "max_stpes" in marker["error"]
