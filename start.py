#!/usr/bin/env python
"""Boot file of the training job, on ModelArts and locally.

    python start.py [--config=configs/aecrnet_demo.yaml] [--task=train] [--key=value ...]

Tasks: train (default), eval, export, infer, preprocess, synth, plan. Every config key is an override,
dotted (--train.max_steps=100), with `__` for each dot (--train__max_steps=100: ModelArts'
hyperparameter form allows no dots) or by its last part when that names one key
(--max_steps=100). `-c FILE` and `--config_path=FILE` mean --config=FILE; the file may be an
obs:// or s3:// URL or a path inside data_url. `--ckpt_url=URL` is the checkpoint to start
from (train: net_weights) or to evaluate/export (eval.checkpoint). `--task=plan` checks the
job without downloading data (data_url, every URL the config names, the data set layouts,
every value), prints what it would do with a `checks` list and exits non-zero if one failed.

The sequence is parse → config (src/config_source.py, src/config.py) → value checks →
environment → checks of what the task reads (src/preflight.py) → job (staging, outputs) →
device context → engine; each step is its own module, this file only puts them in order.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # ModelArts starts the boot file from another working directory
    sys.path.insert(0, HERE)

from src.errors import UserError  # noqa: E402

TASKS = ("train", "eval", "export", "infer", "preprocess", "synth", "plan")
DEFAULT_CONFIG = os.path.join("configs", "aecrnet_demo.yaml")
# Arguments that ModelArts or its launchers add on their own; they carry nothing we need.
PLATFORM_ARGS = frozenset({
    "init_method", "num_gpus", "world_size", "rank", "local_rank", "dist_url", "dist_backend",
    "nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port", "rank_table_file",
    "device_num", "device_id", "run_distribute",
})
# This file's own arguments: an unknown argument close to one of these gets a "did you mean"
# (config keys get theirs from src/config.py).
OWN_ARGS = ("task", "config", "config_path", "ckpt_url", "help")
# Tasks that start from weights they train (net_weights); every other model task reads
# eval.checkpoint, and the tasks that build no model ignore --ckpt_url.
CKPT_TO_NET_WEIGHTS = ("train", "plan")
NO_MODEL_TASKS = ("synth", "preprocess")
# Tasks that stage data_url: the plan's checks run before they stage anything.
CHECKED_TASKS = ("train", "eval")

log = logging.getLogger("start")


class Invocation:
    """What the command line asked for, before anything is loaded."""

    def __init__(self, task: str, config: str, overrides: list, ignored: list,
                 ckpt_url: str = ""):
        self.task = task
        self.config = config  # as given ('' = the default config)
        self.overrides = overrides
        self.ignored = ignored
        self.ckpt_url = ckpt_url

    def override_value(self, key: str) -> str:
        """The last value given for the top-level `key` on the command line ('' if none)."""
        found = ""
        for item in self.overrides:
            name, _, value = item.partition("=")
            if name.replace("__", ".") == key:
                found = value
        return found

    @property
    def ckpt_key(self) -> str:
        """The config key --ckpt_url sets for this task ('' when it sets none)."""
        if not self.ckpt_url or self.task in NO_MODEL_TASKS:
            return ""
        return "net_weights" if self.task in CKPT_TO_NET_WEIGHTS else "eval.checkpoint"

    def routed_overrides(self) -> list:
        """The overrides with --ckpt_url routed to the key this task reads; first, so that an
        explicit --net_weights or --eval.checkpoint wins."""
        if not self.ckpt_key:
            return list(self.overrides)
        return ["%s=%s" % (self.ckpt_key, self.ckpt_url)] + list(self.overrides)


USAGE = " ".join(__doc__.split("\n\n")[1].split())  # one line, for error messages


def parse_argv(argv: list) -> Invocation:
    """Split argv into task, config file and `key=value` overrides (`--k=v` and `--k v`)."""
    task, config, overrides, ignored, ckpt_url = "train", "", [], [], ""
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        if arg == "-c" or arg.startswith("-c="):  # the short spelling other trainers use
            arg = "--config" + arg[2:]
        if not arg.startswith("--") or len(arg) == 2:
            raise UserError("unexpected argument %r: arguments are --name=value "
                            "(usage: %s)" % (arg, USAGE))
        name, sep, value = arg[2:].partition("=")
        if not sep:
            if i < len(argv) and not argv[i].startswith("--"):
                value = argv[i]
                i += 1
            else:
                value = "true"  # a bare flag
        name = name.replace("-", "_")
        if name == "task":
            if value not in TASKS:
                raise UserError("--task=%s is not a task; choose one of %s"
                                % (value, ", ".join(TASKS)))
            task = value
        elif name in ("config", "config_path"):
            config = value
        elif name == "ckpt_url":  # ModelZoo's name for the checkpoint on OBS
            ckpt_url = value
        elif name in PLATFORM_ARGS:
            ignored.append("--%s=%s" % (name, value))
        else:
            close = difflib.get_close_matches(name, OWN_ARGS, n=1, cutoff=0.75)
            if close and "." not in name:
                raise UserError("unknown argument --%s (did you mean --%s?)" % (name, close[0]))
            overrides.append("%s=%s" % (name, value))
    return Invocation(task, config, overrides, ignored, ckpt_url)


def setup_console(rank: int, stream=None) -> None:
    """Rank 0 talks on the console; the other ranks only warn there (their file logs say all)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s [rank " + str(rank) + "] %(levelname)s %(message)s", "%H:%M:%S"))
    handler.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    # Records the job marks for its log file only (modelarts/job.py FILE_ONLY) would repeat
    # what the console says anyway.
    handler.addFilter(lambda record: not getattr(record, "file_only", False))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def main(argv=None) -> int:
    from modelarts import launch_guard
    from modelarts.context import apply_context, plan_context
    from modelarts.environment import detect_environment, msrun_launch
    from src.config import get_path, load_config

    job = None
    try:
        inv = parse_argv(sys.argv[1:] if argv is None else list(argv))
        # `plan` prints JSON on stdout for tools to read: its log lines go to stderr.
        console = sys.stderr if inv.task == "plan" else None
        setup_console(0, console)
        from src.config_source import locate_config
        source = locate_config(inv.config, inv.override_value("data_url"), HERE, DEFAULT_CONFIG)
        cfg = load_config(source.path, inv.overrides)
        if inv.ckpt_key:
            if get_path(cfg, inv.ckpt_key, None) is None:
                raise UserError("--ckpt_url: model %s has no %s to start from; to continue a "
                                "run from a checkpoint use --train.resume=%s"
                                % (cfg["model"], inv.ckpt_key, inv.ckpt_url))
            cfg = load_config(source.path, inv.routed_overrides())
        from src import preflight
        from src.checks import check_values
        if inv.task != "plan":  # plan lists every problem with the other checks
            check_values(cfg, inv.task)  # ranges, before any staging or MindSpore import
        env = detect_environment(os.environ, platform=cfg["platform"],
                                 device_target=cfg["device_target"],
                                 rank_table_timeout=cfg["rank_table_timeout"])
        # `plan` is a one-process check: it says everything, whatever rank it pretends to be.
        setup_console(0 if inv.task == "plan" else env.global_rank, console)
        for arg in inv.ignored:
            log.info("ignoring platform argument %s", arg)
        if inv.ckpt_key:
            log.info("--ckpt_url=%s sets %s", inv.ckpt_url, inv.ckpt_key)
        plan = plan_context(env, cfg["mode"])
        if env.is_scheduler and inv.task != "plan":
            # msrun starts this file once more as its scheduler: it serves the cluster inside
            # communication.init() until the workers are done, and has no job of its own. A
            # watcher process ends it early when a worker fails before joining the cluster.
            launch_guard.start_watcher(msrun_launch(os.environ))
            apply_context(plan)
            return 0
        if inv.task == "plan":
            from src.engine.runner import describe_plan
            checks = preflight.run_checks(cfg, "plan", config_source=source)
            described = describe_plan(cfg, env, plan)
            described.update(config_file=source.name, checks=preflight.as_json(checks))
            print(json.dumps(described, indent=2, sort_keys=True))
            preflight.raise_failures(checks)
            return 0
        if inv.task in CHECKED_TASKS:
            # What the job reads exists, before anything is staged or a device is taken.
            preflight.raise_failures(preflight.run_checks(cfg, inv.task, config_source=source,
                                                          values=False))
        from modelarts.job import Job
        from src.engine.runner import run_task
        job = Job(cfg, env, inv.task)
        with job:
            status = run_task(inv.task, cfg, env, plan, job)
    except UserError as err:
        logging.getLogger().handlers[:] = []
        # Errors about staged files name the obs:// object, not the cache copy.
        message = job.describe_path(str(err)) if job is not None else str(err)
        for line in getattr(err, "lines", None) or [message]:  # failed checks: one line each
            print("error: %s" % line, file=sys.stderr)
        _report_to_launcher(2, message)
        return 2
    except BaseException as exc:
        status = _exit_status(exc)
        if status:
            _report_to_launcher(status, "%s: %s" % (type(exc).__name__, exc))
        raise
    if status:
        _report_to_launcher(status, "exit status %d (see this rank's log)" % status)
    return status


def _exit_status(exc: BaseException) -> int:
    """The status the process will end with when this exception leaves main()."""
    if isinstance(exc, SystemExit):
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 130 if isinstance(exc, KeyboardInterrupt) else 1


def _report_to_launcher(status: int, error: str) -> None:
    """Every failure passes here. An msrun worker that has not joined the cluster yet tells
    msrun's scheduler, which would otherwise wait for the cluster time-out before msrun can
    return (modelarts/launch_guard.py); anywhere else this does nothing."""
    from modelarts import launch_guard
    from modelarts.environment import msrun_launch

    launch_guard.report_failure(msrun_launch(os.environ), status, error)


if __name__ == "__main__":
    sys.exit(main())
