"""Which platform, which rank: every environment class against the variables its launcher sets."""
from __future__ import annotations

import dataclasses
import json

import pytest

from modelarts.environment import (ENVIRONMENTS, MODELARTS_VARIABLES, JobEnvironment,
                                   LocalEnvironment, ModelArtsEnvironment, MsrunEnvironment,
                                   MsrunLaunch, detect_environment, is_modelarts, msrun_launch)
from src.errors import UserError

# What ModelArts sets for every process of a training job (documented job-wide variables).
MODELARTS_JOB = {
    "MA_HOME": "/home/ma-user", "MA_JOB_DIR": "/home/ma-user/modelarts/user-job-dir",
    "MA_MOUNT_PATH": "/home/ma-user/modelarts", "MA_LOG_DIR": "/home/ma-user/modelarts/log",
    "S3_ENDPOINT": "https://obs.cn-north-4.myhuaweicloud.com", "S3_USE_HTTPS": "1",
    "S3_VERIFY_SSL": "0", "PATH": "/usr/bin",
}

# Recorded from a real `msrun --worker_num=2 --local_worker_num=2` run of MindSpore 2.8 on CPU
# (every MS_*/RANK*/DEVICE* variable each process saw).
MSRUN_SCHEDULER = {"MS_ROLE": "MS_SCHED", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "18571",
                   "MS_TOPO_TIMEOUT": "600", "MS_WORKER_NUM": "2", "RANK_ID": "0",
                   "RANK_SIZE": "2"}
MSRUN_WORKER_1 = {"DEVICE_ID": "1", "MS_NODE_ID": "1", "MS_ROLE": "MS_WORKER",
                  "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "18571",
                  "MS_TOPO_TIMEOUT": "600", "MS_WORKER_NUM": "2", "RANK_ID": "1",
                  "RANK_SIZE": "2"}


def v0_table(tmp_path, pods, per_server, first_device=0):
    data = {"status": "completed", "group_count": "1", "group_list": [{
        "group_name": "job", "device_count": str(len(pods) * per_server),
        "instance_count": str(len(pods)),
        "instance_list": [
            {"pod_name": f"modelarts-job-5f3a-worker-{p}", "server_id": f"10.19.1.{p}",
             "devices": [{"device_id": str(first_device + d), "device_ip": f"192.{d}.1.{p}"}
                         for d in range(per_server)]}
            for p in pods]}]}
    folder = tmp_path / "user" / "config"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "jobstart_hccl.json").write_text(json.dumps(data))
    return str(folder)


def modelarts_rtf(tmp_path, pods, per_server, *, instance, rank, device, first_device=0):
    """The variables ModelArts' Ascend engine gives one process of a rank-table job."""
    env = dict(MODELARTS_JOB)
    env.update(RANK_TABLE_FILE=v0_table(tmp_path, pods, per_server, first_device),
               MA_CURRENT_INSTANCE_NAME=f"modelarts-job-5f3a-worker-{instance}",
               MA_NUM_HOSTS=str(len(pods)), VC_TASK_INDEX=str(instance),
               VC_WORKER_NUM=str(len(pods)), RANK_SIZE=str(len(pods) * per_server),
               RANK_ID=str(rank), DEVICE_ID=str(device), ASCEND_DEVICE_ID=str(device),
               JOB_ID="job-5f3a")
    return env


def ranks(env):
    return (env.global_rank, env.world_size, env.local_rank, env.local_world_size,
            env.node_rank, env.num_nodes, env.device_id)


# --------------------------------------------------------------------------- ModelArts


def test_modelarts_rank_table_one_card(tmp_path):
    # A 1-card job can land on any NPU: the table says device 5, the container calls it 0.
    environ = modelarts_rtf(tmp_path, [0], 1, instance=0, rank=0, device=0, first_device=5)
    env = detect_environment(environ)
    assert (env.platform, env.launcher, env.role) == ("modelarts", "rank_table", "worker")
    assert ranks(env) == (0, 1, 0, 1, 0, 1, 0)
    assert (env.device_target, env.job_id, env.on_modelarts) == ("Ascend", "job-5f3a", True)
    assert env.rank_table_file.endswith("user/config/jobstart_hccl.json")
    assert env.is_main and env.is_node_main and not env.distributed


