"""Which platform launched this process and which rank it is: plain data, decided once.

One small class per launcher, in the spirit of Lightning's `ClusterEnvironment`: each has
`detect(environ)` and `build(environ, ...)`. `detect_environment` walks them in order
(ModelArts, msrun, local fallback) or takes the one the config forces, and returns a frozen
`JobEnvironment`. Training code receives that object and never reads RANK_ID, DEVICE_ID or
MS_* itself: this module is the only place that does.

Two questions are kept apart because on ModelArts with msrun both sets of variables exist:
- **where** the job runs (`on_modelarts`, from the MA_* variables) decides storage: moxing
  and /cache exist only inside ModelArts;
- **who launched the ranks** (`launcher`: rank_table | msrun | none) decides the ranks:
  msrun's MS_* variables when msrun started the process, else the HCCL rank table plus the
  RANK_* / DEVICE_ID variables ModelArts' Ascend engine exports.

Device ids are never used as global ranks (pain point 5 in PLATFORM.md): on a multi-node job
device 3 of node 1 is rank 11, not rank 3.

msrun facts used here were read from MindSpore's own launcher (2.8,
mindspore/parallel/cluster/process_entity/_api.py) and checked with a 2-worker CPU run:
workers get MS_ROLE=MS_WORKER, MS_WORKER_NUM, MS_SCHED_HOST, MS_SCHED_PORT, MS_NODE_ID (the
rank, when msrun knows it: one node, or --node_rank given), RANK_ID (= MS_NODE_ID),
RANK_SIZE (= worker_num) and DEVICE_ID (= the worker's index on its node). msrun also starts
the *same script* once as the scheduler (MS_ROLE=MS_SCHED, RANK_ID=0, no MS_NODE_ID): that
process must not act as rank 0; its `mindspore.communication.init()` serves the cluster and
never returns. It is reported as `role="scheduler"`.

Pure: reads only the mapping it is given (and the rank table file); never imports MindSpore.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Type

from modelarts import rank_table
from modelarts.rank_table import env_int
from src.errors import UserError, did_you_mean

logger = logging.getLogger(__name__)

PLATFORMS = ("modelarts", "msrun", "local")
DEVICE_TARGETS = ("Ascend", "GPU", "CPU")
DEFAULT_RANK_TABLE_TIMEOUT = 600.0

#: Variables only a ModelArts job (or notebook) has: the documented MA_* job environment and
#: the legacy V1 (DLS_*) names. VC_* alone is not enough: any Volcano cluster sets those, and
#: moxing exists only inside ModelArts images.
MODELARTS_VARIABLES = ("MA_JOB_DIR", "MA_HOME", "MA_MOUNT_PATH", "MA_LOG_DIR", "MA_CURRENT_IP",
                       "MA_CURRENT_INSTANCE_NAME", "MA_NUM_HOSTS", "MA_NUM_GPUS",
                       "DLS_TASK_INDEX", "DLS_TASK_NUMBER")
#: Variables that say an Ascend NPU is attached (set by ModelArts' Ascend engine and by the
#: Ascend container runtime).
ASCEND_VARIABLES = ("RANK_TABLE_FILE", "ASCEND_DEVICE_ID", "ASCEND_VISIBLE_DEVICES")
#: Number of nodes of a ModelArts job, newest name first.
HOST_COUNT_VARIABLES = ("MA_NUM_HOSTS", "VC_WORKER_NUM", "DLS_TASK_NUMBER")


def is_modelarts(environ: Optional[Mapping[str, str]] = None) -> bool:
    """True inside a ModelArts job: moxing and /cache are there. The storage layer picks its
    backend with this; it is independent of which launcher started the ranks."""
    environ = os.environ if environ is None else environ
    return any(environ.get(name) for name in MODELARTS_VARIABLES)


@dataclass(frozen=True)
class JobEnvironment:
    """Who and where this process is. Ranks are global across the job; `local_*` count the
    processes on this node; `device_id` is the logical id MindSpore's context takes."""
    platform: str                 # modelarts | msrun | local: the class that decided the ranks
    world_size: int
    global_rank: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    device_id: int
    device_target: str            # Ascend | GPU | CPU
    job_id: str                   # the same on every rank of the job
    rank_table_file: Optional[str]  # resolved table file when the ranks came from one
    launcher: str = "none"        # rank_table | msrun | none
    role: str = "worker"          # worker | scheduler (msrun's extra process, never trains)
    on_modelarts: bool = False    # storage: moxing / ModelArts paths available

    def __post_init__(self):
        # Builders raise UserErrors naming the variables; these are the invariants behind them.
        if self.platform not in PLATFORMS:
            raise ValueError(f"platform {self.platform!r} not in {PLATFORMS}")
        if self.device_target not in DEVICE_TARGETS:
            raise ValueError(f"device_target {self.device_target!r} not in {DEVICE_TARGETS}")
        if self.role not in ("worker", "scheduler"):
            raise ValueError(f"role {self.role!r}")
        for name, value, size in (("global_rank", self.global_rank, self.world_size),
                                  ("local_rank", self.local_rank, self.local_world_size),
                                  ("node_rank", self.node_rank, self.num_nodes)):
            if not 0 <= value < size:
                raise ValueError(f"{name}={value} outside 0..{size - 1}")
        if self.local_world_size > self.world_size or self.num_nodes > self.world_size:
            raise ValueError(f"{self.num_nodes} nodes × {self.local_world_size} local ranks "
                             f"do not fit world_size={self.world_size}")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_scheduler(self) -> bool:
        return self.role == "scheduler"

    @property
    def is_main(self) -> bool:
        """The one process that writes checkpoints, run.json and uploads."""
        return self.role == "worker" and self.global_rank == 0

    @property
    def is_node_main(self) -> bool:
        """The one process per node that stages inputs."""
        return self.role == "worker" and self.local_rank == 0

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def _device_target(requested: str, auto: str) -> str:
    if requested is None or str(requested).lower() == "auto":
        return auto
    for name in DEVICE_TARGETS:
        if str(requested).lower() == name.lower():
            return name
    raise UserError(f"device_target={requested!r} is not one of auto, "
                    f"{', '.join(DEVICE_TARGETS)}{did_you_mean(str(requested), DEVICE_TARGETS)}")


