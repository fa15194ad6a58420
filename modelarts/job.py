"""The life of one job: find its run, stage inputs, push outputs while it runs, record the end.

``with Job(cfg, env, task) as job:`` around the task does, on every rank:

* **the run** (train) — train_url belongs to one run (``modelarts/run_record.py``). Before any
  data is staged, the job reads train_url's ``run.json``: the same run unfinished → resume from
  its newest complete checkpoint (only that file and best.ckpt are fetched); the same run
  finished → nothing to do; another run → one error line, nothing written. Rank 0 appends an
  attempt to the record and closes it at the end.
* **its own place** (every other task) — eval, export, synth and preprocess write their record,
  log and outputs under ``train_url/<task>/<YYYYmmdd-HHMMSS>/``, never into the training run.
* **inputs** — ``stage_inputs()`` mirrors an ``obs://``/``s3://`` ``data_url`` into the local
  cache once per node (``modelarts/staging.py``); a local ``data_url`` is used as it is.
* **outputs** — ``output_dir`` is train_url itself when that is a local folder, else a local
  folder that mirrors it: new files are pushed while training runs (``modelarts/outputs.py``),
  the run record points to a checkpoint only once it is complete in train_url, old step
  checkpoints beyond ``train.keep_last`` are removed there too, and each rank's log follows
  every ``sync.log_every`` seconds and at every checkpoint.
* **the end** — normal exit, an exception or SIGTERM (ModelArts' stop / pre-emption) all end
  in ``__exit__``: the attempt is closed as finished / failed (with the error) / interrupted,
  pending pushes drained, final upload. A SIGTERM during a train step waits for the step to
  end (``src/engine/interrupts.py``). The original exception always propagates.

Cache layout (``cache_dir``: ``/cache`` on ModelArts, ``./runs/cache`` elsewhere): a remote
``obs://bucket/key`` is staged to ``<cache_dir>/<kind>/bucket/key`` (kind: data, files, ...);
outputs for a remote ``train_url`` go to ``<cache_dir>/output/bucket/key``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform as _platform
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import obs_sync
from modelarts import run_record
from modelarts.outputs import LogPusher, Pusher, prune_checkpoints, remote_join
from modelarts.staging import NodeOnce, process_start_time, read_json, write_json
from src.engine import interrupts
from src.engine.curves import CSV_NAME as METRICS_CSV
from src.errors import UserError, reraise_disk_error

log = logging.getLogger(__name__)

MODELARTS_CACHE = "/cache"
LOCAL_CACHE = os.path.join("runs", "cache")
# Files that must not leave the node: checkpoint writers' temporaries, obs_sync's own.
UPLOAD_EXCLUDE = (".*.tmp*", "*/.*.tmp*", "*" + obs_sync.TMP_SUFFIX)
TRAIN = "train"
# A log record with this attribute set is written to the rank's log file, not the console.
FILE_ONLY = "file_only"


class JobInterrupted(SystemExit):
    """Raised in the main thread when the platform sends SIGTERM (stop, pre-emption). A
    SystemExit, so nothing prints a traceback and the exit status says it was killed."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return "interrupted by signal %d" % self.signum


class RunFinished(Exception):
    """Not an error: the run in train_url is already finished."""


# --------------------------------------------------------------------------- where things go

def default_cache_dir(env) -> str:
    on_modelarts = getattr(env, "on_modelarts", False) or env.platform == "modelarts"
    return MODELARTS_CACHE if on_modelarts else os.path.abspath(LOCAL_CACHE)


def _mirror(cache_dir: str, kind: str, url: str) -> str:
    """``obs://bucket/a/b`` → ``<cache_dir>/<kind>/bucket/a/b``."""
    loc = obs_sync.parse_location(url)
    parts = [p for p in loc.key.split("/") if p]
    return os.path.join(cache_dir, kind, loc.bucket, *parts)


def task_folder(task: str, launch_time: float) -> str:
    """Where a task other than train keeps its record and outputs, relative to train_url."""
    return "%s/%s" % (task, time.strftime("%Y%m%d-%H%M%S", time.localtime(launch_time)))


