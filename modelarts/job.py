"""The life of one training job: stage inputs, push outputs while it runs, upload at the end.

``with Job(cfg, env, task) as job:`` around the task does, on every rank:

* **inputs** — ``stage_inputs()`` copies an ``obs://``/``s3://`` ``data_url`` to the local
  cache once per node: local rank 0 copies, the other local ranks wait for a marker file.
  The marker names the job and the URL, carries the outcome (a failed copy's error is raised
  on every waiting rank instead of leaving them hanging), and a marker written before this
  launch started is never trusted. Waiters give up ``rank_table_timeout`` seconds after the
  copying rank's last heartbeat. A local ``data_url`` is used as it is.
* **outputs** — ``output_dir`` is ``train_url`` itself when that is a local folder, else a
  local folder that mirrors it: ``push(path)`` uploads each new file (checkpoints,
  exports, run.json) in a background thread while training runs, and the final upload sends
  whatever is still missing. A failed push is logged, never fatal: the final upload retries it.
* **logs** — each rank writes ``logs/rank_<global rank>.log`` and uploads its own; rank 0
  uploads everything else and keeps ``run.json`` (status, ranks, versions, times, metrics).
* **the end** — normal exit, an exception or SIGTERM (ModelArts' stop / pre-emption) all end
  in ``__exit__``: status finished / failed (with the error) / interrupted, pending pushes
  drained, final upload. The original exception always propagates.

Cache layout (``cache_dir``: ``/cache`` on ModelArts, ``./runs/cache`` elsewhere): a remote
``obs://bucket/key`` is staged to ``<cache_dir>/<kind>/bucket/key`` (kind: data, files, ...),
so different data sets never mix in one folder and a re-run with the same URL copies only
what changed; outputs for a remote ``train_url`` go to ``<cache_dir>/output/bucket/key``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform as _platform
import queue
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

import obs_sync
from src.errors import UserError

log = logging.getLogger(__name__)

MODELARTS_CACHE = "/cache"
LOCAL_CACHE = os.path.join("runs", "cache")
STAGING_DIR = ".staging"  # markers, inside cache_dir
HEARTBEAT_S = 2.0
POLL_S = 0.2
# Ranks of one launch start within this many seconds of each other: a marker written longer
# before this process started is from an earlier launch (job ids repeat: "local", msrun's port).
LAUNCH_SKEW_S = 120.0
# Files that must not leave the node: checkpoint writers' temporaries, obs_sync's own.
UPLOAD_EXCLUDE = (".*.tmp*", "*/.*.tmp*", "*" + obs_sync.TMP_SUFFIX)


class JobInterrupted(SystemExit):
    """Raised in the main thread when the platform sends SIGTERM (stop, pre-emption). A
    SystemExit, so nothing prints a traceback and the exit status says it was killed."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return "interrupted by signal %d" % self.signum


# --------------------------------------------------------------------------- where things go

def default_cache_dir(env) -> str:
    on_modelarts = getattr(env, "on_modelarts", False) or env.platform == "modelarts"
    return MODELARTS_CACHE if on_modelarts else os.path.abspath(LOCAL_CACHE)


def _mirror(cache_dir: str, kind: str, url: str) -> str:
    """``obs://bucket/a/b`` → ``<cache_dir>/<kind>/bucket/a/b``."""
    loc = obs_sync.parse_location(url)
    parts = [p for p in loc.key.split("/") if p]
    return os.path.join(cache_dir, kind, loc.bucket, *parts)


def resolve_dirs(cfg: dict, env) -> Tuple[str, str]:
    """(data_dir, output_dir) the job will use; pure, for ``--task plan``. data_dir is '' when
    there is no data_url."""
    cache_dir = os.path.abspath(cfg.get("cache_dir") or default_cache_dir(env))
    data_url = cfg.get("data_url") or ""
    if not data_url:
        data_dir = ""
    elif obs_sync.is_remote(data_url):
        data_dir = _mirror(cache_dir, "data", data_url)
    else:
        data_dir = os.path.abspath(data_url)
    train_url = cfg.get("train_url") or ""
    if cfg.get("output_dir"):
        output_dir = os.path.abspath(cfg["output_dir"])
    elif not train_url:
        output_dir = os.path.join(cache_dir, "output", "local")
    elif obs_sync.is_remote(train_url):
        output_dir = _mirror(cache_dir, "output", train_url)
    else:
        output_dir = os.path.abspath(train_url)
    return data_dir, output_dir


def _process_start_time() -> float:
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


def _write_json(path: str, data: dict) -> None:
    obs_sync.atomic_local_write(path, lambda tmp: _dump(tmp, data))


