"""modelarts.job: once-per-node staging with markers, pushes while running, the final upload on
success, failure and SIGTERM, run.json, and the leftover-checkpoint warning."""
from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import obs_sync
from modelarts import job as job_module
from modelarts import staging
from modelarts.environment import JobEnvironment
from modelarts.job import Job, resolve_dirs
from modelarts.run_record import run_identity
from src.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_env(rank=0, world=1, job_id="job-42", platform="local", **kw):
    fields = dict(platform=platform, world_size=world, global_rank=rank, local_rank=rank,
                  local_world_size=world, node_rank=0, num_nodes=1, device_id=rank,
                  device_target="CPU", job_id=job_id, rank_table_file=None)
    fields.update(kw)
    return JobEnvironment(**fields)


def make_cfg(tmp_path, **kw):
    cfg = {"model": "aecrnet", "data_url": "obs://bkt/data", "train_url": "obs://bkt/out",
           "cache_dir": str(tmp_path / "cache"), "output_dir": "", "rank_table_timeout": 10,
           "sync": {"threads": 2, "retries": 0}, "train": {"resume": ""}}
    cfg.update(kw)
    return cfg


def put(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def read_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture
def data_bucket(mock_obs):
    for i in range(5):
        put(mock_obs / "bkt" / "data" / "hazy" / ("%d.png" % i), b"img%d" % i)
    return mock_obs


@pytest.fixture
def count_syncs(monkeypatch):
    """Record every obs_sync.sync call; slow them down so that waiters really wait."""
    calls = []
    real = obs_sync.sync

    def counted(src, dst, **kw):
        calls.append((src, dst))
        time.sleep(0.3)
        return real(src, dst, **kw)

    monkeypatch.setattr(obs_sync, "sync", counted)
    return calls


def in_threads(*fns):
    """Run fns concurrently; returns their results or exceptions, in order."""
    results = [None] * len(fns)

    def run(i, fn):
        try:
            results[i] = fn()
        except BaseException as err:  # collected, the test inspects it
            results[i] = err

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


# --------------------------------------------------------------------------- folders

def test_resolve_dirs(tmp_path):
    env = make_env()
    cfg = make_cfg(tmp_path)
    cache = str(tmp_path / "cache")
    assert resolve_dirs(cfg, env) == (os.path.join(cache, "data", "bkt", "data"),
                                      os.path.join(cache, "output", "bkt", "out"))
    local = make_cfg(tmp_path, data_url=str(tmp_path / "d"), train_url=str(tmp_path / "o"))
    assert resolve_dirs(local, env) == (str(tmp_path / "d"), str(tmp_path / "o"))
    # No train_url: each run in a folder of its own, named by its identity.
    nowhere = make_cfg(tmp_path, data_url="", train_url="")
    assert resolve_dirs(nowhere, env) == (
        "", os.path.join(cache, "output", "local", run_identity(nowhere, env)))
    # Other tasks: a sub-folder of their own under train_url's local mirror.
    at = time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    assert resolve_dirs(cfg, env, "eval", at)[1] == os.path.join(
        cache, "output", "bkt", "out", "eval", "20260102-030405")
    assert resolve_dirs(local, env, "export", at)[1] == str(tmp_path / "o" / "export" /
                                                              "20260102-030405")
    chosen = make_cfg(tmp_path, output_dir=str(tmp_path / "mine"))
    assert resolve_dirs(chosen, env)[1] == str(tmp_path / "mine")
    assert resolve_dirs(make_cfg(tmp_path, cache_dir=""), env)[0] == os.path.abspath(
        os.path.join("runs", "cache", "data", "bkt", "data"))
    modelarts = make_env(platform="modelarts", on_modelarts=True)
    assert resolve_dirs(make_cfg(tmp_path, cache_dir=""), modelarts)[0] == \
        "/cache/data/bkt/data"


# --------------------------------------------------------------------------- staging

def test_local_data_url_used_as_is(tmp_path, mock_obs):
    data = tmp_path / "local_data"
    data.mkdir()
    job = Job(make_cfg(tmp_path, data_url=str(data)), make_env(), "train")
    assert job.stage_inputs() == str(data)


def test_data_url_errors(tmp_path, mock_obs):
    with pytest.raises(UserError, match="set --data_url=obs://"):
        Job(make_cfg(tmp_path, data_url=""), make_env(), "train").stage_inputs()
    with pytest.raises(UserError, match="data_url .*nowhere does not exist"):
        Job(make_cfg(tmp_path, data_url=str(tmp_path / "nowhere")), make_env(),
            "train").stage_inputs()
    with pytest.raises(UserError, match="obs://bkt/absent does not exist"):
        Job(make_cfg(tmp_path, data_url="obs://bkt/absent"), make_env(), "train").stage_inputs()


def test_two_local_ranks_copy_once(tmp_path, data_bucket, count_syncs):
    cfg = make_cfg(tmp_path)
    jobs = [Job(cfg, make_env(rank=r, world=2), "train") for r in (0, 1)]
    # The waiter starts first: it must not copy, and must not return before the copy is done.
    waiter, copier = in_threads(jobs[1].stage_inputs,
                                lambda: (time.sleep(0.2), jobs[0].stage_inputs())[1])
    assert waiter == copier == os.path.join(cfg["cache_dir"], "data", "bkt", "data")
    assert [c for c in count_syncs if c[0] == "obs://bkt/data"] == [("obs://bkt/data", copier)]
    assert sorted(os.listdir(os.path.join(copier, "hazy"))) == ["%d.png" % i for i in range(5)]
    staging_files = os.listdir(os.path.join(cfg["cache_dir"], staging.STAGING_DIR))
    assert [n for n in staging_files if n.endswith(".done")] and not \
        [n for n in staging_files if n.endswith(".running")]


def test_copy_failure_reaches_the_waiter_quickly(tmp_path, data_bucket):
    cfg = make_cfg(tmp_path, data_url="obs://bkt/no_such_data", rank_table_timeout=60)
    jobs = [Job(cfg, make_env(rank=r, world=2), "train") for r in (0, 1)]
    started = time.monotonic()
    waiter, copier = in_threads(jobs[1].stage_inputs,
                                lambda: (time.sleep(0.2), jobs[0].stage_inputs())[1])
    assert time.monotonic() - started < 5
    assert isinstance(copier, UserError) and "obs://bkt/no_such_data does not exist" in str(copier)
    assert isinstance(waiter, UserError)
    assert "local rank 0 could not copy obs://bkt/no_such_data" in str(waiter)
    assert "does not exist" in str(waiter)


def test_unexpected_copy_error_is_raised_on_the_waiter(tmp_path, data_bucket, monkeypatch):
    def broken(*args, **kw):
        time.sleep(0.3)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(obs_sync, "sync", broken)
    jobs = [Job(make_cfg(tmp_path), make_env(rank=r, world=2), "train") for r in (0, 1)]
    waiter, copier = in_threads(jobs[1].stage_inputs, jobs[0].stage_inputs)
    # A full disk is one line naming the folder, on the copier and on the waiter.
    assert isinstance(copier, UserError) and "no space left in" in str(copier)
    assert os.path.join("cache", "data", "bkt", "data") in str(copier)
    assert isinstance(waiter, UserError) and "no space left in" in str(waiter)


def test_unexpected_copy_error_is_raised_on_the_waiter_too(tmp_path, data_bucket, monkeypatch):
    def broken(*args, **kw):
        time.sleep(0.3)
        raise ValueError("decoder exploded")

    monkeypatch.setattr(obs_sync, "sync", broken)
    jobs = [Job(make_cfg(tmp_path), make_env(rank=r, world=2), "train") for r in (0, 1)]
    waiter, copier = in_threads(jobs[1].stage_inputs, jobs[0].stage_inputs)
    assert isinstance(copier, ValueError)
    assert isinstance(waiter, RuntimeError) and "decoder exploded" in str(waiter)


def test_stale_markers_are_not_trusted(tmp_path, data_bucket):
    cfg = make_cfg(tmp_path, rank_table_timeout=0.6)
    waiter = Job(cfg, make_env(rank=1, world=2), "train")
    markers = waiter._staging.markers("data|obs://bkt/data")
    os.makedirs(os.path.dirname(markers["done"]))
    # A 'done' from an earlier launch of the same job id, and a fresh one of another job.
    staging.write_json(markers["done"], {"job_id": "job-42", "time": time.time() - 3600})
    staging.write_json(markers["failed"], {"job_id": "other", "time": time.time(),
                                           "error": "old failure"})
    with pytest.raises(UserError, match="gave no sign of life.*rank_table_timeout"):
        waiter.stage_inputs()
    assert not os.path.exists(os.path.join(cfg["cache_dir"], "data", "bkt", "data"))

    copier = Job(cfg, make_env(rank=0, world=2), "train")
    assert os.path.isdir(copier.stage_inputs())
    assert not os.path.exists(markers["failed"])  # rank 0 cleared the old markers
    assert read_json(markers["done"])["job_id"] == "job-42"
    assert waiter.stage_inputs() == copier.data_dir


def test_waiter_times_out_when_no_rank_copies(tmp_path, data_bucket):
    cfg = make_cfg(tmp_path, rank_table_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(UserError, match=r"waited \d+ s for local rank 0 to copy obs://bkt/data"):
        Job(cfg, make_env(rank=1, world=2), "train").stage_inputs()
    assert time.monotonic() - started < 3


def test_heartbeat_keeps_the_waiter_waiting(tmp_path, data_bucket, monkeypatch):
    monkeypatch.setattr(staging, "HEARTBEAT_S", 0.1)
    real = obs_sync.sync

    def slow(src, dst, **kw):
        time.sleep(1.5)  # three times the waiter's timeout
        return real(src, dst, **kw)

    monkeypatch.setattr(obs_sync, "sync", slow)
    cfg = make_cfg(tmp_path, rank_table_timeout=0.5)
    jobs = [Job(cfg, make_env(rank=r, world=2), "train") for r in (0, 1)]
    waiter, copier = in_threads(jobs[1].stage_inputs, jobs[0].stage_inputs)
    assert waiter == copier and os.path.isdir(copier)


def test_stage_files_and_resume_fetches_only_what_it_needs(tmp_path, data_bucket):
    put(data_bucket / "bkt" / "weights" / "vgg.ckpt", b"weights")
    out = data_bucket / "bkt" / "out"
    for step in (2, 4, 6):
        put(out / "ckpt" / ("step_%08d.ckpt" % step), b"ck%d" % step)
    best = put(out / "ckpt" / "best.ckpt", b"best")
    old = time.time() - 600
    os.utime(best, (old, old))
    cfg = make_cfg(tmp_path)
    # An unfinished run of this identity whose newest *complete* checkpoint is step 4 (step 6
    # was uploaded, but the run was killed before its record pointed to it).
    record = {"run_id": run_identity(cfg, make_env()), "status": "running", "task": "train",
              "checkpoint": {"path": "ckpt/step_00000004.ckpt", "step": 4,
                             "sha256": job_module.sha256_file(str(out / "ckpt" /
                                                                  "step_00000004.ckpt"))},
              "attempts": [{"attempt": 1, "status": "running", "first_step": 0}]}
    put(out / "run.json", json.dumps(record).encode())
    with Job(cfg, make_env(), "train") as job:
        local = job.stage("obs://bkt/weights/vgg.ckpt")
        assert open(local, "rb").read() == b"weights"
        assert local == os.path.join(cfg["cache_dir"], "files", "bkt", "weights", "vgg.ckpt")
        assert job.decision.action == "resume" and job.decision.step == 4
        assert job.resume_from == os.path.join(job.output_dir, "ckpt", "step_00000004.ckpt")
        assert sorted(os.listdir(os.path.join(job.output_dir, "ckpt"))) == [
            "best.ckpt", "step_00000004.ckpt"]
    # The fetched checkpoint was not uploaded again (its copy carries the source's time).
    assert best.stat().st_mtime == pytest.approx(old, abs=1e-3)
    run = read_json(out / "run.json")
    assert [(a["attempt"], a["status"]) for a in run["attempts"]] == [(1, "lost"),
                                                                      (2, "finished")]
    assert run["attempts"][1]["first_step"] == 4
    # A finished job leaves no markers behind.
    assert os.listdir(os.path.join(cfg["cache_dir"], staging.STAGING_DIR)) == []


def test_a_damaged_checkpoint_is_not_resumed_from(tmp_path, mock_obs):
    out = mock_obs / "bkt" / "out"
    put(out / "ckpt" / "step_00000004.ckpt", b"replaced")
    cfg = make_cfg(tmp_path)
    put(out / "run.json", json.dumps({
        "run_id": run_identity(cfg, make_env()), "status": "interrupted", "task": "train",
        "checkpoint": {"path": "ckpt/step_00000004.ckpt", "step": 4, "sha256": "0" * 64}}
    ).encode())
    with pytest.raises(UserError, match="points to ckpt/step_00000004.ckpt, which differs from "
                                        "what it vouches for.*--train.resume="):
        with Job(cfg, make_env(), "train"):
            pass
    # The way out it names works: a checkpoint given by name replaces the damaged pointer.
    put(out / "ckpt" / "step_00000002.ckpt", b"older")
    given = dict(cfg, train={"resume": "obs://bkt/out/ckpt/step_00000002.ckpt"})
    with Job(given, make_env(), "train") as job:
        assert job.decision.action == "resume" and job.resume_from is None


# --------------------------------------------------------------------------- outputs

def test_push_lands_before_exit_and_run_json(tmp_path, mock_obs):
    cfg = make_cfg(tmp_path)
    out = mock_obs / "bkt" / "out"
    with Job(cfg, make_env(), "train") as job:
        assert job.output_dir == os.path.join(cfg["cache_dir"], "output", "bkt", "out")
        ckpt = put(tmp_path / "cache" / "output" / "bkt" / "out" / "ckpt" / "step_1.ckpt", b"c1")
        job.push(str(ckpt))
        job.update_run(metrics={"psnr": 30.5})
        job.wait_pushes()
        assert (out / "ckpt" / "step_1.ckpt").read_bytes() == b"c1"
        running = read_json(out / "run.json")
        assert running["status"] == "running" and running["metrics"] == {"psnr": 30.5}
        with pytest.raises(ValueError, match="not under the output folder"):
            job.push(str(tmp_path / "elsewhere.txt"))
    run = read_json(out / "run.json")
    assert run["status"] == "finished" and run["error"] is None
    assert (run["platform"], run["rank_size"], run["task"], run["job_id"]) == (
        "local", 1, "train", "job-42")
    assert run["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert "mindspore" in run["versions"] and run["durations"]["total_s"] >= 0
    assert run["start_time"] and run["end_time"]
    assert "job job-42" in (out / "logs" / "rank_0.log").read_text()


def test_final_upload_on_exception(tmp_path, mock_obs):
    cfg = make_cfg(tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError, match="boom"):
        with Job(cfg, make_env(), "train"):
            put(tmp_path / "cache" / "output" / "bkt" / "out" / "samples" / "a.png", b"png")
            logging.getLogger("test").info("about to fail")
            raise ValueError("boom")
    out = mock_obs / "bkt" / "out"
    assert (out / "samples" / "a.png").read_bytes() == b"png"
    run = read_json(out / "run.json")
    assert run["status"] == "failed" and run["error"] == "ValueError: boom"
    text = (out / "logs" / "rank_0.log").read_text()
    assert "about to fail" in text and "boom" in text
    assert signal.getsignal(signal.SIGTERM) is before


def test_failed_push_is_retried_by_the_final_upload(tmp_path, mock_obs, monkeypatch, caplog):
    real = obs_sync.sync

    def pushes_fail(src, dst, **kw):
        if kw.get("incremental") is False and src.endswith("big.ckpt"):
            raise obs_sync.TransferError("network down")
        return real(src, dst, **kw)

    monkeypatch.setattr(obs_sync, "sync", pushes_fail)
    with Job(make_cfg(tmp_path), make_env(), "train") as job:
        path = put(tmp_path / "cache" / "output" / "bkt" / "out" / "ckpt" / "big.ckpt", b"b")
        job.push(str(path))
        job.wait_pushes()
        assert not (mock_obs / "bkt" / "out" / "ckpt" / "big.ckpt").exists()
    assert "final upload retries it" in caplog.text
    assert (mock_obs / "bkt" / "out" / "ckpt" / "big.ckpt").read_bytes() == b"b"


def test_upload_failure_never_masks_the_error(tmp_path, mock_obs, monkeypatch):
    real = obs_sync.sync

    def upload_broken(src, dst, **kw):
        if str(dst).startswith("obs://bkt/out") and os.path.isdir(src):
            raise obs_sync.TransferError("OBS unreachable")
        return real(src, dst, **kw)

    monkeypatch.setattr(obs_sync, "sync", upload_broken)
    with pytest.raises(KeyError, match="the real problem"):
        with Job(make_cfg(tmp_path), make_env(), "train"):
            raise KeyError("the real problem")
    # Without an error of its own, a job whose outputs did not reach train_url fails.
    with pytest.raises(obs_sync.TransferError, match="OBS unreachable"):
        with Job(make_cfg(tmp_path), make_env(), "train"):
            pass
    # The log still made it, and says what went wrong.
    assert "final upload to obs://bkt/out failed" in \
        (mock_obs / "bkt" / "out" / "logs" / "rank_0.log").read_text()


def test_msrun_scheduler_never_copies(tmp_path, data_bucket, count_syncs):
    cfg = make_cfg(tmp_path)
    scheduler = Job(cfg, make_env(rank=0, world=2, role="scheduler", launcher="msrun"), "train")
    assert (scheduler.is_main, scheduler.is_node_main, scheduler.log_name) == (
        False, False, "scheduler.log")
    rank0 = Job(cfg, make_env(rank=0, world=2, launcher="msrun"), "train")
    waited, copied = in_threads(scheduler.stage_inputs, rank0.stage_inputs)
    assert waited == copied and len(count_syncs) == 1


def test_other_ranks_upload_only_their_log(tmp_path, mock_obs):
    cfg = make_cfg(tmp_path)
    with Job(cfg, make_env(rank=1, world=2), "train") as job:
        put(tmp_path / "cache" / "output" / "bkt" / "out" / "junk.bin")
        job.update_run(status="should be ignored")
        job.push(os.path.join(job.output_dir, "junk.bin"))
    out = mock_obs / "bkt" / "out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        os.path.join("logs", "rank_1.log")]


def test_local_train_url_is_the_output_dir(tmp_path, mock_obs):
    train = tmp_path / "train_out"
    with Job(make_cfg(tmp_path, train_url=str(train)), make_env(), "train") as job:
        assert job.output_dir == str(train)
    assert read_json(train / "run.json")["status"] == "finished"
    assert (train / "logs" / "rank_0.log").exists()


def test_another_runs_train_url_is_refused_before_anything_is_written(tmp_path, mock_obs):
    out = mock_obs / "bkt" / "out"
    ckpt = put(out / "ckpt" / "step_00000010.ckpt", b"theirs")
    leftover_local = put(tmp_path / "cache" / "output" / "bkt" / "out" / "ckpt" / "old.ckpt")
    with pytest.raises(UserError) as caught:
        with Job(make_cfg(tmp_path), make_env(), "train"):
            pytest.fail("a job must not start in another run's train_url")
    message = str(caught.value)
    assert "obs://bkt/out already holds an earlier run" in message
    assert "step_00000010.ckpt" in message and "--train.resume=auto" in message
    assert "another train_url" in message
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["step_00000010.ckpt"]
    assert ckpt.read_bytes() == b"theirs" and leftover_local.exists()

    # train.resume=auto adopts it: the local mirror starts empty, the checkpoint is fetched.
    with Job(make_cfg(tmp_path, train={"resume": "auto"}), make_env(), "train") as job:
        assert not leftover_local.exists()
        assert job.decision.action == "resume" and job.decision.step == 10
    assert ckpt.read_bytes() == b"theirs"
    assert read_json(out / "run.json")["attempts"][0]["first_step"] == 10


def test_finished_run_is_not_trained_again(tmp_path, mock_obs):
    cfg = make_cfg(tmp_path)
    with Job(cfg, make_env(), "train"):
        pass
    out = mock_obs / "bkt" / "out"
    before = (out / "run.json").read_bytes()
    with Job(cfg, make_env(), "train") as job:
        assert job.finished_already
    assert (out / "run.json").read_bytes() == before


def test_other_tasks_keep_to_their_own_folder(tmp_path, mock_obs):
    cfg = make_cfg(tmp_path)
    with Job(cfg, make_env(), "train"):
        pass
    out = mock_obs / "bkt" / "out"
    train_record = (out / "run.json").read_bytes()
    for task in ("eval", "export", "synth"):
        with Job(cfg, make_env(), task) as job:
            put(pathlib.Path(job.output_dir) / "samples" / "x.png")
            job.update_run(metrics={"psnr": 1.0})
    assert (out / "run.json").read_bytes() == train_record
    for task in ("eval", "export", "synth"):
        (folder,) = (out / task).iterdir()
        assert read_json(folder / "run.json")["task"] == task
        assert (folder / "samples" / "x.png").is_file()
        assert (folder / "logs" / "rank_0.log").is_file()


def test_sigterm_uploads_and_marks_interrupted(tmp_path, mock_obs):
    script = textwrap.dedent("""
        import os, sys, time
        sys.path.insert(0, {repo!r})
        from modelarts.environment import JobEnvironment
        from modelarts.job import Job
        env = JobEnvironment(platform="local", world_size=1, global_rank=0, local_rank=0,
                             local_world_size=1, node_rank=0, num_nodes=1, device_id=0,
                             device_target="CPU", job_id="sigterm-job", rank_table_file=None)
        cfg = {{"data_url": "", "train_url": "obs://bkt/killed", "cache_dir": {cache!r},
               "output_dir": "", "rank_table_timeout": 10, "sync": {{"threads": 2, "retries": 0}},
               "train": {{"resume": ""}}}}
        with Job(cfg, env, "train") as job:
            path = os.path.join(job.output_dir, "ckpt", "step_1.ckpt")
            os.makedirs(os.path.dirname(path))
            with open(path, "wb") as f:
                f.write(b"checkpoint")
            job.push(path)
            with open(os.path.join(job.output_dir, "late.txt"), "w") as f:
                f.write("not pushed")
            print("READY", flush=True)
            while True:
                time.sleep(0.05)
    """).format(repo=REPO, cache=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OBS_MOCK_ROOT=str(mock_obs)))
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    out = mock_obs / "bkt" / "killed"
    assert (out / "ckpt" / "step_1.ckpt").read_bytes() == b"checkpoint"
    assert (out / "late.txt").read_text() == "not pushed"
    run = read_json(out / "run.json")
    assert run["status"] == "interrupted" and "signal 15" in run["error"]
    assert "interrupted" in (out / "logs" / "rank_0.log").read_text()


def test_a_second_copy_of_a_running_command_is_warned(tmp_path, mock_obs, caplog):
    cfg = make_cfg(tmp_path)
    with Job(cfg, make_env(), "train") as first:
        first.wait_pushes()  # its record has reached train_url
        other = dict(cfg, cache_dir=str(tmp_path / "cache2"))
        with caplog.at_level(logging.WARNING):
            with Job(other, make_env(), "train") as second:
                assert second.decision.action == "resume"
    assert "attempt 1 of this run" in caplog.text and "may still be running" in caplog.text
    caplog.clear()
    out = mock_obs / "bkt" / "out" / "run.json"
    record = read_json(out)
    record["status"] = "interrupted"
    record["attempts"][-1]["status"] = "interrupted"
    out.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):  # an attempt that ended is no cause for alarm
        with Job(cfg, make_env(), "train") as job:
            assert job.decision.action == "resume"
    assert "may still be running" not in caplog.text