def _has_ascend(environ: Mapping[str, str]) -> bool:
    return any(environ.get(name) for name in ASCEND_VARIABLES)


def _host_count(environ: Mapping[str, str]) -> Optional[Tuple[str, int]]:
    for name in HOST_COUNT_VARIABLES:
        value = env_int(environ, name)
        if value is not None:
            if value < 1:
                raise UserError(f"environment variable {name}={value} must be at least 1")
            return name, value
    return None


def _job_id(environ: Mapping[str, str], fallback: str) -> str:
    return environ.get("JOB_ID") or fallback


def _modelarts_job_id(environ: Mapping[str, str]) -> str:
    # Pod names are "<job name>-<instance number>": without the number they name the job.
    pod = environ.get("MA_CURRENT_INSTANCE_NAME", "")
    return _job_id(environ, re.sub(r"-?\d+$", "", pod) or "modelarts")


def _check_single(environ: Mapping[str, str], why: str) -> None:
    """Without a launcher the process is alone: RANK_SIZE/RANK_ID, when set, must agree."""
    size = env_int(environ, "RANK_SIZE")
    if size is not None and size != 1:
        raise UserError(f"RANK_SIZE={size} but {why}: a multi-device job needs a rank table "
                        f"(RANK_TABLE_FILE) or msrun")
    rank = env_int(environ, "RANK_ID")
    if rank is not None and rank != 0:
        raise UserError(f"RANK_ID={rank} but {why}, so this process is the only rank (0)")


# --------------------------------------------------------------------------- msrun ranks


@dataclass(frozen=True)
class _Ranks:
    world_size: int
    global_rank: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    device_id: int
    role: str


_LOOPBACK = ("localhost", "::1")


