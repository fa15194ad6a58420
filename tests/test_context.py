"""The device-context plan (pure) for every kind of job, and applying it for real on CPU."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tests import cluster

from modelarts.context import ContextPlan, plan_context
from modelarts.environment import JobEnvironment, detect_environment
from src.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def job(world, rank, local, local_world, node, nodes, device, target="Ascend", **kw):
    kw.setdefault("platform", "modelarts")
    kw.setdefault("launcher", "rank_table" if world > 1 else "none")
    kw.setdefault("rank_table_file", "/user/config/jobstart_hccl.json" if world > 1 else None)
    return JobEnvironment(world_size=world, global_rank=rank, local_rank=local,
                          local_world_size=local_world, node_rank=node, num_nodes=nodes,
                          device_id=device, device_target=target, job_id="j", **kw)


def test_plan_one_card_is_stand_alone_on_its_device():
    plan = plan_context(job(1, 0, 0, 1, 0, 1, 4), "graph")
    assert plan == ContextPlan(device_target="Ascend", device_id=4, mode="graph",
                               parallel_mode="stand_alone", gradients_mean=False, device_num=1,
                               init_communication=False, num_shards=1, shard_id=0)


def test_plan_eight_cards_is_data_parallel_sharded_by_rank():
    plan = plan_context(job(8, 5, 5, 8, 0, 1, 5), "pynative")
    assert (plan.parallel_mode, plan.gradients_mean, plan.device_num) == ("data_parallel", True, 8)
    assert (plan.init_communication, plan.num_shards, plan.shard_id) == (True, 8, 5)
    assert (plan.device_target, plan.device_id, plan.mode) == ("Ascend", 5, "pynative")
    assert plan.rank_table_file == "/user/config/jobstart_hccl.json"


def test_plan_sixteen_cards_shards_by_global_rank_and_uses_the_logical_device():
    plan = plan_context(job(16, 11, 3, 8, 1, 2, 3))
    # Device 3 drives rank 11: the shard is the global rank, the device the local one.
    assert (plan.device_id, plan.shard_id, plan.num_shards, plan.device_num) == (3, 11, 16, 16)


def test_plan_msrun_on_cpu_initialises_communication_without_a_device_id():
    env = detect_environment({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "2", "MS_NODE_ID": "1",
                              "RANK_ID": "1", "RANK_SIZE": "2", "DEVICE_ID": "1",
                              "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "8118"})
    plan = plan_context(env)
    assert (plan.device_target, plan.device_id, plan.parallel_mode) == ("CPU", None, "data_parallel")
    assert (plan.init_communication, plan.shard_id, plan.num_shards) == (True, 1, 2)
    assert plan.rank_table_file is None


def test_plan_msrun_single_worker_still_joins_the_scheduler():
    # msrun's scheduler waits for every worker to register, even the only one.
    env = detect_environment({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "1", "MS_NODE_ID": "0",
                              "RANK_ID": "0", "MS_SCHED_HOST": "127.0.0.1"})
    plan = plan_context(env)
    assert (plan.parallel_mode, plan.init_communication) == ("stand_alone", True)


def test_plan_msrun_scheduler():
    env = detect_environment({"MS_ROLE": "MS_SCHED", "MS_WORKER_NUM": "2", "RANK_ID": "0",
                              "MS_SCHED_HOST": "127.0.0.1"})
    plan = plan_context(env)
    assert (plan.role, plan.init_communication, plan.device_id) == ("scheduler", True, None)


def test_plan_local_is_cpu_stand_alone():
    plan = plan_context(detect_environment({}), "PyNative")
    assert (plan.device_target, plan.device_id, plan.mode, plan.parallel_mode) == \
        ("CPU", None, "pynative", "stand_alone")
    assert (plan.init_communication, plan.num_shards, plan.shard_id) == (False, 1, 0)
    out = plan.as_dict()
    assert json.loads(json.dumps(out)) == out and out["parallel_mode"] == "stand_alone"


def test_plan_rejects_an_unknown_mode():
    with pytest.raises(UserError, match="mode='grpah' is not one of graph, pynative .*'graph'"):
        plan_context(detect_environment({}), "grpah")


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MA_", "VC_", "MS_", "RANK", "DLS_"))
           and k not in ("DEVICE_ID", "ASCEND_DEVICE_ID", "JOB_ID")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **extra)
    return env


PROBE = textwrap.dedent("""
    import json, sys
    from modelarts.context import apply_context, plan_context
    from modelarts.environment import detect_environment
    env = detect_environment()
    plan = plan_context(env, sys.argv[1])
    apply_context(plan)
    import mindspore as ms
    out = {"role": env.role, "rank": env.global_rank,
           "device_target": ms.get_context("device_target"), "mode": ms.get_context("mode"),
           "parallel_mode": ms.get_auto_parallel_context("parallel_mode"),
           "gradients_mean": ms.get_auto_parallel_context("gradients_mean")}
    if plan.init_communication:
        from mindspore.communication import get_group_size, get_rank
        out.update(comm_rank=get_rank(), comm_size=get_group_size(),
                   device_num=ms.get_auto_parallel_context("device_num"))
    # Something a real step does: the context must allow running an op afterwards.
    out["sum"] = float(ms.ops.ones((2, 2), ms.float32).sum().asnumpy())
    print("APPLIED " + json.dumps(out), flush=True)
""")


def test_apply_context_cpu_stand_alone_in_a_fresh_process(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    res = subprocess.run([sys.executable, str(script), "pynative"], cwd=str(tmp_path),
                         env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [x for x in res.stdout.splitlines() if x.startswith("APPLIED ")][-1]
    out = json.loads(line[len("APPLIED "):])
    assert out == {"role": "worker", "rank": 0, "device_target": "CPU", "mode": 1,
                   "parallel_mode": "stand_alone", "gradients_mean": False, "sum": 4.0}
    # set_device on new MindSpore keeps the run free of set_context deprecation warnings.
    assert "deprecated" not in res.stderr, res.stderr[-3000:]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@cluster.STALLS_ON_MINDSPORE_2_0
def test_apply_context_in_a_two_worker_cluster_with_its_scheduler(tmp_path):
    """Two CPU workers and the scheduler, started by msrun or (MindSpore < 2.3) by the
    environment variables msrun sets."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    logs = tmp_path / "logs"
    res = cluster.run([str(script), "graph"], workers=2, port=_free_port(), log_dir=str(logs),
                      cwd=str(tmp_path), env=_clean_env(), timeout=300)
    texts = {p.name: p.read_text() for p in logs.glob("*.log")}
    assert res.returncode == 0, (res.output[-2000:], texts)
    applied = [json.loads(line[len("APPLIED "):]) for text in texts.values()
               for line in text.splitlines() if line.startswith("APPLIED ")]
    # The scheduler ran the same script but never got past init(); each worker is its rank.
    assert sorted(a["rank"] for a in applied) == sorted(a["comm_rank"] for a in applied) == [0, 1]
    assert all(a["comm_size"] == 2 for a in applied)
    if cluster.msrun_path():
        # MindSpore >= 2.3 numbers workers by MS_NODE_ID; older ones in the order they join.
        assert all(a["rank"] == a["comm_rank"] for a in applied), applied
    assert all(a["role"] == "worker" and a["parallel_mode"] == "data_parallel"
               and a["gradients_mean"] and a["device_num"] == 2 and a["sum"] == 4.0
               for a in applied)
    assert "APPLIED" not in texts["scheduler.log"]