def test_modelarts_rank_table_eight_cards(tmp_path):
    environ = modelarts_rtf(tmp_path, [0], 8, instance=0, rank=5, device=5)
    env = detect_environment(environ)
    assert ranks(env) == (5, 8, 5, 8, 0, 1, 5)
    assert env.distributed and not env.is_main and not env.is_node_main


def test_modelarts_rank_table_sixteen_cards_on_two_nodes(tmp_path):
    environ = modelarts_rtf(tmp_path, [1, 0], 8, instance=1, rank=11, device=3)
    env = detect_environment(environ)
    # Device 3 of the second node is rank 11: the device id is never the global rank.
    assert ranks(env) == (11, 16, 3, 8, 1, 2, 3)
    assert not env.is_main and env.local_rank != env.global_rank


def test_modelarts_rank_table_without_rank_id_finds_the_rank_from_the_pod(tmp_path):
    environ = modelarts_rtf(tmp_path, [0, 1], 8, instance=1, rank=0, device=2)
    del environ["RANK_ID"]
    assert ranks(detect_environment(environ)) == (10, 16, 2, 8, 1, 2, 2)


def test_modelarts_rank_id_contradicting_the_table_is_a_user_error(tmp_path):
    environ = modelarts_rtf(tmp_path, [0, 1], 8, instance=1, rank=3, device=3)
    with pytest.raises(UserError) as e:
        detect_environment(environ)
    assert "RANK_ID=3" in str(e.value) and "worker-0" in str(e.value)


def test_modelarts_waits_for_the_table_then_gives_up(tmp_path):
    environ = modelarts_rtf(tmp_path, [0], 8, instance=0, rank=0, device=0)
    (tmp_path / "user" / "config" / "jobstart_hccl.json").write_text('{"status": "initializing"}')
    with pytest.raises(UserError, match="jobstart_hccl.json not ready after 0.2s"):
        detect_environment(environ, rank_table_timeout=0.2)


def test_modelarts_with_msrun_storage_from_modelarts_ranks_from_msrun(tmp_path):
    environ = dict(MODELARTS_JOB, MA_CURRENT_INSTANCE_NAME="modelarts-job-5f3a-worker-1",
                   MA_NUM_HOSTS="2", VC_TASK_INDEX="1", ASCEND_VISIBLE_DEVICES="0,1,2,3,4,5,6,7",
                   # A stale table path must not be read: msrun decides the ranks.
                   RANK_TABLE_FILE=str(tmp_path / "absent.json"),
                   MS_ROLE="MS_WORKER", MS_WORKER_NUM="16", MS_SCHED_HOST="10.19.1.0",
                   MS_SCHED_PORT="8118", MS_NODE_ID="11", RANK_ID="11", RANK_SIZE="16",
                   DEVICE_ID="3")
    env = detect_environment(environ)
    assert (env.platform, env.launcher, env.on_modelarts) == ("modelarts", "msrun", True)
    assert ranks(env) == (11, 16, 3, 8, 1, 2, 3)
    assert env.device_target == "Ascend" and env.rank_table_file is None
    assert env.job_id == "modelarts-job-5f3a-worker"   # no JOB_ID: the pod name minus its number
    assert is_modelarts(environ)


def test_modelarts_without_launcher_is_one_process(tmp_path):
    env = detect_environment(dict(MODELARTS_JOB))
    assert (env.platform, env.launcher, env.device_target) == ("modelarts", "none", "CPU")
    assert ranks(env) == (0, 1, 0, 1, 0, 1, 0)
    assert detect_environment(dict(MODELARTS_JOB, MA_NUM_GPUS="1")).device_target == "GPU"
    assert detect_environment(dict(MODELARTS_JOB, ASCEND_DEVICE_ID="0")).device_target == "Ascend"


def test_modelarts_rank_size_without_table_or_msrun_is_a_user_error():
    with pytest.raises(UserError, match="RANK_SIZE=8 but neither RANK_TABLE_FILE nor msrun"):
        detect_environment(dict(MODELARTS_JOB, RANK_SIZE="8", RANK_ID="2"))


def test_rank_table_outside_modelarts_is_a_table_launch_with_local_storage(tmp_path):
    folder = v0_table(tmp_path, [0], 2)
    env = detect_environment({"RANK_TABLE_FILE": folder, "RANK_ID": "1", "DEVICE_ID": "1"})
    assert (env.platform, env.launcher, env.on_modelarts) == ("modelarts", "rank_table", False)
    assert ranks(env) == (1, 2, 1, 2, 0, 1, 1)