def _msrun_ranks(environ: Mapping[str, str]) -> _Ranks:
    """Ranks as msrun (MindSpore's dynamic-cluster launcher) assigns them."""
    raw_role = environ.get("MS_ROLE", "")
    roles = {"MS_WORKER": "worker", "MS_SCHED": "scheduler"}
    if raw_role not in roles:
        raise UserError(f"MS_ROLE={raw_role!r} is not supported: data-parallel jobs run "
                        f"msrun's MS_WORKER processes (and its MS_SCHED scheduler)")
    role = roles[raw_role]
    world = env_int(environ, "MS_WORKER_NUM")
    if world is None:
        raise UserError(f"MS_ROLE={raw_role} but MS_WORKER_NUM is not set: start the job with "
                        f"msrun --worker_num=N")
    if world < 1:
        raise UserError(f"MS_WORKER_NUM={world} must be at least 1")
    size = env_int(environ, "RANK_SIZE")
    if size is not None and size != world:
        raise UserError(f"RANK_SIZE={size} but MS_WORKER_NUM={world}")
    if role == "scheduler":
        # The scheduler only serves the cluster inside init(); give it neutral coordinates.
        return _Ranks(world, 0, 0, world, 0, 1, 0, role)

    rank = env_int(environ, "RANK_ID")
    node_id = environ.get("MS_NODE_ID", "").strip()
    if node_id.isdigit():
        if rank is None:
            rank = int(node_id)
        elif rank != int(node_id):
            raise UserError(f"RANK_ID={rank} but MS_NODE_ID={node_id}: msrun sets both to the "
                            f"worker's rank; unset the stale RANK_ID")
    if rank is None:
        raise UserError("msrun did not give this worker a rank (no RANK_ID, MS_NODE_ID is "
                        f"{node_id or 'unset'}): on several nodes pass --node_rank to msrun")
    if not 0 <= rank < world:
        raise UserError(f"RANK_ID={rank} but MS_WORKER_NUM={world} (ranks 0..{world - 1})")

    local_world = _msrun_local_world(environ, world)
    local = rank % local_world
    device_id = env_int(environ, "DEVICE_ID")
    return _Ranks(world, rank, local, local_world, rank // local_world, world // local_world,
                  local if device_id is None else device_id, role)


def _msrun_local_world(environ: Mapping[str, str], world: int) -> int:
    """Workers per node. msrun numbers ranks node_rank × local_worker_num + index, so every
    node runs the same count; it does not export that count, so take it from MS_LOCAL_WORKER
    when a launcher script sets it, else from the platform's node count, else one node when
    the scheduler is on this machine's loopback."""
    local = env_int(environ, "MS_LOCAL_WORKER")
    source = f"MS_LOCAL_WORKER={local}"
    if local is None:
        hosts = _host_count(environ)
        if hosts is not None:
            name, count = hosts
            if world % count:
                raise UserError(f"MS_WORKER_NUM={world} workers do not split evenly over "
                                f"{name}={count} nodes")
            local, source = world // count, f"{name}={count}"
        else:
            host = environ.get("MS_SCHED_HOST", "127.0.0.1").strip()
            if not (host.startswith("127.") or host in _LOOPBACK):
                raise UserError(f"msrun scheduler MS_SCHED_HOST={host} may be on another node and "
                                f"nothing says how many workers run on this one: export "
                                f"MS_LOCAL_WORKER=<msrun --local_worker_num> before msrun")
            local, source = world, "a single node (scheduler on loopback)"
    if local < 1 or world % local:
        raise UserError(f"{source} does not divide MS_WORKER_NUM={world} into equal nodes")
    return local


# --------------------------------------------------------------------------- msrun launch

#: A folder every node of a multi-node msrun launch mounts (e.g. SFS): failure reports of
#: workers on other nodes then reach the scheduler too. Unset: the node's temp folder.
LAUNCH_GUARD_DIR_VARIABLE = "LAUNCH_GUARD_DIR"


@dataclass(frozen=True)
class MsrunLaunch:
    """What ties the processes of one msrun launch together, for `modelarts.launch_guard`:
    the scheduler's address (the same in every process of the launch) and this process's
    part in it."""
    role: str                   # worker | scheduler
    sched_host: str
    sched_port: str
    rank: Optional[int]         # None when msrun leaves the rank to init() (no --node_rank)
    guard_dir: Optional[str]    # LAUNCH_GUARD_DIR, when set


