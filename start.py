#!/usr/bin/env python
"""Boot file of the training job, on ModelArts and locally.

    python start.py [--config=configs/aecrnet_demo.yaml] [--task=train] [--key=value ...]

Tasks: train (default), eval, export, infer, preprocess, synth, plan. Every config key is an override,
dotted (--train.max_steps=100), with `__` for each dot (--train__max_steps=100: ModelArts'
hyperparameter form allows no dots) or by its last part when that names one key
(--max_steps=100). `-c FILE` and `--config_path=FILE` mean --config=FILE. `--task=plan`
prints what the job would do and exits.

The sequence is parse → environment → job (staging, outputs) → device context → engine; each
step is its own module, this file only puts them in order.
"""
from __future__ import annotations

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
    "ckpt_url", "device_num", "device_id", "run_distribute",
})

log = logging.getLogger("start")


class Invocation:
    """What the command line asked for, before anything is loaded."""

    def __init__(self, task: str, config: str, overrides: list, ignored: list):
        self.task = task
        self.config = config
        self.overrides = overrides
        self.ignored = ignored


USAGE = __doc__.split("\n\n")[1].strip()


def parse_argv(argv: list) -> Invocation:
    """Split argv into task, config file and `key=value` overrides (`--k=v` and `--k v`)."""
    task, config, overrides, ignored = "train", "", [], []
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
        elif name in PLATFORM_ARGS:
            ignored.append("--%s=%s" % (name, value))
        else:
            overrides.append("%s=%s" % (name, value))
    config = config or DEFAULT_CONFIG
    if not os.path.isabs(config) and not os.path.exists(config):
        config = os.path.join(HERE, config)  # relative to the code directory, as on ModelArts
    return Invocation(task, config, overrides, ignored)


def setup_console(rank: int, stream=None) -> None:
    """Rank 0 talks on the console; the other ranks only warn there (their file logs say all)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s [rank " + str(rank) + "] %(levelname)s %(message)s", "%H:%M:%S"))
    handler.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def main(argv=None) -> int:
    from modelarts import launch_guard
    from modelarts.context import apply_context, plan_context
    from modelarts.environment import detect_environment, msrun_launch
    from src.config import load_config

    job = None
    try:
        inv = parse_argv(sys.argv[1:] if argv is None else list(argv))
        # `plan` prints JSON on stdout for tools to read: its log lines go to stderr.
        console = sys.stderr if inv.task == "plan" else None
        setup_console(0, console)
        cfg = load_config(inv.config, inv.overrides)
        from src.checks import check_values
        check_values(cfg, inv.task)  # ranges, before any staging or MindSpore import
        env = detect_environment(os.environ, platform=cfg["platform"],
                                 device_target=cfg["device_target"],
                                 rank_table_timeout=cfg["rank_table_timeout"])
        # `plan` is a one-process check: it says everything, whatever rank it pretends to be.
        setup_console(0 if inv.task == "plan" else env.global_rank, console)
        for arg in inv.ignored:
            log.info("ignoring platform argument %s", arg)
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
            print(json.dumps(describe_plan(cfg, env, plan), indent=2, sort_keys=True))
            return 0
        from modelarts.job import Job
        from src.engine.runner import run_task
        job = Job(cfg, env, inv.task)
        with job:
            status = run_task(inv.task, cfg, env, plan, job)
    except UserError as err:
        logging.getLogger().handlers[:] = []
        # Errors about staged files name the obs:// object, not the cache copy.
        message = job.describe_path(str(err)) if job is not None else str(err)
        print("error: %s" % message, file=sys.stderr)
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
