"""start.py as a boot file: argument handling, plan output and one-line errors."""
from __future__ import annotations

import glob
import json
import os
import re

import pytest
import yaml

from tests.e2e_helpers import REPO, clean_env, start


# The demo configs' data sets, by name only: plan lists data_url and reads no file.
DEMO_DATA = {
    "demo/aecrnet/data": ["train/hazy/1_1.png", "train/hazy/1_2.png", "train/clear/1.png",
                          "val/hazy/7_1.png", "val/clear/7.png"],
    "demo/lsid/hdf5": ["Sony_train_list.txt", "Sony_val_list.txt", "Sony/short/00001_00_0.1s.h5",
                       "Sony/long/00001_00_10s.h5"],
    "demo/singan/data": ["trainA/1.png", "trainB/2.png", "test/hazy/3_1.png", "test/clear/3.png"],
}


def lay_out(root, folder: str, files) -> None:
    """Empty files named `files` under `root`/`folder` (a mock OBS bucket path)."""
    for rel in files:
        path = os.path.join(str(root), folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()


@pytest.fixture()
def env(tmp_path):
    for folder, files in DEMO_DATA.items():
        lay_out(tmp_path / "obs", folder, files)
    return clean_env(str(tmp_path / "obs"))


def _tree(root) -> list:
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


def _errors(res) -> list:
    return [line for line in res.stderr.splitlines() if line.startswith("error: ")]


def test_plan_prints_the_resolved_job_without_touching_data(env, tmp_path):
    before = _tree(tmp_path)
    res = start(["--task=plan", "--max_steps=7", "--train.log_every=3"], env)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert plan["config"]["train"]["max_steps"] == 7
    assert plan["config"]["train"]["log_every"] == 3
    assert plan["platform"] == "local"
    assert (plan["rank_id"], plan["rank_size"], plan["local_rank"], plan["node_rank"]) == (0, 1, 0, 0)
    assert plan["device_target"] == "CPU"
    assert plan["parallel_mode"] == "stand_alone"
    assert plan["data_url"].startswith("obs://")
    assert [(c["name"], c["ok"]) for c in plan["checks"]] == [
        ("values", True), ("data_url", True), ("data.train", True), ("data.val", True)]
    assert "2 reside pairs" in plan["checks"][2]["message"]
    assert _tree(tmp_path) == before, "plan must not write anything"


def test_plan_on_modelarts_reads_the_rank_table(env, tmp_path):
    table = {"status": "completed", "group_count": "1", "group_list": [{
        "group_name": "job", "device_count": "16", "instance_count": "2",
        "instance_list": [
            {"pod_name": "job-pod-%d" % p, "server_id": "10.0.0.%d" % p,
             "devices": [{"device_id": str(d), "device_ip": "192.1.%d.%d" % (p, d)}
                         for d in range(8)]}
            for p in (1, 0)]}]}
    path = tmp_path / "jobstart_hccl.json"
    path.write_text(json.dumps(table))
    env.update(MA_CURRENT_INSTANCE_NAME="job-pod-1", RANK_TABLE_FILE=str(path), DEVICE_ID="3",
               ASCEND_DEVICE_ID="3", RANK_SIZE="16", RANK_ID="11", MA_NUM_HOSTS="2",
               VC_TASK_INDEX="1", MA_JOB_DIR="/home/ma-user/modelarts/user-job-dir", JOB_ID="j1")
    lay_out(tmp_path / "obs", "bucket/data", DEMO_DATA["demo/aecrnet/data"])
    res = start(["--task=plan", "--data_url=obs://bucket/data/", "--train_url=obs://bucket/out/",
                 "--init_method=tcp://10.0.0.1:6000", "--num_gpus=1"], env)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert plan["platform"] == "modelarts"
    assert (plan["rank_id"], plan["rank_size"], plan["local_rank"], plan["node_rank"],
            plan["device_id"]) == (11, 16, 3, 1, 3)
    assert plan["device_target"] == "Ascend"
    assert plan["parallel_mode"] == "data_parallel"
    assert "ignoring platform argument --init_method" in res.stderr


def test_rank_id_contradicting_the_table_is_one_line_error(env, tmp_path):
    table = {"version": "1.0", "server_count": "1", "status": "completed", "server_list": [
        {"server_id": "10.0.0.1", "device": [
            {"device_id": str(d), "device_ip": "192.1.0.%d" % d, "rank_id": str(d)}
            for d in range(2)]}]}
    path = tmp_path / "hccl.json"
    path.write_text(json.dumps(table))
    env.update(RANK_TABLE_FILE=str(path), RANK_ID="5", RANK_SIZE="2", DEVICE_ID="1",
               MA_JOB_DIR="/home/ma-user/modelarts/user-job-dir")
    res = start(["--task=plan"], env)
    assert res.returncode == 2
    assert "RANK_ID" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("arg, expect", [
    ("--max_step=3", "max_steps"),
    ("--train.lr=0.1", "did you mean"),
    ("--task=trian", "train"),
])
def test_typos_get_a_did_you_mean(env, arg, expect):
    res = start(["--task=plan", arg] if not arg.startswith("--task") else [arg], env)
    assert res.returncode == 2
    assert expect in res.stderr
    assert "Traceback" not in res.stderr


def test_obs_url_without_backend_says_how_to_fix(tmp_path):
    env = clean_env(str(tmp_path / "obs"))
    del env["OBS_MOCK_ROOT"]
    res = start(["--task=train", "--data_url=obs://bucket/data", "--train_url=%s" % (tmp_path / "out")], env)
    assert res.returncode == 2, res.stderr
    assert "OBS_MOCK_ROOT" in res.stderr and "OBS_ACCESS_KEY_ID" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_data_url_is_a_clear_error(env, tmp_path):
    res = start(["--task=train", "--data_url=", "--train_url=%s" % (tmp_path / "out")], env)
    assert res.returncode == 2
    assert "data_url" in res.stderr and "Traceback" not in res.stderr


def test_key_escaping_the_bucket_is_refused(env, tmp_path):
    res = start(["--task=train", "--data_url=obs://bucket/../../etc",
                 "--train_url=%s" % (tmp_path / "out")], env)
    assert res.returncode == 2
    assert ".." in res.stderr and "Traceback" not in res.stderr


def test_config_file_spellings_other_trainers_use(env):
    for args in (["-c", "configs/lsid_demo.yaml"], ["-c=configs/lsid_demo.yaml"],
                 ["--config_path=configs/lsid_demo.yaml"], ["--config-path", "configs/lsid_demo.yaml"]):
        res = start(["--task=plan"] + args, env)
        assert res.returncode == 0, (args, res.stderr)
        assert json.loads(res.stdout)["config"]["model"] == "lsid", args


FORM_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # what ModelArts' hyperparameter form accepts


@pytest.mark.parametrize("config", sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
def test_every_leaf_key_can_be_set_from_the_modelarts_form(config):
    """Each key, spelled with `__` for its dots, reaches the same leaf as its dotted name."""
    from src.config import get_path, leaf_paths, load_config

    base = load_config(os.path.join(REPO, config))
    for key in leaf_paths(base):
        spelled = key.replace(".", "__")
        assert FORM_NAME.match(spelled), spelled
        value = get_path(base, key)
        if isinstance(value, (list, dict)) or value is None:
            continue  # a form sends text: lists and nulls are set in config files
        changed = _another_value(value)
        cfg = load_config(os.path.join(REPO, config), ["%s=%s" % (spelled, changed)])
        assert get_path(cfg, key) == (yaml.safe_load(changed) if isinstance(changed, str)
                                      and isinstance(value, bool) else changed), (config, spelled)


def _another_value(value):
    """A different value of the same type; text stays as it is (model names, registry types
    and choices only take their own values), so there only the key's resolution is tested."""
    if isinstance(value, bool):
        return str(not value).lower()
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 if value else 1.5
    return value
