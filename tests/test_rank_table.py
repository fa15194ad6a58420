"""HCCL rank tables: both formats, waiting for "completed", locating this process, the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from modelarts import rank_table
from modelarts.rank_table import load, locate, wait_completed
from src.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The v1.0 example of PLATFORM.md / hccl_tools, verbatim: all values are strings.
V1_TWO_BY_TWO = """{"version": "1.0", "server_count": "2", "status": "completed",
 "server_list": [
   {"server_id": "10.0.0.1", "host_nic_ip": "reserve",
    "device": [{"device_id": "0", "device_ip": "192.1.27.6", "rank_id": "0"},
               {"device_id": "1", "device_ip": "192.2.27.6", "rank_id": "1"}]},
   {"server_id": "10.0.0.2", "host_nic_ip": "reserve",
    "device": [{"device_id": "0", "device_ip": "192.1.27.7", "rank_id": "2"},
               {"device_id": "1", "device_ip": "192.2.27.7", "rank_id": "3"}]}]}"""

# HCCL's 1.2 (A3 super-pod) layout: extra fields everywhere, server_id is a name, not an IP.
V12_EXTRA_FIELDS = """{"status": "completed", "version": "1.2", "server_count": "2",
 "server_list": [
  {"server_id": "node_0", "host_ip": "172.16.0.100", "device": [
    {"device_id": "0", "super_device_id": "0", "device_ip": "192.168.1.6", "device_port": "16666",
     "backup_device_ip": "192.168.1.7", "backup_device_port": "16667", "host_port": "16665",
     "rank_id": "0"},
    {"device_id": "1", "super_device_id": "1", "device_ip": "192.168.1.7", "device_port": "16666",
     "backup_device_ip": "192.168.1.6", "backup_device_port": "16667", "host_port": "16666",
     "rank_id": "1"}]},
  {"server_id": "node_1", "host_ip": "172.16.0.101", "device": [
    {"device_id": "0", "super_device_id": "2", "device_ip": "192.168.2.6", "rank_id": "2"},
    {"device_id": "1", "super_device_id": "3", "device_ip": "192.168.2.7", "rank_id": "3"}]}],
 "super_pod_list": [{"super_pod_id": "0", "server_list": [{"server_id": "node_0"},
                                                          {"server_id": "node_1"}]}]}"""


def v1_table(servers=1, per_server=8, status="completed"):
    return {"version": "1.0", "server_count": str(servers), "status": status, "server_list": [
        {"server_id": f"10.0.0.{s + 1}", "host_nic_ip": "reserve", "device": [
            {"device_id": str(d), "device_ip": f"192.{d}.27.{s + 6}",
             "rank_id": str(s * per_server + d)} for d in range(per_server)]}
        for s in range(servers)]}


def v0_table(pods, per_server=8, status="completed"):
    """ModelArts' jobstart_hccl.json with the instances in the given (unsorted) pod order."""
    return {"status": status, "group_count": "1", "group_list": [{
        "group_name": "job", "device_count": str(len(pods) * per_server),
        "instance_count": str(len(pods)),
        "instance_list": [
            {"pod_name": f"job-pod-{p}", "server_id": f"10.19.1.{100 + p}",
             "devices": [{"device_id": str(d), "device_ip": f"192.{d}.65.{p}"}
                         for d in range(per_server)]}
            for p in pods]}]}