# --------------------------------------------------------------------------- msrun


def test_msrun_worker_as_recorded():
    env = detect_environment(MSRUN_WORKER_1)
    assert (env.platform, env.launcher, env.role, env.on_modelarts) == \
        ("msrun", "msrun", "worker", False)
    assert ranks(env) == (1, 2, 1, 2, 0, 1, 1)
    assert env.device_target == "CPU" and env.job_id == "msrun-127.0.0.1-18571"
    assert not env.is_main and env.distributed


def test_msrun_scheduler_is_not_rank_zero():
    env = detect_environment(MSRUN_SCHEDULER)
    assert env.role == "scheduler" and env.is_scheduler
    assert not env.is_main and not env.is_node_main   # it must not stage data or upload


def test_msrun_job_id_comes_from_job_id_when_set():
    assert detect_environment(dict(MSRUN_WORKER_1, JOB_ID="run-7")).job_id == "run-7"


def test_msrun_on_several_nodes_needs_local_worker_count():
    environ = dict(MSRUN_WORKER_1, MS_WORKER_NUM="8", RANK_SIZE="8", RANK_ID="6", MS_NODE_ID="6",
                   DEVICE_ID="2", MS_SCHED_HOST="192.168.0.10")
    with pytest.raises(UserError, match="MS_SCHED_HOST=192.168.0.10 .* MS_LOCAL_WORKER"):
        detect_environment(environ)
    env = detect_environment(dict(environ, MS_LOCAL_WORKER="4"))
    assert ranks(env) == (6, 8, 2, 4, 1, 2, 2)


def test_msrun_on_several_nodes_without_node_rank_is_a_user_error():
    environ = dict(MSRUN_WORKER_1, MS_WORKER_NUM="8", RANK_SIZE="8", MS_LOCAL_WORKER="4")
    del environ["RANK_ID"], environ["MS_NODE_ID"]
    with pytest.raises(UserError, match="--node_rank"):
        detect_environment(environ)


@pytest.mark.parametrize("change, expect", [
    ({"RANK_ID": "0"}, "RANK_ID=0 but MS_NODE_ID=1"),
    ({"RANK_SIZE": "4"}, "RANK_SIZE=4 but MS_WORKER_NUM=2"),
    ({"MS_NODE_ID": "5", "RANK_ID": "5"}, "RANK_ID=5 but MS_WORKER_NUM=2"),
    ({"MS_ROLE": "MS_PSERVER"}, "MS_ROLE='MS_PSERVER' is not supported"),
    ({"MS_WORKER_NUM": "two"}, "MS_WORKER_NUM='two' is not an integer"),
    ({"MS_LOCAL_WORKER": "3"}, "MS_LOCAL_WORKER=3 does not divide MS_WORKER_NUM=2"),
])
def test_msrun_inconsistent_variables_are_user_errors(change, expect):
    with pytest.raises(UserError, match=expect):
        detect_environment(dict(MSRUN_WORKER_1, **change))


def test_msrun_without_worker_num_is_a_user_error():
    environ = dict(MSRUN_WORKER_1)
    del environ["MS_WORKER_NUM"]
    with pytest.raises(UserError, match="MS_WORKER_NUM is not set"):
        detect_environment(environ)


# --------------------------------------------------------------------------- local


def test_msrun_launch_ties_workers_and_scheduler_to_one_address():
    assert msrun_launch(MSRUN_WORKER_1) == MsrunLaunch("worker", "127.0.0.1", "18571", 1, None)
    assert msrun_launch(dict(MSRUN_SCHEDULER, LAUNCH_GUARD_DIR="/sfs/guard")) == \
        MsrunLaunch("scheduler", "127.0.0.1", "18571", None, "/sfs/guard")


def test_msrun_launch_is_lenient_and_none_outside_msrun():
    assert msrun_launch({}) is None and msrun_launch({"RANK_ID": "3"}) is None
    assert msrun_launch({"MS_ROLE": "MS_WORKER"}) is None   # no scheduler to tell
    # Without MS_NODE_ID the RANK_ID a worker sees is msrun's leftover for its scheduler.
    launch = msrun_launch({"MS_ROLE": "MS_WORKER", "MS_SCHED_PORT": "8118", "RANK_ID": "0",
                           "MS_WORKER_NUM": "garbage"})
    assert (launch.rank, launch.sched_host) == (None, "127.0.0.1")


