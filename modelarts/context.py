"""The MindSpore device context: planned as plain data, applied in one place.

`plan_context(env, mode)` turns a JobEnvironment into a `ContextPlan` (pure, tested without
MindSpore, printed by `start.py --task plan`). `apply_context(plan)` is the only code in the
project that calls `ms.set_context`, `ms.set_device`, `mindspore.communication.init` and
`ms.set_auto_parallel_context`; MindSpore is imported inside it.

MindSpore versions: the ModelArts image runs 2.2, local development 2.8. 2.2 selects the device
with `ms.set_context(device_target=..., device_id=...)`; from 2.5 on that form logs a
deprecation warning on every run and `ms.set_device(target, id)` replaces it. `apply_context`
uses `ms.set_device` when it exists and the 2.2 form otherwise, so both stay warning-free.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

from modelarts.environment import JobEnvironment
from src.errors import UserError, did_you_mean

logger = logging.getLogger(__name__)

MODES = ("graph", "pynative")
STAND_ALONE = "stand_alone"
DATA_PARALLEL = "data_parallel"


@dataclass(frozen=True)
class ContextPlan:
    device_target: str             # Ascend | GPU | CPU
    device_id: Optional[int]       # logical device; None on CPU (there is nothing to pick)
    mode: str                      # graph | pynative
    parallel_mode: str             # stand_alone | data_parallel
    gradients_mean: bool
    device_num: int
    init_communication: bool
    num_shards: int                # data sharding: world size ...
    shard_id: int                  # ... and this process's global rank (never its device id)
    rank_table_file: Optional[str] = None   # exported for HCCL when the ranks came from a table
    role: str = "worker"           # scheduler: msrun's extra process, init() is all it does

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def plan_context(env: JobEnvironment, mode: str = "graph") -> ContextPlan:
    """Data parallel over all ranks when there is more than one, stand-alone otherwise."""
    key = str(mode).lower()
    if key not in MODES:
        raise UserError(f"mode={mode!r} is not one of {', '.join(MODES)}"
                        f"{did_you_mean(key, MODES)}")
    parallel = env.world_size > 1
    return ContextPlan(
        device_target=env.device_target,
        device_id=None if env.device_target == "CPU" or env.is_scheduler else env.device_id,
        mode=key,
        parallel_mode=DATA_PARALLEL if parallel else STAND_ALONE,
        gradients_mean=parallel,
        device_num=env.world_size,
        # msrun's scheduler joins the cluster even for one worker: the worker waits for it.
        init_communication=parallel or env.launcher == "msrun",
        num_shards=env.world_size,
        shard_id=env.global_rank,
        rank_table_file=env.rank_table_file,
        role=env.role,
    )


def apply_context(plan: ContextPlan) -> None:
    """Set MindSpore's global context as planned. Call once per process, before any Tensor,
    Parameter or Cell exists (Ascend requires init() first).

    On msrun's scheduler process `init()` serves the cluster until the workers finish and
    this function never returns: the process exits with status 0."""
    import mindspore as ms

    if plan.init_communication and plan.rank_table_file:
        _export_hccl_variables(plan)
    mode = ms.GRAPH_MODE if plan.mode == "graph" else ms.PYNATIVE_MODE
    if hasattr(ms, "set_device"):
        if plan.device_id is None:
            ms.set_device(plan.device_target)
        else:
            ms.set_device(plan.device_target, plan.device_id)
        ms.set_context(mode=mode)
    else:
        kwargs: Dict[str, Any] = {"mode": mode, "device_target": plan.device_target}
        if plan.device_id is not None:
            kwargs["device_id"] = plan.device_id
        ms.set_context(**kwargs)

    if plan.init_communication:
        from mindspore.communication import get_group_size, get_rank, init
        init()
        if plan.role == "scheduler":
            # MindSpore ends the scheduler inside init(); should a version return, there is
            # still nothing for it to do.
            raise SystemExit(0)
        _note_joined()
        rank, size = get_rank(), get_group_size()
        # A rank table fixes each rank's device for HCCL: it must be the rank init() gives. A
        # dynamic cluster (msrun or its MS_* variables) numbers workers by a numeric MS_NODE_ID
        # from MindSpore 2.3 on, but before that in the order they join. There the job keeps
        # the environment's numbering: ranks only shard the data and choose the one writer
        # (a permutation of 0..N-1 either way), and gradients are averaged over all of them.
        if size != plan.num_shards or (rank != plan.shard_id and plan.rank_table_file):
            raise UserError(f"communication init() made this process rank {rank} of {size}, but "
                            f"the environment said rank {plan.shard_id} of {plan.num_shards}; "
                            f"check RANK_ID / RANK_SIZE / MS_NODE_ID")
        if rank != plan.shard_id:
            logger.info("MindSpore numbered this worker %d of %d in the order workers joined; "
                        "the job keeps rank %d (MS_NODE_ID) for data shards and outputs",
                        rank, size, plan.shard_id)
    if plan.parallel_mode == DATA_PARALLEL:
        ms.reset_auto_parallel_context()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                     gradients_mean=plan.gradients_mean,
                                     device_num=plan.device_num)
    logger.info("context: %s", plan)


def _note_joined() -> None:
    # From here on MindSpore's heartbeats notice a lost worker; before, only the launch guard
    # can end msrun's scheduler early (modelarts/launch_guard.py).
    from modelarts import launch_guard
    from modelarts.environment import msrun_launch

    launch_guard.note_joined(msrun_launch(os.environ))


def _export_hccl_variables(plan: ContextPlan) -> None:
    # HCCL's init() reads RANK_ID and the table path from the environment, and wants a file,
    # while RANK_TABLE_FILE may name a folder and RANK_ID may have been derived from the table.
    os.environ["RANK_TABLE_FILE"] = plan.rank_table_file or ""
    if "MINDSPORE_HCCL_CONFIG_PATH" in os.environ:
        os.environ["MINDSPORE_HCCL_CONFIG_PATH"] = plan.rank_table_file or ""
    os.environ["RANK_ID"] = str(plan.shard_id)
    os.environ["RANK_SIZE"] = str(plan.num_shards)
    # Nodes start their first collective only after staging their data, which can differ by
    # minutes between nodes; HCCL's default connect timeout (120 s) would fail the job.
    os.environ.setdefault("HCCL_CONNECT_TIMEOUT", "1800")