def write(tmp_path, data, name="hccl.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


# --------------------------------------------------------------------------- formats


def test_v1_single_node_eight_cards(tmp_path):
    table = load(write(tmp_path, v1_table(1, 8)))
    assert (table.format, table.version, table.rank_size, len(table.servers)) == ("v1", "1.0", 8, 1)
    assert [(e.rank_id, e.device_id, e.local_rank, e.node_rank) for e in table.ranks] == \
        [(r, r, r, 0) for r in range(8)]
    place = locate(table, {"RANK_ID": "5", "RANK_SIZE": "8", "DEVICE_ID": "5"})
    assert (place.rank.rank_id, place.device_id, place.local_world_size, place.num_nodes) == \
        (5, 5, 8, 1)


def test_v1_two_nodes_of_eight_cards_device_id_is_not_the_rank(tmp_path):
    table = load(write(tmp_path, v1_table(2, 8)))
    env = {"RANK_ID": "11", "RANK_SIZE": "16", "DEVICE_ID": "3", "MA_CURRENT_IP": "10.0.0.2"}
    place = locate(table, env)
    assert (place.rank.rank_id, place.rank.node_rank, place.rank.local_rank, place.device_id) == \
        (11, 1, 3, 3)
    assert (place.rank.server_id, place.rank.device_ip) == ("10.0.0.2", "192.3.27.7")
    assert (place.local_world_size, place.num_nodes, place.rank_size) == (8, 2, 16)


def test_v1_platform_example_verbatim(tmp_path):
    table = load(write(tmp_path, V1_TWO_BY_TWO))
    assert [(e.rank_id, e.server_id, e.device_id, e.device_ip, e.local_rank, e.node_rank)
            for e in table.ranks] == [
        (0, "10.0.0.1", 0, "192.1.27.6", 0, 0), (1, "10.0.0.1", 1, "192.2.27.6", 1, 0),
        (2, "10.0.0.2", 0, "192.1.27.7", 0, 1), (3, "10.0.0.2", 1, "192.2.27.7", 1, 1)]


def test_v1_rank_ids_out_of_server_order_are_honoured(tmp_path):
    data = v1_table(2, 2)
    # A table may number ranks in any order: the rank_id field wins, not the position.
    for dev, rank in zip(data["server_list"][0]["device"], ("3", "2")):
        dev["rank_id"] = rank
    for dev, rank in zip(data["server_list"][1]["device"], ("1", "0")):
        dev["rank_id"] = rank
    table = load(write(tmp_path, data))
    assert [(e.server_id, e.device_id, e.local_rank) for e in table.ranks] == [
        ("10.0.0.2", 1, 1), ("10.0.0.2", 0, 0), ("10.0.0.1", 1, 1), ("10.0.0.1", 0, 0)]


def test_v12_extra_fields_are_ignored_and_host_ip_finds_the_server(tmp_path):
    table = load(write(tmp_path, V12_EXTRA_FIELDS))
    assert (table.format, table.version, table.rank_size) == ("v1", "1.2", 4)
    place = locate(table, {"MA_CURRENT_IP": "172.16.0.101", "DEVICE_ID": "1"})
    assert (place.rank.rank_id, place.rank.node_rank, place.rank.local_rank) == (3, 1, 1)


def test_v0_orders_pods_by_their_number_not_as_text(tmp_path):
    table = load(write(tmp_path, v0_table([10, 2, 0, 1], per_server=2), "jobstart_hccl.json"))
    assert table.format == "v0"
    # Sorted as text, job-pod-10 would come before job-pod-2 and get ranks 4-5.
    assert [s.pod_name for s in table.servers] == ["job-pod-0", "job-pod-1", "job-pod-2",
                                                   "job-pod-10"]
    assert [(e.rank_id, e.pod_name, e.device_id, e.local_rank, e.node_rank)
            for e in table.ranks] == [
        (0, "job-pod-0", 0, 0, 0), (1, "job-pod-0", 1, 1, 0),
        (2, "job-pod-1", 0, 0, 1), (3, "job-pod-1", 1, 1, 1),
        (4, "job-pod-2", 0, 0, 2), (5, "job-pod-2", 1, 1, 2),
        (6, "job-pod-10", 0, 0, 3), (7, "job-pod-10", 1, 1, 3)]


def test_v0_locates_by_instance_name_and_device_without_rank_id(tmp_path):
    table = load(write(tmp_path, v0_table([1, 0], per_server=8)))
    place = locate(table, {"MA_CURRENT_INSTANCE_NAME": "job-pod-1", "DEVICE_ID": "3"})
    assert (place.rank.rank_id, place.rank.node_rank, place.rank.local_rank) == (11, 1, 3)
    assert place.rank.server_id == "10.19.1.101"


def test_v0_with_rank_id_on_the_wrong_pod_is_an_error(tmp_path):
    table = load(write(tmp_path, v0_table([0, 1])))
    with pytest.raises(UserError) as e:
        locate(table, {"MA_CURRENT_INSTANCE_NAME": "job-pod-1", "RANK_ID": "3"})
    assert "RANK_ID=3" in str(e.value) and "job-pod-0" in str(e.value)
    assert "MA_CURRENT_INSTANCE_NAME=job-pod-1" in str(e.value)


def test_table_as_dict_lists_every_rank(tmp_path):
    out = load(write(tmp_path, v0_table([0, 1], per_server=2))).as_dict()
    assert (out["format"], out["rank_size"], out["server_count"]) == ("v0", 4, 2)
    assert out["ranks"][3] == {"rank_id": 3, "server_id": "10.19.1.101",
                               "pod_name": "job-pod-1", "device_id": 1,
                               "device_ip": "192.1.65.1", "local_rank": 1, "node_rank": 1}


# --------------------------------------------------------------------------- folders


def test_folder_prefers_jobstart_hccl_json(tmp_path):
    write(tmp_path, v1_table(1, 2), "other.json")
    path = write(tmp_path, v0_table([0], per_server=2), "jobstart_hccl.json")
    assert load(str(tmp_path)).path == path


def test_folder_with_a_single_json_uses_it(tmp_path):
    path = write(tmp_path, v1_table(1, 2), "rank_table_2pcs.json")
    (tmp_path / "notes.txt").write_text("not a table")
    assert load(str(tmp_path)).path == path


def test_folder_with_several_tables_is_an_error_naming_them(tmp_path):
    write(tmp_path, v1_table(1, 2), "a.json")
    write(tmp_path, v1_table(1, 2), "b.json")
    with pytest.raises(UserError, match=r"a\.json, b\.json"):
        load(str(tmp_path))


# --------------------------------------------------------------------------- waiting


def _rewrite_later(path, text, delay):
    def run():
        time.sleep(delay)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_wait_returns_once_initializing_becomes_completed(tmp_path):
    path = write(tmp_path, {"status": "initializing"})
    thread = _rewrite_later(path, json.dumps(v1_table(1, 8)), 0.3)
    start = time.monotonic()
    table = wait_completed(path, timeout=10, poll=0.05)
    thread.join()
    assert table.completed and table.rank_size == 8
    assert 0.25 < time.monotonic() - start < 5


def test_waiting_is_said_at_once_and_every_30_s(tmp_path, monkeypatch, caplog):
    import logging

    from modelarts import rank_table

    monkeypatch.setattr(rank_table, "WAIT_REPORT_S", 0.2)
    path = write(tmp_path, {"status": "initializing"})
    thread = _rewrite_later(path, json.dumps(v1_table(1, 8)), 0.5)
    with caplog.at_level(logging.INFO, logger="modelarts.rank_table"):
        wait_completed(path, timeout=10, poll=0.05)
    thread.join()
    waits = [r.getMessage() for r in caplog.records if "waiting for rank table" in r.getMessage()]
    assert 2 <= len(waits) <= 4, waits
    assert "status 'initializing'" in waits[0] and "s left of rank_table_timeout" in waits[0]
    assert "completed after" in caplog.records[-1].getMessage()


def test_wait_retries_a_half_written_file(tmp_path):
    text = json.dumps(v0_table([0, 1]))
    path = write(tmp_path, text[: len(text) // 2])
    thread = _rewrite_later(path, text, 0.3)
    table = wait_completed(path, timeout=10, poll=0.05)
    thread.join()
    assert table.rank_size == 16


def test_wait_for_a_file_that_appears_later(tmp_path):
    path = str(tmp_path / "jobstart_hccl.json")
    thread = _rewrite_later(path, json.dumps(v1_table(1, 2)), 0.2)
    assert wait_completed(str(tmp_path), timeout=10, poll=0.05).rank_size == 2
    thread.join()


def test_wait_times_out_naming_the_file_and_the_status(tmp_path):
    path = write(tmp_path, {"status": "initializing", "server_list": []})
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        wait_completed(path, timeout=0.5, poll=0.1)
    assert 0.5 <= time.monotonic() - start < 3
    msg = str(e.value)
    assert path in msg and "0.5s" in msg and "'initializing'" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("text", ['{"status": "completed", "server_li', "", "[1, 2"])
def test_malformed_json_at_timeout_names_the_file(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as e:
        wait_completed(path, timeout=0.2, poll=0.05)
    assert path in str(e.value) and "not valid JSON" in str(e.value)


def test_missing_file_at_timeout_names_the_file(tmp_path):
    path = str(tmp_path / "nowhere.json")
    with pytest.raises(UserError, match="nowhere.json.*does not exist"):
        wait_completed(path, timeout=0.1, poll=0.05)


def test_a_completed_but_wrong_table_fails_without_waiting(tmp_path):
    data = v1_table(1, 2)
    data["server_list"][0]["device"][1]["rank_id"] = "0"
    path = write(tmp_path, data)
    start = time.monotonic()
    with pytest.raises(UserError, match="rank_id 0 is given to device 0 .* and to device 1"):
        wait_completed(path, timeout=30)
    assert time.monotonic() - start < 1


# --------------------------------------------------------------------------- malformed


def _broken(kind):
    if kind == "missing rank":
        data = v1_table(1, 4)
        data["server_list"][0]["device"][2]["rank_id"] = "7"
        return data, "2 is missing"
    if kind == "server_count":
        data = v1_table(2, 2)
        data["server_count"] = "3"
        return data, "server_count says 3 but the table lists 2"
    if kind == "device_id not a number":
        data = v1_table(1, 2)
        data["server_list"][0]["device"][0]["device_id"] = "npu0"
        return data, "device_id = 'npu0' is not an integer"
    if kind == "no rank_id":
        data = v1_table(1, 2)
        del data["server_list"][0]["device"][1]["rank_id"]
        return data, "has no 'rank_id'"
    if kind == "duplicate device":
        data = v1_table(1, 2)
        data["server_list"][0]["device"][1]["device_id"] = "0"
        return data, "device_id 0 appears twice"
    if kind == "pod without number":
        data = v0_table([0, 1])
        data["group_list"][0]["instance_list"][1]["pod_name"] = "job-pod-last"
        return data, "'job-pod-last' does not end in an instance number"
    if kind == "device_count":
        data = v0_table([0, 1])
        data["group_list"][0]["device_count"] = "8"
        return data, "device_count says 8 but the table lists 16"
    if kind == "no devices":
        data = v0_table([0, 1])
        data["group_list"][0]["instance_list"][0]["devices"] = []
        return data, "has no device"
    if kind == "neither format":
        return {"status": "completed", "servers": []}, "neither server_list"
    if kind == "not an object":
        return [1, 2, 3], "expected a JSON object"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing rank", "server_count", "device_id not a number",
                                  "no rank_id", "duplicate device", "pod without number",
                                  "device_count", "no devices", "neither format",
                                  "not an object"])
def test_malformed_tables_are_user_errors_naming_the_file(tmp_path, kind):
    data, expect = _broken(kind)
    path = write(tmp_path, data)
    with pytest.raises(UserError) as e:
        load(path)
    assert path in str(e.value) and expect in str(e.value)


# --------------------------------------------------------------------------- locate checks


@pytest.mark.parametrize("environ, expect", [
    ({"RANK_ID": "8"}, "RANK_ID=8 but rank table .* has 8 ranks \\(0..7\\)"),
    ({"RANK_ID": "2", "RANK_SIZE": "16"}, "RANK_SIZE=16 but rank table .* has 8 ranks"),
    ({"RANK_ID": "2", "DEVICE_ID": "5"}, "DEVICE_ID=5 but rank table .* gives rank 2 device 2"),
    ({"RANK_ID": "2", "ASCEND_DEVICE_ID": "6"}, "ASCEND_DEVICE_ID=6 but .* rank 2 device 2"),
    ({"RANK_ID": "two"}, "RANK_ID='two' is not an integer"),
])
def test_variables_contradicting_the_table_are_user_errors(tmp_path, environ, expect):
    table = load(write(tmp_path, v1_table(1, 8)))
    with pytest.raises(UserError, match=expect):
        locate(table, environ)


def test_unknown_instance_name_lists_the_pods(tmp_path):
    table = load(write(tmp_path, v0_table([0, 1])))
    with pytest.raises(UserError, match="MA_CURRENT_INSTANCE_NAME=job-pod-7 .* job-pod-0, "
                                        "job-pod-1"):
        locate(table, {"MA_CURRENT_INSTANCE_NAME": "job-pod-7", "RANK_ID": "0"})


def test_two_servers_and_nothing_to_tell_them_apart_is_an_error(tmp_path):
    table = load(write(tmp_path, v1_table(2, 8)))
    with pytest.raises(UserError, match="2 servers and nothing says which one"):
        locate(table, {"DEVICE_ID": "0", "MA_CURRENT_IP": "10.9.9.9"})


def test_several_devices_and_no_rank_or_device_variable_is_an_error(tmp_path):
    table = load(write(tmp_path, v1_table(1, 8)))
    with pytest.raises(UserError, match="neither RANK_ID nor DEVICE_ID"):
        locate(table, {})


def test_initializing_table_cannot_be_located(tmp_path):
    table = load(write(tmp_path, v1_table(1, 8, status="initializing")))
    assert not table.completed and table.rank_size == 0
    with pytest.raises(UserError, match="status 'initializing'"):
        locate(table, {"RANK_ID": "0"})


def _one_card_on_device_3():
    data = v1_table(1, 1)
    data["server_list"][0]["device"][0]["device_id"] = "3"
    return data


@pytest.mark.parametrize("environ, device_id", [
    # ModelArts: ASCEND_DEVICE_ID is the logical id inside the container, 0 for 1 card.
    ({"ASCEND_DEVICE_ID": "0", "RANK_ID": "0", "RANK_SIZE": "1"}, 0),
    # The container runtime's mapping physical 3 -> logical 0.
    ({"ASCEND_VISIBLE_DEVICES": "3"}, 0),
    # Bare metal: the physical id is the one to use.
    ({}, 3),
    ({"DEVICE_ID": "3"}, 3),
])
def test_logical_device_id_of_a_one_card_job(tmp_path, environ, device_id):
    table = load(write(tmp_path, _one_card_on_device_3()))
    place = locate(table, environ)
    assert (place.rank.rank_id, place.rank.device_id, place.device_id) == (0, 3, device_id)


def test_device_id_matches_a_partial_node_by_logical_position(tmp_path):
    data = v1_table(1, 4)
    for i, dev in enumerate(data["server_list"][0]["device"]):
        dev["device_id"] = str(4 + i)   # devices 4..7 of the node
    table = load(write(tmp_path, data))
    place = locate(table, {"DEVICE_ID": "1"})   # logical 1 -> physical 5
    assert (place.rank.rank_id, place.rank.device_id, place.device_id) == (1, 5, 1)


# --------------------------------------------------------------------------- CLI


def test_cli_prints_every_rank_as_json(tmp_path, capsys):
    path = write(tmp_path, v0_table([1, 0], per_server=2))
    assert rank_table.main([path]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["format"], out["rank_size"]) == ("v0", 4)
    assert [(r["rank_id"], r["server_id"], r["device_id"], r["device_ip"], r["local_rank"],
             r["node_rank"]) for r in out["ranks"]] == [
        (0, "10.19.1.100", 0, "192.0.65.0", 0, 0), (1, "10.19.1.100", 1, "192.1.65.0", 1, 0),
        (2, "10.19.1.101", 0, "192.0.65.1", 0, 1), (3, "10.19.1.101", 1, "192.1.65.1", 1, 1)]


def test_cli_runs_as_a_module_and_fails_in_one_line(tmp_path):
    good = write(tmp_path, V1_TWO_BY_TWO, "good.json")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK_ID", "DEVICE_ID")}
    env.update(RANK_ID="3", MA_CURRENT_IP="10.0.0.2")
    res = subprocess.run([sys.executable, "-m", "modelarts.rank_table", good, "--locate"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["rank_size"] == 4 and out["this_process"]["node_rank"] == 1
    bad = write(tmp_path, '{"status": "completed", "server_list": [', "bad.json")
    res = subprocess.run([sys.executable, "-m", "modelarts.rank_table", bad,
                          "--timeout", "0.1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "bad.json" in res.stderr