def msrun_launch(environ: Optional[Mapping[str, str]] = None) -> Optional[MsrunLaunch]:
    """This process's msrun launch, or None when msrun did not start it. Lenient on purpose:
    it is read on the way out of a failed worker, whose variables may be what failed."""
    environ = os.environ if environ is None else environ
    role = {"MS_WORKER": "worker", "MS_SCHED": "scheduler"}.get(environ.get("MS_ROLE", ""))
    port = environ.get("MS_SCHED_PORT", "").strip()
    if role is None or not port:
        return None
    # Only MS_NODE_ID: without it a worker inherits the RANK_ID=0 msrun exported for its
    # scheduler.
    node_id = environ.get("MS_NODE_ID", "").strip()
    rank = int(node_id) if role == "worker" and node_id.isdigit() else None
    return MsrunLaunch(role=role, sched_host=environ.get("MS_SCHED_HOST", "").strip() or
                       "127.0.0.1", sched_port=port, rank=rank,
                       guard_dir=environ.get(LAUNCH_GUARD_DIR_VARIABLE) or None)


# --------------------------------------------------------------------------- environments


class Environment:
    """One launcher. `detect` says whether its variables are present; `build` reads them."""
    name = ""
    missing = ""   # the error when the config forces this platform but detect() is False

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        raise NotImplementedError

    @classmethod
    def build(cls, environ: Mapping[str, str], device_target: str = "auto",
              rank_table_timeout: float = DEFAULT_RANK_TABLE_TIMEOUT) -> JobEnvironment:
        raise NotImplementedError


class ModelArtsEnvironment(Environment):
    """A ModelArts training job (or any rank-table launch on Ascend).

    Ranks come from msrun when it started the process (MS_ROLE set: ModelArts' msrun boot
    mode), else from the HCCL rank table in RANK_TABLE_FILE (the classic Ascend engine, one
    process per card), else the process is alone (a 1-card or CPU job)."""
    name = "modelarts"
    missing = (f"none of RANK_TABLE_FILE, {', '.join(MODELARTS_VARIABLES)} is set (run it as "
               f"a ModelArts training job)")

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        return is_modelarts(environ) or bool(environ.get("RANK_TABLE_FILE"))

    @classmethod
    def build(cls, environ: Mapping[str, str], device_target: str = "auto",
              rank_table_timeout: float = DEFAULT_RANK_TABLE_TIMEOUT) -> JobEnvironment:
        common = dict(platform=cls.name, job_id=_modelarts_job_id(environ),
                      on_modelarts=is_modelarts(environ))
        if environ.get("MS_ROLE"):
            r = _msrun_ranks(environ)
            return JobEnvironment(
                world_size=r.world_size, global_rank=r.global_rank, local_rank=r.local_rank,
                local_world_size=r.local_world_size, node_rank=r.node_rank,
                num_nodes=r.num_nodes, device_id=r.device_id,
                device_target=_device_target(device_target, cls._auto_device(environ)),
                rank_table_file=None, launcher="msrun", role=r.role, **common)
        if environ.get("RANK_TABLE_FILE"):
            table = rank_table.wait_completed(environ["RANK_TABLE_FILE"], rank_table_timeout)
            place = rank_table.locate(table, environ)
            return JobEnvironment(
                world_size=place.rank_size, global_rank=place.rank.rank_id,
                local_rank=place.rank.local_rank, local_world_size=place.local_world_size,
                node_rank=place.rank.node_rank, num_nodes=place.num_nodes,
                device_id=place.device_id,
                device_target=_device_target(device_target, "Ascend"),
                rank_table_file=table.path, launcher="rank_table", **common)
        _check_single(environ, "neither RANK_TABLE_FILE nor msrun's MS_ROLE is set")
        device_id = env_int(environ, "ASCEND_DEVICE_ID")
        if device_id is None:
            device_id = env_int(environ, "DEVICE_ID")
        return JobEnvironment(
            world_size=1, global_rank=0, local_rank=0, local_world_size=1, node_rank=0,
            num_nodes=1, device_id=device_id or 0,
            device_target=_device_target(device_target, cls._auto_device(environ)),
            rank_table_file=None, launcher="none", **common)

    @staticmethod
    def _auto_device(environ: Mapping[str, str]) -> str:
        if _has_ascend(environ):
            return "Ascend"
        gpus = env_int(environ, "MA_NUM_GPUS")
        return "GPU" if gpus is not None and gpus > 0 else "CPU"


