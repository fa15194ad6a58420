"""modelarts.run_record: a run's identity, and what a job does with the run it finds."""
from __future__ import annotations

import copy

from modelarts.environment import JobEnvironment
from modelarts.run_record import (close_attempt, decide, differences, fingerprint, open_attempt,
                                  run_identity)

CFG = {"model": "aecrnet", "seed": 0, "data_url": "obs://b/data", "train_url": "obs://b/out",
       "cache_dir": "", "output_dir": "", "platform": "auto", "mode": "graph",
       "sync": {"threads": 8, "retries": 3},
       "data": {"batch_size": 4, "num_workers": 2, "prefetch": 4,
                "train": {"type": "PairedDehaze", "path": "train", "crop": 48, "cache_mb": 64}},
       "optim": {"lr": 1e-3},
       "train": {"max_steps": 200, "log_every": 20, "eval_every": 50, "ckpt_every": 100,
                 "keep_last": 3, "resume": "", "jit": True, "loss_scale": 1.0},
       "eval": {"max_images": 8}, "export": {"height": 64, "width": 64}}


def env(**kw):
    fields = dict(platform="local", world_size=1, global_rank=0, local_rank=0,
                  local_world_size=1, node_rank=0, num_nodes=1, device_id=0,
                  device_target="CPU", job_id="local", rank_table_file=None)
    fields.update(kw)
    return JobEnvironment(**fields)


def changed(path, value):
    cfg = copy.deepcopy(CFG)
    node = cfg
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return cfg


def test_fingerprint_follows_what_decides_the_weights():
    base = fingerprint(CFG)
    for path, value in [("optim.lr", 2e-3), ("data.batch_size", 8), ("train.max_steps", 300),
                        ("seed", 1), ("data_url", "obs://b/other"), ("train_url", "obs://b/o2"),
                        ("data.train.crop", 64), ("train.loss_scale", "dynamic")]:
        assert fingerprint(changed(path, value)) != base, path
    for path, value in [("sync.threads", 2), ("data.num_workers", 1), ("train.log_every", 1),
                        ("train.keep_last", 1), ("train.resume", "auto"), ("cache_dir", "/x"),
                        ("eval.max_images", 2), ("export.height", 32), ("mode", "pynative"),
                        ("data.train.cache_mb", 0), ("train.ckpt_every", 10)]:
        assert fingerprint(changed(path, value)) == base, path
    assert fingerprint(CFG, world_size=8) != base  # the global batch is per device × ranks


def test_identity_is_the_job_id_on_modelarts():
    assert run_identity(CFG, env()) == "cfg-" + fingerprint(CFG)
    on_ma = env(platform="modelarts", job_id="a1b2-c3", on_modelarts=True)
    assert run_identity(CFG, on_ma) == "job-a1b2-c3"
    assert run_identity(changed("optim.lr", 5e-4), on_ma) == "job-a1b2-c3"


def test_decide():
    me, other = "cfg-aaa", "cfg-bbb"
    assert decide(None, [], me, "", "obs://b/out").action == "fresh"
    running = {"run_id": me, "status": "running",
               "checkpoint": {"path": "ckpt/step_00000040.ckpt", "step": 40}}
    d = decide(running, ["step_00000040.ckpt", "step_00000050.ckpt", "best.ckpt"], me, "",
               "obs://b/out")
    # The pointer, not the newest file: step 50 was never vouched for.
    assert (d.action, d.checkpoint, d.step) == ("resume", "ckpt/step_00000040.ckpt", 40)
    killed_early = {"run_id": me, "status": "running"}
    assert decide(killed_early, [], me, "", "x") == decide(killed_early, [], me, "", "x")
    assert decide(killed_early, [], me, "", "x").checkpoint is None
    finished = dict(running, status="finished")
    assert decide(finished, ["step_00000040.ckpt"], me, "", "x").action == "finished"
    refused = decide(running, ["step_00000040.ckpt"], other, "", "obs://b/out")
    assert refused.action == "refuse"
    assert "run cfg-aaa (running, or killed before recording its end, step 40)" in \
        refused.message and "cfg-bbb" in refused.message
    adopted = decide(finished, ["step_00000040.ckpt"], other, "auto", "obs://b/out")
    assert (adopted.action, adopted.step) == ("resume", 40)
    legacy = decide(None, ["step_00000010.ckpt", "step_00000020.ckpt"], me, "auto", "x")
    assert (legacy.checkpoint, legacy.step) == ("ckpt/step_00000020.ckpt", 20)
    assert decide(None, ["step_00000010.ckpt"], me, "", "x").action == "refuse"
    assert decide(None, ["notes.txt"], me, "", "x").action == "fresh"
    # A run that failed before saving anything (data_url typo) does not claim the train_url.
    typo = {"run_id": other, "status": "failed", "error": "obs://nope does not exist"}
    fixed = decide(typo, [], me, "", "obs://b/out")
    assert fixed.action == "fresh" and "replacing the record of run cfg-bbb" in fixed.message
    record = open_attempt(typo, run_id=me, fp="a", decision=fixed, env=env(), started=0.0)
    assert record["replaced"]["error"] == "obs://nope does not exist"
    assert [a["status"] for a in record["attempts"]] == ["running"]
    assert decide(dict(typo, status="running"), [], me, "", "x").action == "refuse"
    # Adopting a run already at or past this config's max_steps would train nothing.
    past = decide(finished, ["step_00000040.ckpt"], other, "auto", "obs://b/out", max_steps=30)
    assert past.action == "refuse" and "already at step 40" in past.message
    assert "train.max_steps 30" in past.message
    changed = decide(running, [], other, "", "x", changed="optim.lr 0.001 → 0.0005").message
    assert "with other settings (optim.lr 0.001 → 0.0005)" in changed


def test_differences_name_what_decides_the_weights():
    assert differences(CFG, changed("optim.lr", 5e-4)) == ["optim.lr 0.001 → 0.0005"]
    assert differences(CFG, changed("sync.threads", 1)) == []


def test_attempts():
    d = decide(None, [], "cfg-a", "", "x")
    record = open_attempt(None, run_id="cfg-a", fp="a", decision=d, env=env(), started=0.0)
    assert [a["status"] for a in record["attempts"]] == ["running"]
    # Killed with SIGKILL: no end recorded. The next attempt closes it as lost.
    d = decide(record, [], "cfg-a", "", "x")
    record = open_attempt(record, run_id="cfg-a", fp="a", decision=d, env=env(), started=1.0)
    assert [a["status"] for a in record["attempts"]] == ["lost", "running"]
    assert "SIGKILL" in record["attempts"][0]["reason"]
    close_attempt(record, status="interrupted", reason="interrupted by signal 15", ended=2.0,
                  last_step=30)
    assert record["attempts"][1]["last_step"] == 30 and record["status"] == "interrupted"