def _dump(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # not there yet, or being replaced


def _versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    found: Dict[str, Optional[str]] = {"python": _platform.python_version()}
    for name in ("mindspore", "numpy"):
        module = sys.modules.get(name)  # never import MindSpore just to name its version
        version = getattr(module, "__version__", None) if module else None
        if version is None:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                version = None
        found[name] = version
    return found


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


# --------------------------------------------------------------------------- the job

class Job:
    """See the module docstring. ``cfg``: the resolved config; ``env``: a JobEnvironment;
    ``task``: train | eval | export | preprocess | synth."""

    def __init__(self, cfg: dict, env, task: str, *, launch_time: Optional[float] = None):
        self.cfg = cfg
        self.env = env
        self.task = task
        self.data_url = cfg.get("data_url") or ""
        self.train_url = cfg.get("train_url") or ""
        self.cache_dir = os.path.abspath(cfg.get("cache_dir") or default_cache_dir(env))
        self.data_dir: Optional[str] = None  # set by stage_inputs()
        _, self.output_dir = resolve_dirs(cfg, env)
        sync_cfg = cfg.get("sync") or {}
        self.sync_options = {"threads": int(sync_cfg.get("threads", 8)),
                             "retries": int(sync_cfg.get("retries", 3))}
        self.wait_timeout = float(cfg.get("rank_table_timeout") or 600)
        self.launch_time = _process_start_time() if launch_time is None else launch_time

        worker = getattr(env, "role", "worker") == "worker"
        self.is_main = worker and env.global_rank == 0
        self.is_node_main = worker and env.local_rank == 0
        self.log_name = ("rank_%d.log" % env.global_rank) if worker else "scheduler.log"
        # Upload to train_url unless outputs are written there directly.
        self.upload_to = (self.train_url if self.train_url and (
            obs_sync.is_remote(self.train_url)
            or os.path.abspath(self.train_url) != self.output_dir) else "")
        self.run: Dict[str, Any] = {}
        self._scratch: Optional[str] = None
        self._log_handler: Optional[logging.Handler] = None
        self._root_level: Optional[int] = None
        self._old_sigterm: Any = None
        self._sigterm_installed = False
        self._pushes: queue.Queue[Optional[str]] = queue.Queue()
        self._pending: set = set()
        self._pending_lock = threading.Lock()
        self._push_thread: Optional[threading.Thread] = None
        self._failed_pushes: list = []
        self._done_markers: list = []  # removed when the job finishes
        self._started = time.time()

    # ----------------------------------------------------------------- enter / exit

    def __enter__(self) -> Job:
        try:
            self._enter()
        except BaseException:
            self._teardown()
            raise
        return self

    def _enter(self) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        if self.is_node_main and self._output_is_staging_area():
            self._clear_output_dir()
        self._open_log()
        self._install_sigterm()
        log.info("job %s: %s rank %d/%d (local %d/%d, node %d/%d), task %s, output %s%s",
                 self.env.job_id, self.env.platform, self.env.global_rank, self.env.world_size,
                 self.env.local_rank, self.env.local_world_size, self.env.node_rank,
                 self.env.num_nodes, self.task, self.output_dir,
                 " → " + self.upload_to if self.upload_to else "")
        if not self.is_main:
            return
        if self.upload_to:
            self._push_thread = threading.Thread(target=self._push_worker, name="job-push",
                                                 daemon=True)
            self._push_thread.start()
        elif not self.train_url:
            log.log(logging.WARNING if self.task in ("train", "eval", "export") else logging.INFO,
                    "train_url is empty: outputs stay in %s only", self.output_dir)
        self.update_run(
            status="running", task=self.task, model=self.cfg.get("model"),
            platform=self.env.platform, launcher=getattr(self.env, "launcher", None),
            device_target=self.env.device_target, rank_size=self.env.world_size,
            num_nodes=self.env.num_nodes, job_id=self.env.job_id, data_url=self.data_url,
            train_url=self.train_url, output_dir=self.output_dir, versions=_versions(),
            start_time=_iso(self._started), end_time=None, durations={}, error=None,
            metrics={})
        if self.task == "train" and self.train_url:
            self._warn_leftover_checkpoints()

    def __exit__(self, exc_type, exc, tb) -> bool:
        # A second SIGTERM during the final upload must not cut it short: the platform's
        # SIGKILL comes soon enough if it is in a hurry.
        if self._sigterm_installed:
            signal.signal(signal.SIGTERM, self._late_sigterm)
        try:
            self._finish(exc_type, exc)
        except BaseException as err:
            if exc is None:
                raise
            # Never mask the error that ended the job.
            log.error("final upload after %s failed: %s: %s", exc_type.__name__,
                      type(err).__name__, err)
        finally:
            self._teardown()
        return False

    def _finish(self, exc_type, exc) -> None:
        if exc is None:
            status, error = "finished", None
        elif isinstance(exc, (JobInterrupted, KeyboardInterrupt)):
            status, error = "interrupted", str(exc) or exc_type.__name__
        else:
            status, error = "failed", "%s: %s" % (exc_type.__name__, exc)
        ended = time.time()
        if status == "finished":
            log.info("job %s finished in %.1f s", self.env.job_id, ended - self._started)
        else:
            log.error("job %s %s after %.1f s: %s", self.env.job_id, status,
                      ended - self._started, error)
        if self.is_main:
            durations = dict(self.run.get("durations") or {}, total_s=round(ended - self._started, 3))
            self._write_run(status=status, error=error, end_time=_iso(ended), durations=durations)
            self._stop_pushes()
            if self._failed_pushes:
                log.info("%d push(es) failed while running; the final upload sends them now",
                         len(self._failed_pushes))
        if status == "finished":
            # Every rank got past staging long ago (they trained together). Failure markers
            # stay: a rank may still be about to read one; the next launch clears them.
            for path in self._done_markers:
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
        failure: Optional[BaseException] = None
        if self.is_main and self.upload_to:
            try:
                self._final_upload(durations)
            except Exception as err:
                log.error("final upload to %s failed: %s: %s", self.upload_to,
                          type(err).__name__, err)
                failure = err
        self._close_log()
        if self.upload_to:
            try:
                self._upload_own_log()
            except Exception as err:
                failure = failure or err
        if failure is not None:
            raise failure

    def _final_upload(self, durations: dict) -> None:
        started = time.time()
        report = obs_sync.sync(self.output_dir, self.upload_to,
                               exclude=UPLOAD_EXCLUDE + ("logs/*",), **self.sync_options)
        durations["final_upload_s"] = round(time.time() - started, 3)
        log.info("uploaded outputs to %s: %s", self.upload_to, report.summary())
        self._write_run(durations=durations)
        obs_sync.sync(os.path.join(self.output_dir, "run.json"), self._remote("run.json"),
                      incremental=False, **self.sync_options)

    def _teardown(self) -> None:
        self._stop_pushes()
        self._close_log()
        if self._sigterm_installed:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._sigterm_installed = False
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    # ----------------------------------------------------------------- signals and logs

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread

        def on_sigterm(signum, frame):
            raise JobInterrupted(signum)

        self._old_sigterm = signal.signal(signal.SIGTERM, on_sigterm)
        self._sigterm_installed = True

    @staticmethod
    def _late_sigterm(signum, frame) -> None:
        log.warning("SIGTERM again while uploading outputs: finishing the upload first")

    def _open_log(self) -> None:
        path = os.path.join(self.output_dir, "logs", self.log_name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(threadName)s]: %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger()
        if root.level > logging.INFO or root.level == logging.NOTSET:
            # The file keeps INFO even when the console is quieter.
            self._root_level = root.level
            root.setLevel(logging.INFO)
        root.addHandler(handler)
        self._log_handler = handler

    def _close_log(self) -> None:
        if self._log_handler is None:
            return
        root = logging.getLogger()
        root.removeHandler(self._log_handler)
        self._log_handler.close()
        self._log_handler = None
        if self._root_level is not None:
            root.setLevel(self._root_level)
            self._root_level = None

    def _upload_own_log(self) -> None:
        path = os.path.join(self.output_dir, "logs", self.log_name)
        if os.path.exists(path):
            obs_sync.sync(path, self._remote("logs/" + self.log_name), incremental=False,
                          **self.sync_options)

    # ----------------------------------------------------------------- outputs

    def _output_is_staging_area(self) -> bool:
        """The local output folder only mirrors a remote train_url (we chose it, the user did
        not): leftovers of an earlier run there would be uploaded into this run's train_url
        and taken by resume=auto, so it starts empty. Logs stay (each rank appends to its own)."""
        return (not self.cfg.get("output_dir") and bool(self.train_url)
                and obs_sync.is_remote(self.train_url))

    def _clear_output_dir(self) -> None:
        for name in os.listdir(self.output_dir):
            if name == "logs":
                continue
            path = os.path.join(self.output_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)

    def _remote(self, rel: str) -> str:
        return self.train_url.rstrip("/") + "/" + rel

    def push(self, path: str) -> None:
        """Upload ``path`` (a file under output_dir) to the same place under train_url, in the
        background. Rank 0 only; a no-op where outputs are written to train_url directly."""
        if not (self.is_main and self.upload_to):
            return
        path = os.path.abspath(path)
        rel = os.path.relpath(path, self.output_dir)
        if rel.startswith(os.pardir + os.sep) or rel == os.pardir:
            raise ValueError("push(%r): not under the output folder %s" % (path, self.output_dir))
        if self._push_thread is None:
            return  # the job is over: the final upload has taken everything
        with self._pending_lock:
            if path in self._pending:
                return  # queued and not started: that upload will read the newest content
            self._pending.add(path)
        self._pushes.put(path)

    def _push_worker(self) -> None:
        while True:
            path = self._pushes.get()
            try:
                if path is None:
                    return
                with self._pending_lock:
                    self._pending.discard(path)
                rel = os.path.relpath(path, self.output_dir).replace(os.sep, "/")
                if not os.path.exists(path):
                    log.debug("not pushing %s: removed before its turn (keep_last)", rel)
                    continue
                try:
                    obs_sync.sync(path, self._remote(rel), incremental=False,
                                  threads=1, retries=self.sync_options["retries"])
                except Exception as err:  # never kill training over an upload
                    self._failed_pushes.append(rel)
                    log.warning("push of %s to %s failed (the final upload retries it): %s: %s",
                                rel, self.upload_to, type(err).__name__, err)
            finally:
                self._pushes.task_done()

    def wait_pushes(self) -> None:
        """Block until every push queued so far has been attempted."""
        if self._push_thread is not None:
            self._pushes.join()

    def _stop_pushes(self) -> None:
        thread, self._push_thread = self._push_thread, None
        if thread is not None:
            self._pushes.put(None)
            thread.join()

    def update_run(self, **fields) -> None:
        """Merge ``fields`` into run.json (rank 0) and push it."""
        if not self.is_main:
            return
        self._write_run(**fields)
        self.push(os.path.join(self.output_dir, "run.json"))

    def _write_run(self, **fields) -> None:
        self.run.update(fields)
        _write_json(os.path.join(self.output_dir, "run.json"), self.run)

    def _warn_leftover_checkpoints(self) -> None:
        """Pain point: a checkpoint left in train_url by an earlier run must not silently
        change this one. Resuming happens only when train.resume asks for it."""
        try:
            found = obs_sync.list_files(self._remote("ckpt"),
                                        retries=self.sync_options["retries"])
        except UserError as err:
            raise UserError("train_url %s cannot be listed: %s" % (self.train_url, err)) from err
        ckpts = sorted(rel for rel in found if rel.endswith(".ckpt") and "/" not in rel)
        if not ckpts:
            return
        resume = (self.cfg.get("train") or {}).get("resume") or ""
        if resume:
            log.info("train_url %s holds %d checkpoint(s) from an earlier run; train.resume=%s",
                     self.train_url, len(ckpts), resume)
            return
        log.warning("train_url %s already holds %d checkpoint(s) from an earlier run (%s); "
                    "train.resume is not set, so this run starts from scratch: its checkpoints "
                    "are written beside the old ones and replace those with the same name. Set "
                    "--train.resume=auto to continue that run, or use a fresh train_url.",
                    self.train_url, len(ckpts), ", ".join(ckpts[-3:]))

    @property
    def scratch_dir(self) -> str:
        """A private local folder for temporary files of this process, removed at exit."""
        if self._scratch is None:
            parent = os.path.join(self.cache_dir, "scratch")
            os.makedirs(parent, exist_ok=True)
            self._scratch = tempfile.mkdtemp(prefix="%s-rank%d-" % (
                re.sub(r"[^A-Za-z0-9_.-]", "_", self.env.job_id), self.env.global_rank),
                dir=parent)
        return self._scratch

    # ----------------------------------------------------------------- inputs

    def stage_inputs(self) -> str:
        """The local folder holding data_url's contents, copied once per node if remote."""
        if not self.data_url:
            raise UserError("no data to read: set --data_url=obs://... or a local folder")
        if not obs_sync.is_remote(self.data_url) and not os.path.exists(self.data_url):
            raise UserError("data_url %s does not exist: set --data_url=obs://... or a local "
                            "folder" % self.data_url)
        started = time.time()
        self.data_dir = self.stage(self.data_url, "data")
        if self.is_main:
            durations = dict(self.run.get("durations") or {},
                             stage_s=round(time.time() - started, 3))
            self.update_run(data_dir=self.data_dir, durations=durations)
        return self.data_dir

    def stage(self, url: str, kind: str = "files") -> str:
        """Local path of ``url`` (a file or folder): a local path as it is (it must exist), a
        remote one copied to ``<cache_dir>/<kind>/bucket/key`` once per node."""
        if not obs_sync.is_remote(url):
            if not os.path.exists(url):
                raise UserError("%s does not exist" % url)
            return os.path.abspath(url)
        dest = _mirror(self.cache_dir, kind, url)

        def copy() -> dict:
            report = obs_sync.sync(url, dest, **self.sync_options)
            log.info("staged %s -> %s: %s", url, dest, report.summary())
            return {"files": report.files, "skipped": report.skipped}

        self._once_per_node("%s|%s" % (kind, url), url, copy)
        return dest

    def fetch_outputs(self, sub: str) -> str:
        """Bring ``train_url/<sub>`` into ``output_dir/<sub>`` (once per node), e.g. the
        checkpoints a re-scheduled job resumes from. Nothing there is not an error."""
        local = os.path.join(self.output_dir, *sub.split("/"))
        if not self.upload_to:
            return local
        remote = self._remote(sub)

        def copy() -> dict:
            if not obs_sync.exists(remote, retries=self.sync_options["retries"]):
                log.info("nothing to fetch at %s", remote)
                return {"files": 0}
            report = obs_sync.sync(remote, local, **self.sync_options)
            log.info("fetched %s -> %s: %s", remote, local, report.summary())
            return {"files": report.files}

        self._once_per_node("fetch|%s" % remote, remote, copy)
        return local

    # ----------------------------------------------------------------- once per node

    def _markers(self, key: str) -> Dict[str, str]:
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]
        job = re.sub(r"[^A-Za-z0-9_.-]", "_", str(self.env.job_id))
        base = os.path.join(self.cache_dir, STAGING_DIR, "%s-%s" % (job, digest))
        return {"done": base + ".done", "failed": base + ".failed", "running": base + ".running",
                "digest": digest}

    def _once_per_node(self, key: str, what: str, action: Callable[[], dict]) -> dict:
        markers = self._markers(key)
        if self.is_node_main:
            return self._run_and_mark(markers, what, action)
        return self._wait_for_marker(markers, what)

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
        stamp = {"job_id": self.env.job_id, "what": what, "pid": os.getpid()}
        stop = threading.Event()

        def heartbeat() -> None:
            while True:
                _write_json(markers["running"], dict(stamp, time=time.time()))
                if stop.wait(HEARTBEAT_S):
                    return

        beat = threading.Thread(target=heartbeat, name="stage-heartbeat", daemon=True)
        beat.start()
        try:
            result = action()
        except BaseException as err:
            _write_json(markers["failed"], dict(stamp, time=time.time(),
                                                user_error=isinstance(err, UserError),
                                                error="%s: %s" % (type(err).__name__, err)
                                                if not isinstance(err, UserError) else str(err)))
            raise
        else:
            _write_json(markers["done"], dict(stamp, time=time.time(), result=result))
            self._done_markers.append(markers["done"])
            return result
        finally:
            stop.set()
            beat.join()
            try:
                os.remove(markers["running"])
            except FileNotFoundError:
                pass

    def _fresh(self, marker: Optional[dict]) -> bool:
        return (marker is not None and marker.get("job_id") == self.env.job_id
                and float(marker.get("time", 0)) >= self.launch_time - LAUNCH_SKEW_S)

    def _wait_for_marker(self, markers: Dict[str, str], what: str) -> dict:
        waited_since = time.time()
        log.info("waiting for local rank 0 to copy %s", what)
        while True:
            done = _read_json(markers["done"])
            if self._fresh(done):
                log.info("using %s as copied by local rank 0 (waited %.1f s)", what,
                         time.time() - waited_since)
                return done.get("result") or {}
            failed = _read_json(markers["failed"])
            if self._fresh(failed):
                message = "local rank 0 could not copy %s: %s" % (what, failed.get("error"))
                if failed.get("user_error"):
                    raise UserError(message)
                raise RuntimeError(message)
            alive = waited_since
            running = _read_json(markers["running"])
            if self._fresh(running):
                alive = max(alive, float(running["time"]))
            if time.time() - alive > self.wait_timeout:
                raise UserError(
                    "waited %.0f s for local rank 0 to copy %s and it gave no sign of life for "
                    "%.0f s (rank_table_timeout=%g): see logs/rank_*.log of this node's first "
                    "rank" % (time.time() - waited_since, what, time.time() - alive,
                              self.wait_timeout))
            time.sleep(POLL_S)