class MsrunEnvironment(Environment):
    """Processes started by MindSpore's `msrun` outside ModelArts (e.g. local CPU runs)."""
    name = "msrun"
    missing = "MS_ROLE is not set (start the job with msrun --worker_num=N ...)"

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        return bool(environ.get("MS_ROLE"))

    @classmethod
    def build(cls, environ: Mapping[str, str], device_target: str = "auto",
              rank_table_timeout: float = DEFAULT_RANK_TABLE_TIMEOUT) -> JobEnvironment:
        r = _msrun_ranks(environ)
        sched = f"{environ.get('MS_SCHED_HOST', 'localhost')}-{environ.get('MS_SCHED_PORT', '')}"
        return JobEnvironment(
            platform=cls.name, world_size=r.world_size, global_rank=r.global_rank,
            local_rank=r.local_rank, local_world_size=r.local_world_size, node_rank=r.node_rank,
            num_nodes=r.num_nodes, device_id=r.device_id,
            device_target=_device_target(device_target, "CPU"),
            job_id=_job_id(environ, "msrun-" + sched.rstrip("-")), rank_table_file=None,
            launcher="msrun", role=r.role, on_modelarts=is_modelarts(environ))


class LocalEnvironment(Environment):
    """The fallback: one process, no launcher. RANK_* variables are not read here: a stale
    RANK_ID in a developer's shell must not turn a local run into rank 5 of nothing."""
    name = "local"

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        return True

    @classmethod
    def build(cls, environ: Mapping[str, str], device_target: str = "auto",
              rank_table_timeout: float = DEFAULT_RANK_TABLE_TIMEOUT) -> JobEnvironment:
        device_id = env_int(environ, "DEVICE_ID")
        return JobEnvironment(
            platform=cls.name, world_size=1, global_rank=0, local_rank=0, local_world_size=1,
            node_rank=0, num_nodes=1, device_id=device_id or 0,
            device_target=_device_target(device_target, "CPU"),
            job_id=_job_id(environ, "local"), rank_table_file=None, launcher="none",
            on_modelarts=is_modelarts(environ))


#: Detection order: ModelArts first (it also handles msrun inside ModelArts), local last.
ENVIRONMENTS: Tuple[Type[Environment], ...] = (ModelArtsEnvironment, MsrunEnvironment,
                                               LocalEnvironment)


def detect_environment(environ: Optional[Mapping[str, str]] = None, platform: str = "auto",
                       device_target: str = "auto", *,
                       rank_table_timeout: float = DEFAULT_RANK_TABLE_TIMEOUT) -> JobEnvironment:
    """The JobEnvironment of this process. `platform` (auto | modelarts | msrun | local) forces
    one environment class; `device_target` (auto | Ascend | GPU | CPU) overrides the device.
    `environ` defaults to os.environ; nothing else is read except the rank table file."""
    environ = dict(os.environ if environ is None else environ)
    choice = str(platform or "auto").lower()
    if choice == "auto":
        cls = next(c for c in ENVIRONMENTS if c.detect(environ))
    else:
        by_name = {c.name: c for c in ENVIRONMENTS}
        if choice not in by_name:
            raise UserError(f"platform={platform!r} is not one of auto, {', '.join(PLATFORMS)}"
                            f"{did_you_mean(choice, PLATFORMS)}")
        cls = by_name[choice]
        if not cls.detect(environ):
            raise UserError(f"platform={choice} but {cls.missing}; or use platform=auto")
    env = cls.build(environ, device_target=device_target, rank_table_timeout=rank_table_timeout)
    logger.debug("environment: %s", env)
    return env