def record_url(cfg: dict, env, task: str, launch_time: float) -> str:
    """The train_url (or sub-folder of it) this task's record and outputs belong to; '' when
    the config has no train_url."""
    train_url = cfg.get("train_url") or ""
    if not train_url or task == TRAIN:
        return train_url
    if obs_sync.is_remote(train_url):
        return remote_join(train_url, task_folder(task, launch_time))
    return os.path.join(os.path.abspath(train_url), *task_folder(task, launch_time).split("/"))


def resolve_dirs(cfg: dict, env, task: str = TRAIN,
                 launch_time: Optional[float] = None) -> Tuple[str, str]:
    """(data_dir, output_dir) the job will use; pure, for ``--task plan``. data_dir is '' when
    there is no data_url."""
    launch_time = time.time() if launch_time is None else launch_time
    cache_dir = os.path.abspath(cfg.get("cache_dir") or default_cache_dir(env))
    data_url = cfg.get("data_url") or ""
    if not data_url:
        data_dir = ""
    elif obs_sync.is_remote(data_url):
        data_dir = _mirror(cache_dir, "data", data_url)
    else:
        data_dir = os.path.abspath(data_url)
    target = record_url(cfg, env, task, launch_time)
    sub = [] if task == TRAIN else task_folder(task, launch_time).split("/")
    if cfg.get("output_dir"):
        output_dir = os.path.join(os.path.abspath(cfg["output_dir"]), *sub)
    elif not target:
        # No train_url: each run keeps to a folder named after it, so runs never mix.
        name = run_record.run_identity(cfg, env) if task == TRAIN else ""
        output_dir = os.path.join(cache_dir, "output", "local", name, *sub)
    elif obs_sync.is_remote(target):
        output_dir = _mirror(cache_dir, "output", target)
    else:
        output_dir = target
    return data_dir, output_dir.rstrip(os.sep)


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


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        self.launch_time = process_start_time() if launch_time is None else launch_time
        self.record_url = record_url(cfg, env, task, self.launch_time)
        _, self.output_dir = resolve_dirs(cfg, env, task, self.launch_time)
        sync_cfg = cfg.get("sync") or {}
        self.sync_options = {"threads": int(sync_cfg.get("threads", 8)),
                             "retries": int(sync_cfg.get("retries", 3))}
        self.retries = self.sync_options["retries"]
        self.log_every = float(sync_cfg.get("log_every", 60) or 0)
        self.keep_last = int((cfg.get("train") or {}).get("keep_last", 0) or 0)
        wait_timeout = float(cfg.get("rank_table_timeout") or 600)

        worker = getattr(env, "role", "worker") == "worker"
        self.is_main = worker and env.global_rank == 0
        self.is_node_main = worker and env.local_rank == 0
        self.log_name = ("rank_%d.log" % env.global_rank) if worker else "scheduler.log"
        # Upload to the record's place unless outputs are written there directly.
        self.upload_to = (self.record_url if self.record_url and (
            obs_sync.is_remote(self.record_url)
            or os.path.abspath(self.record_url) != self.output_dir) else "")
        # Tasks other than train: only rank 0 has anything to keep.
        self.keeps_outputs = task == TRAIN or self.is_main
        self.run_id = run_record.run_identity(cfg, env) if task == TRAIN else None
        self.decision: Optional[run_record.Decision] = None
        self.resume_from: Optional[str] = None  # local checkpoint the training continues from
        self.run: Dict[str, Any] = {}
        self.last_step: Optional[int] = None
        self._run_lock = threading.RLock()
        self._staging = NodeOnce(self.cache_dir, env.job_id, self.is_node_main,
                                 launch_time=self.launch_time, timeout=wait_timeout)
        self._pusher = Pusher(self.output_dir, self.upload_to,
                              retries=self.retries)
        self._log_pusher: Optional[LogPusher] = None
        self._sources: Dict[str, str] = {}  # local copy → the URL it was staged from
        self._scratch: Optional[str] = None
        self._log_handler: Optional[logging.Handler] = None
        self._root_level: Optional[int] = None
        self._old_signals: Dict[int, Any] = {}
        self._recording = False  # this process writes the run record
        self._found_record: Optional[dict] = None
        self._found_ckpts: List[str] = []  # ckpt/ names in train_url when the job started
        # kind → (path, mtime, info) of the newest checkpoint the record does not point to yet
        self._unpointed: Dict[str, Tuple[str, int, dict]] = {}
        self._started = time.time()

    @property
    def finished_already(self) -> bool:
        return self.decision is not None and self.decision.action == "finished"

    # ----------------------------------------------------------------- enter / exit

    def __enter__(self) -> Job:
        try:
            self._enter()
        except BaseException:
            self._teardown()
            raise
        return self

    def _enter(self) -> None:
        self._install_signals()
        if self.task == TRAIN:
            self.decision = self._decide()
            if self.finished_already:
                log.info("%s", self.decision.message)
                return
        if not self.keeps_outputs:
            return
        try:
            os.makedirs(self.output_dir, exist_ok=True)
            if self.is_node_main and self._output_is_staging_area():
                self._clear_output_dir()
            self._open_log()
        except OSError as err:
            reraise_disk_error(err, self.output_dir)
        log.info("job %s: %s rank %d/%d (local %d/%d, node %d/%d), task %s, output %s%s",
                 self.env.job_id, self.env.platform, self.env.global_rank, self.env.world_size,
                 self.env.local_rank, self.env.local_world_size, self.env.node_rank,
                 self.env.num_nodes, self.task, self.output_dir,
                 " → " + self.upload_to if self.upload_to else "")
        if self.decision is not None:
            log.info("%s", self.decision.message)
            if self.decision.checkpoint:
                self.resume_from = self._fetch_resume_checkpoint(self.decision)
        if not self.is_main:
            return
        if self.upload_to:
            self._pusher.start()
        elif not self.train_url:
            log.log(logging.WARNING if self.task in ("train", "eval", "export") else logging.INFO,
                    "train_url is empty: outputs stay in %s only", self.output_dir)
        self._open_record()

    def __exit__(self, exc_type, exc, tb) -> bool:
        # A second SIGTERM during the final upload must not cut it short: the platform's
        # SIGKILL comes soon enough if it is in a hurry.
        if self._old_signals:
            signal.signal(signal.SIGTERM, self._late_sigterm)
        try:
            self._finish(exc_type, exc)
        except BaseException as err:
            if exc is None:
                raise
            # Never mask the error that ended the job.
            log.error("final upload after %s failed: %s: %s", exc_type.__name__,
                      type(err).__name__, obs_sync.mask_credentials(str(err)))
        finally:
            self._teardown()
        return False

    def _finish(self, exc_type, exc) -> None:
        if self.finished_already or not self.keeps_outputs:
            return
        if exc is None:
            status, error = "finished", None
        elif isinstance(exc, (JobInterrupted, KeyboardInterrupt)):
            status, error = "interrupted", str(exc) or exc_type.__name__
        elif isinstance(exc, UserError):
            status, error = "failed", self.describe_path(str(exc))
        else:
            status, error = "failed", "%s: %s" % (exc_type.__name__, self.describe_path(str(exc)))
        ended = time.time()
        if status == "finished":
            log.info("job %s finished in %.1f s", self.env.job_id, ended - self._started)
        else:
            # A UserError ends the console with start.py's one "error: ..." line: this one
            # is for the rank's log file (FILE_ONLY), not a second copy on the console.
            log.error("job %s %s after %.1f s: %s", self.env.job_id, status,
                      ended - self._started, error,
                      extra={FILE_ONLY: isinstance(exc, UserError)})
        durations = dict(self.run.get("durations") or {}, total_s=round(ended - self._started, 3))
        if self._recording:
            with self._run_lock:
                run_record.close_attempt(self.run, status=status, reason=error, ended=ended,
                                         last_step=self.last_step)
                self._write_run(error=error, end_time=run_record.iso(ended), durations=durations)
            self._pusher.stop()
            if self._pusher.failed:
                log.info("%d push(es) failed while running; the final upload sends them now",
                         len(self._pusher.failed))
        if status == "finished":
            # Every rank got past staging long ago (they trained together). Failure markers
            # stay: a rank may still be about to read one; the next launch clears them.
            self._staging.finish()
        failure: Optional[BaseException] = None
        if self._recording and self.upload_to:
            try:
                self._final_upload(durations)
            except Exception as err:
                log.error("final upload to %s failed: %s", self.upload_to,
                          obs_sync.mask_credentials(str(err)))
                failure = err
        if self._log_pusher is not None:
            self._log_pusher.stop()
        self._close_log()
        if self._log_pusher is not None:
            self._log_pusher.send(force=True)
            self._log_pusher = None
        if failure is not None:
            raise failure

    def _final_upload(self, durations: dict) -> None:
        started = time.time()
        obs_sync.sync(self.output_dir, self.upload_to,
                      exclude=UPLOAD_EXCLUDE + ("logs/*", run_record.RECORD_NAME),
                      verb="uploaded outputs", **self.sync_options)
        durations["final_upload_s"] = round(time.time() - started, 3)
        # Checkpoints whose own push failed went up just now: point to them too.
        for kind, (path, mtime_ns, info) in list(self._unpointed.items()):
            self._point(kind, path, mtime_ns, info)
        with self._run_lock:
            self._write_run(durations=durations)
            self._upload_record()

    def _teardown(self) -> None:
        self._pusher.stop()
        if self._log_pusher is not None:
            self._log_pusher.stop()
            self._log_pusher = None
        self._close_log()
        for signum, handler in self._old_signals.items():
            signal.signal(signum, handler)
        self._old_signals = {}
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    # ----------------------------------------------------------------- signals and logs

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread

        def on_sigterm(signum, frame):
            interrupts.deliver(JobInterrupted(signum))

        def on_sigint(signum, frame):
            interrupts.deliver(KeyboardInterrupt())

        self._old_signals[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_sigterm)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._old_signals[signal.SIGINT] = signal.signal(signal.SIGINT, on_sigint)

    @staticmethod
    def _late_sigterm(signum, frame) -> None:
        log.warning("SIGTERM again while uploading outputs: finishing the upload first")

    def _open_log(self) -> None:
        path = os.path.join(self.output_dir, "logs", self.log_name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        remote_log = remote_join(self.upload_to, "logs/" + self.log_name) if self.upload_to \
            else ""
        if remote_log and not os.path.exists(path) and self.task == TRAIN:
            # A restart on a fresh cache carries on the run's log instead of replacing it.
            try:
                if obs_sync.exists(remote_log, retries=self.retries):
                    obs_sync.sync(remote_log, path, incremental=False, threads=1,
                                  retries=self.retries)
            except UserError as err:
                log.warning("could not fetch the earlier log %s: %s", remote_log, err)
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
        if remote_log:
            heartbeat = self.update_run if self.task == TRAIN and self.is_main else None
            self._log_pusher = LogPusher(path, remote_log, every=self.log_every,
                                         retries=self.retries, on_tick=heartbeat)
            self._log_pusher.start()

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

    def training_started(self, step: int) -> None:
        """The loop resumed at ``step`` (it may differ from the decision's when a named
        checkpoint replaced a missing one)."""
        self.last_step = step
        if self._recording:
            with self._run_lock:
                current = self.run.setdefault("attempts", [{}])[-1]
                current["first_step"] = current["last_step"] = step
            self.update_run()

    def push_log(self) -> None:
        """Send this rank's log now (at checkpoints), in the background."""
        if self._log_pusher is not None:
            self._log_pusher.poke()

    # ----------------------------------------------------------------- the run record

    def _read_store(self, rel: str, where: Optional[str] = None, *,
                    strict: bool = True) -> Optional[dict]:
        """A JSON file under ``where`` (default: the record's place, train_url), or None.
        Not JSON: an error when ``strict``, else None."""
        where = where or self.record_url or self.output_dir
        if not obs_sync.is_remote(where):
            return read_json(os.path.join(where, *rel.split("/")))
        url = remote_join(where, rel)
        if not obs_sync.exists(url, retries=self.retries):
            return None
        local = _mirror(self.scratch_dir, "fetched", url)
        obs_sync.sync(url, local, incremental=False, threads=1,
                      retries=self.retries)
        data = read_json(local)
        if data is None and strict:
            raise UserError("%s is not valid JSON: it is not a run record this package wrote; "
                            "use another train_url" % url)
        return data

    def _list_checkpoints(self, where: Optional[str] = None) -> List[str]:
        where = where or self.record_url or self.output_dir
        url = (remote_join(where, run_record.CKPT_DIR) if obs_sync.is_remote(where)
               else os.path.join(where, run_record.CKPT_DIR))
        return sorted(n for n in obs_sync.list_files(url, retries=self.retries)
                      if "/" not in n)

    def _decide(self) -> run_record.Decision:
        where = self.record_url or self.output_dir
        record = self._read_store(run_record.RECORD_NAME)
        if record is not None and record.get("task") not in (None, TRAIN):
            record = None  # an eval/export record of the old layout: not a training run
        train = self.cfg.get("train") or {}
        self._found_ckpts = self._list_checkpoints()
        args = (record, self._found_ckpts, self.run_id, str(train.get("resume") or ""),
                where, int(train.get("max_steps") or 0) or None)
        decision = run_record.decide(*args)
        if decision.action == "refuse":
            changed = self._changed_settings() if record else ""
            raise UserError(run_record.decide(*args, changed=changed).message)
        self._found_record = record
        last = ((record or {}).get("attempts") or [{}])[-1]
        quiet = time.time() - float(last.get("alive") or 0)
        if decision.action == "resume" and last.get("status") == "running" and \
                quiet < max(180.0, 3 * self.log_every):
            log.warning("attempt %s of this run (host %s, job %s) wrote its record %.0f s ago "
                        "and may still be running: two jobs writing one train_url mix their "
                        "checkpoints; if it is still running, stop one of them",
                        last.get("attempt"), last.get("host"), last.get("job_id"), quiet)
        if decision.action == "resume" and record and (record.get("best") or {}).get("path") \
                and run_record.BEST_NAME not in self._found_ckpts:
            log.warning("the run record's best (step %s, metric %s) is missing from %s: best.ckpt "
                        "will be chosen again from later evaluations",
                        record["best"].get("step"), record["best"].get("metric"), where)
        return decision

    def _changed_settings(self) -> str:
        """'optim.lr 0.001 → 0.0005, ...' between train_url's config.yaml and this job's
        settings (only what decides the weights); '' when that cannot be told."""
        import yaml

        where = self.record_url or self.output_dir
        try:
            if obs_sync.is_remote(where):
                local = os.path.join(self.scratch_dir, "fetched", "config.yaml")
                obs_sync.sync(remote_join(where, "config.yaml"), local, incremental=False,
                              threads=1, retries=self.retries)
            else:
                local = os.path.join(where, "config.yaml")
            with open(local) as f:
                theirs = yaml.safe_load(f)
        except (OSError, UserError, yaml.YAMLError):
            return ""
        diffs = run_record.differences(theirs, self.cfg)
        if not diffs:
            return ""
        return "differs from its config.yaml in " + ", ".join(diffs[:5]) + (
            " and %d more" % (len(diffs) - 5) if len(diffs) > 5 else "")

    def _open_record(self) -> None:
        """Rank 0: the run record with this attempt (train), or this task's own record."""
        base = dict(task=self.task, model=self.cfg.get("model"), platform=self.env.platform,
                    launcher=getattr(self.env, "launcher", None),
                    device_target=self.env.device_target, rank_size=self.env.world_size,
                    num_nodes=self.env.num_nodes, job_id=self.env.job_id,
                    data_url=self.data_url, train_url=self.train_url,
                    output_dir=self.output_dir, versions=_versions(), error=None,
                    start_time=run_record.iso(self._started), end_time=None)
        with self._run_lock:
            if self.task == TRAIN:
                self.run = run_record.open_attempt(
                    self._found_record, run_id=self.run_id,
                    fp=run_record.fingerprint(self.cfg, self.env.world_size),
                    decision=self.decision, env=self.env, started=self._started)
                self.last_step = self.decision.step
                base["durations"] = {}
            else:
                self.run = {"status": "running", "durations": {}, "metrics": {}}
            self.run.update(base)
            self._recording = True
            self._write_run()
        self._push_record()

    def update_run(self, **fields) -> None:
        """Merge ``fields`` into the record (rank 0) and push it."""
        if not self._recording:
            return
        with self._run_lock:
            self._write_run(**fields)
        self._push_record()

    def _write_run(self, **fields) -> None:
        self.run.update(fields)
        if self.task == TRAIN and self.run.get("attempts"):
            # A heartbeat: a second copy of the same command can tell this one is alive.
            self.run["attempts"][-1]["alive"] = round(time.time(), 1)
        path = os.path.join(self.output_dir, run_record.RECORD_NAME)
        try:
            write_json(path, self.run)
        except OSError as err:
            reraise_disk_error(err, self.output_dir)

    def _push_record(self) -> None:
        if self.upload_to:
            self._pusher.push(os.path.join(self.output_dir, run_record.RECORD_NAME))

    def _upload_record(self) -> None:
        obs_sync.sync(os.path.join(self.output_dir, run_record.RECORD_NAME),
                      remote_join(self.upload_to, run_record.RECORD_NAME), incremental=False,
                      threads=1, retries=self.retries)

    # ----------------------------------------------------------------- checkpoints

    def checkpoint_saved(self, path: str, *, step: Optional[int] = None,
                         metric: Optional[float] = None) -> None:
        """A checkpoint file was written under output_dir/ckpt: push it, and point the run
        record to it once it is complete in train_url (then prune old ones there)."""
        if not self._recording:
            return
        name = os.path.basename(path)
        kind = "best" if name == run_record.BEST_NAME else "checkpoint"
        st = os.stat(path)
        info = {"path": "%s/%s" % (run_record.CKPT_DIR, name), "size": st.st_size,
                # Hashed before the upload: what the pointer vouches for is what was sent.
                "sha256": sha256_file(path),
                "step": step if kind == "best" else run_record.step_of(name)}
        if kind == "best":
            info["metric"] = metric
        else:
            self.last_step = info["step"]
        with self._run_lock:
            self._unpointed[kind] = (path, st.st_mtime_ns, info)
        if self.upload_to:
            self._pusher.push(path, then=lambda: self._point(kind, path, st.st_mtime_ns, info))
        else:
            self._point(kind, path, st.st_mtime_ns, info)
        self.push_log()

    def _point(self, kind: str, path: str, mtime_ns: int, info: dict) -> None:
        """Make the run record point to a checkpoint that is complete in train_url."""
        try:
            current = os.stat(path)
        except FileNotFoundError:
            return  # pruned (keep_last) before its turn: a newer one is on its way
        if (current.st_size, current.st_mtime_ns) != (info["size"], mtime_ns):
            return  # replaced meanwhile (best.ckpt): the newer version's push points to it
        with self._run_lock:
            if kind == "checkpoint":
                self.run.setdefault("attempts", [{}])[-1]["last_step"] = info["step"]
            self._write_run(**{kind: dict(info, time=run_record.iso(time.time()))})
            if self._unpointed.get(kind, (None,))[0] == path:
                del self._unpointed[kind]
            if self.upload_to:
                self._upload_record()
        if kind == "checkpoint" and self.upload_to and self.keep_last > 0:
            name = os.path.basename(path)
            removed = prune_checkpoints(remote_join(self.upload_to, run_record.CKPT_DIR),
                                        self.keep_last, (name,),
                                        retries=self.retries)
            if removed:
                log.info("removed %s from train_url (train.keep_last=%d)", ", ".join(removed),
                         self.keep_last)

    def _fetch_resume_checkpoint(self, decision: run_record.Decision) -> Optional[str]:
        """The checkpoint the run continues from (and best.ckpt), local, verified."""
        rel = decision.checkpoint
        local = os.path.join(self.output_dir, *rel.split("/"))
        pointer = (self._found_record or {}).get("checkpoint") or {}
        if self.upload_to:
            def fetch() -> dict:
                wanted = [rel]
                if run_record.BEST_NAME in self._found_ckpts:
                    wanted.append(run_record.CKPT_DIR + "/" + run_record.BEST_NAME)
                # The metric history continues too (src/engine/curves.py).
                if obs_sync.exists(remote_join(self.upload_to, METRICS_CSV),
                                   retries=self.retries):
                    wanted.append(METRICS_CSV)
                for item in wanted:
                    obs_sync.sync(remote_join(self.upload_to, item),
                                  os.path.join(self.output_dir, *item.split("/")),
                                  **self.sync_options)
                log.info("fetched %s from %s", " and ".join(wanted), self.upload_to)
                return {"files": wanted}

            # Every rank restores the checkpoint; one copy per node.
            try:
                self._staging.run("resume|%s|%s" % (self.upload_to, rel), rel, fetch)
            except UserError as err:
                if not obs_sync.is_remote(self.upload_to) or "does not exist" not in str(err):
                    raise
        problem = None
        if not os.path.isfile(local):
            problem = "points to %s, which is not there" % rel
        elif pointer.get("path") == rel and pointer.get("sha256") and \
                sha256_file(local) != pointer["sha256"]:
            problem = "points to %s, which differs from what it vouches for (sha256): " \
                      "replaced or damaged" % rel
        if problem is None:
            return local
        explicit = str((self.cfg.get("train") or {}).get("resume") or "")
        if explicit not in ("", "auto"):
            log.warning("the run record in %s %s: starting from train.resume=%s instead",
                        self.record_url or self.output_dir, problem, explicit)
            return None
        raise UserError("the run record in %s %s: name the checkpoint to continue from with "
                        "--train.resume=<.ckpt path or URL>" % (
                            self.record_url or self.output_dir, problem))

    def run_checkpoint(self) -> Optional[str]:
        """For eval/export: the newest complete checkpoint of the run in train_url, fetched
        to a private folder; None when train_url holds none."""
        base = self.train_url or ""
        if not base:
            return None
        # Not a record this package wrote: go by the file names.
        record = self._read_store(run_record.RECORD_NAME, base, strict=False)
        rel = ((record or {}).get("checkpoint") or {}).get("path")
        if not rel:
            newest = run_record.newest_step(self._list_checkpoints(base))
            if newest is None:
                return None
            rel = newest[0]
        if not obs_sync.is_remote(base):
            return os.path.join(base, *rel.split("/"))
        local = os.path.join(self.scratch_dir, "run", *rel.split("/"))
        obs_sync.sync(remote_join(base, rel), local, **self.sync_options)
        self._sources[local] = remote_join(base, rel)  # logs and records name the URL
        return local

    # ----------------------------------------------------------------- outputs

    def _output_is_staging_area(self) -> bool:
        """The local output folder only mirrors a remote train_url (we chose it, the user did
        not): what an earlier launch left there would be uploaded into train_url, so it starts
        empty and takes what it needs from train_url."""
        return (not self.cfg.get("output_dir") and bool(self.record_url)
                and obs_sync.is_remote(self.record_url))

    def _clear_output_dir(self) -> None:
        for name in os.listdir(self.output_dir):
            if name == "logs":
                continue  # other ranks of this node may have opened theirs already
            path = os.path.join(self.output_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)

    def push(self, path: str) -> None:
        """Upload ``path`` (a file under output_dir) to the same place under train_url, in the
        background. Rank 0 only; a no-op where outputs are written to train_url directly."""
        if self._recording and self.upload_to:
            self._pusher.push(path)
        else:
            self._pusher.rel(path)  # still refuse paths outside the output folder

    def wait_pushes(self) -> None:
        """Block until every push queued so far has been attempted."""
        self._pusher.wait()

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
        """The local folder holding data_url's contents, mirrored once per node if remote."""
        if not self.data_url:
            raise UserError("no data to read: set --data_url=obs://... or a local folder")
        if not obs_sync.is_remote(self.data_url) and not os.path.exists(self.data_url):
            raise UserError("data_url %s does not exist: set --data_url=obs://... or a local "
                            "folder" % self.data_url)
        started = time.time()
        self.data_dir = self.stage(self.data_url, "data")
        if self._recording:
            durations = dict(self.run.get("durations") or {},
                             stage_s=round(time.time() - started, 3))
            self.update_run(data_dir=self.data_dir, durations=durations)
        return self.data_dir

    def stage(self, url: str, kind: str = "files") -> str:
        """Local path of ``url`` (a file or folder): a local path as it is (it must exist), a
        remote one mirrored to ``<cache_dir>/<kind>/bucket/key`` once per node."""
        if not obs_sync.is_remote(url):
            if not os.path.exists(url):
                raise UserError("%s does not exist" % url)
            return os.path.abspath(url)
        dest = _mirror(self.cache_dir, kind, url)

        def copy() -> dict:
            try:
                report = obs_sync.sync(url, dest, delete=True, verb="staged",
                                       **self.sync_options)
            except OSError as err:
                reraise_disk_error(err, dest)
            return {"files": report.files, "skipped": report.skipped}

        self._staging.run("%s|%s" % (kind, url), url, copy)
        self._sources[dest] = url
        return dest

    def describe_path(self, text: str) -> str:
        """``text`` with local cache copies named by the URL they came from: errors about a
        data file should name the object the user must fix, not the copy."""
        for local, url in sorted(self._sources.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(local + os.sep, url.rstrip("/") + "/").replace(local, url)
        return text