def test_local_fallback_ignores_stale_rank_variables():
    env = detect_environment({"RANK_ID": "5", "RANK_SIZE": "8", "PATH": "/usr/bin"})
    assert (env.platform, env.launcher, env.device_target, env.job_id) == \
        ("local", "none", "CPU", "local")
    assert ranks(env) == (0, 1, 0, 1, 0, 1, 0)
    assert env.is_main and not env.on_modelarts


def test_default_environ_is_the_process_environment(monkeypatch):
    for name in ("RANK_TABLE_FILE", "MS_ROLE") + MODELARTS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JOB_ID", "from-os-environ")
    assert detect_environment().job_id == "from-os-environ"


# --------------------------------------------------------------------------- overrides


def test_platform_override_local_on_modelarts_keeps_modelarts_storage(tmp_path):
    environ = modelarts_rtf(tmp_path, [0], 8, instance=0, rank=5, device=5)
    env = detect_environment(environ, platform="local")
    assert (env.platform, env.world_size, env.on_modelarts) == ("local", 1, True)


def test_platform_override_msrun_on_modelarts_with_msrun():
    environ = dict(MODELARTS_JOB, **MSRUN_WORKER_1)
    assert detect_environment(environ).platform == "modelarts"
    env = detect_environment(environ, platform="MSRUN")
    assert (env.platform, env.global_rank, env.on_modelarts) == ("msrun", 1, True)


@pytest.mark.parametrize("platform, expect", [
    ("msrun", "platform=msrun but MS_ROLE is not set"),
    ("modelarts", "platform=modelarts but none of RANK_TABLE_FILE, MA_JOB_DIR"),
    ("slurm", "platform='slurm' is not one of auto, modelarts, msrun, local"),
    ("modlearts", "did you mean 'modelarts'"),
])
def test_platform_override_errors_name_the_missing_variables(platform, expect):
    with pytest.raises(UserError, match=expect):
        detect_environment({"PATH": "/usr/bin"}, platform=platform)


def test_device_target_override(tmp_path):
    environ = modelarts_rtf(tmp_path, [0], 8, instance=0, rank=1, device=1)
    assert detect_environment(environ, device_target="cpu").device_target == "CPU"
    assert detect_environment(MSRUN_WORKER_1, device_target="GPU").device_target == "GPU"
    assert detect_environment({}, device_target="Ascend").device_target == "Ascend"
    with pytest.raises(UserError, match="device_target='Ascnd' .*did you mean 'Ascend'"):
        detect_environment({}, device_target="Ascnd")


# --------------------------------------------------------------------------- plumbing


def test_is_modelarts_needs_a_modelarts_variable():
    assert is_modelarts({"MA_JOB_DIR": "/home/ma-user/modelarts/user-job-dir"})
    assert is_modelarts({"DLS_TASK_INDEX": "0"})
    # Volcano sets VC_* on any cluster, and an empty value is not a value.
    assert not is_modelarts({"VC_TASK_INDEX": "0", "VC_WORKER_NUM": "2", "MA_JOB_DIR": ""})
    assert not is_modelarts({"RANK_TABLE_FILE": "/x.json"})


def test_detection_order_and_detect():
    assert ENVIRONMENTS == (ModelArtsEnvironment, MsrunEnvironment, LocalEnvironment)
    assert ModelArtsEnvironment.detect(MODELARTS_JOB) and not MsrunEnvironment.detect(MODELARTS_JOB)
    assert MsrunEnvironment.detect(MSRUN_WORKER_1) and not ModelArtsEnvironment.detect(MSRUN_WORKER_1)
    assert LocalEnvironment.detect({})


def test_job_environment_is_frozen_and_checked():
    env = detect_environment({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.global_rank = 3
    with pytest.raises(ValueError, match="global_rank=2 outside 0..1"):
        dataclasses.replace(env, world_size=2, global_rank=2)
    assert env.as_dict()["platform"] == "local" and set(env.as_dict()) >= {
        "platform", "world_size", "global_rank", "local_rank", "local_world_size", "node_rank",
        "num_nodes", "device_id", "device_target", "job_id", "rank_table_file"}
    assert isinstance(env, JobEnvironment)
