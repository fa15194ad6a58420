"""Which run a train_url belongs to, and what a training job does about the run it finds there.

A run has an identity. On ModelArts it is the job id (``JOB_ID`` stays the same across the
platform's auto restarts); elsewhere it is a fingerprint of the settings that decide what is
trained (model, data, net, losses, optimizers, schedule, steps, seed, data_url, train_url and
the number of ranks), not of local folders, thread counts or logging. ``run.json`` in train_url
records the identity, the pointer to the newest complete checkpoint (written only after that
file has reached train_url) and one entry per attempt: start, end, status, first and last step,
platform and why it ended.

``decide()`` turns what train_url holds into one of four actions:

* ``fresh`` — nothing there: train from step 0;
* ``resume`` — an unfinished run of the same identity (a restart, a re-run of the same
  command), or any run when ``train.resume=auto`` says to adopt it: continue from its newest
  complete checkpoint;
* ``finished`` — the same run already finished: nothing to train, exit 0;
* ``refuse`` — another run's record or checkpoints: stop before staging any data, naming both
  runs and the ways out. Nothing in train_url is ever replaced by another run.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

RECORD_NAME = "run.json"
CKPT_DIR = "ckpt"
BEST_NAME = "best.ckpt"
_STEP_RE = re.compile(r"^step_(\d+)\.ckpt$")

# Keys that do not change what is trained: where things go locally, how fast, how loud, when
# to look. Dotted paths from the top of the config; a bare name matches at any depth.
NOT_IDENTITY = frozenset({
    "platform", "device_target", "mode", "cache_dir", "output_dir", "rank_table_timeout",
    "sync", "eval", "export", "synth", "preprocess",
    "train.log_every", "train.eval_every", "train.ckpt_every", "train.keep_last",
    "train.resume", "train.jit",
    "num_workers", "prefetch", "cache_mb",
})

# Attempt statuses. "lost": the attempt never recorded its end (SIGKILL, OOM, node loss).
FINAL_STATUSES = ("finished", "failed", "interrupted", "lost")


def _identity_view(node: Any, path: str = "") -> Any:
    if not isinstance(node, dict):
        return node
    out = {}
    for key in sorted(node):
        dotted = path + key
        if key in NOT_IDENTITY or dotted in NOT_IDENTITY:
            continue
        out[key] = _identity_view(node[key], dotted + ".")
    return out


def _leaves(node: Any, path: str = "") -> Dict[str, Any]:
    if not isinstance(node, dict):
        return {path.rstrip("."): node}
    out: Dict[str, Any] = {}
    for key, value in node.items():
        out.update(_leaves(value, path + key + "."))
    return out


def differences(old_cfg: dict, new_cfg: dict) -> List[str]:
    """'key old → new' for every setting that decides the weights and differs."""
    old, new = _leaves(_identity_view(old_cfg)), _leaves(_identity_view(new_cfg))
    return ["%s %s → %s" % (k, old.get(k, "(unset)"), new.get(k, "(unset)"))
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def fingerprint(cfg: dict, world_size: int = 1) -> str:
    """A short digest of what decides the trained weights (see NOT_IDENTITY for what not)."""
    view = {"config": _identity_view(cfg), "world_size": int(world_size)}
    blob = json.dumps(view, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:12]


def run_identity(cfg: dict, env) -> str:
    """``job-<JOB_ID>`` on ModelArts (kept across auto restarts), else ``cfg-<fingerprint>``."""
    if getattr(env, "on_modelarts", False) and env.job_id:
        return "job-%s" % re.sub(r"[^A-Za-z0-9_.-]", "_", str(env.job_id))
    return "cfg-%s" % fingerprint(cfg, env.world_size)


def step_of(name: str) -> Optional[int]:
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


def step_name(step: int) -> str:
    return "step_%08d.ckpt" % int(step)


def newest_step(names: Iterable[str]) -> Optional[Tuple[str, int]]:
    """('ckpt/step_N.ckpt', N) of the highest step among checkpoint file names, or None."""
    steps = sorted((step_of(n), n) for n in names if step_of(n) is not None)
    return (CKPT_DIR + "/" + steps[-1][1], steps[-1][0]) if steps else None


@dataclass(frozen=True)
class Decision:
    action: str                     # fresh | resume | finished | refuse
    checkpoint: Optional[str] = None   # relative to train_url, e.g. ckpt/step_00000040.ckpt
    step: int = 0                   # the step training continues from
    message: str = ""


def _describe(record: Optional[dict], ckpts: List[str]) -> str:
    if record and record.get("run_id"):
        pointer = (record.get("checkpoint") or {}).get("step")
        status = record.get("status", "?")
        if status == "running":
            status = "running, or killed before recording its end"
        return "run %s (%s, %s)" % (record["run_id"], status,
                                    "step %s" % pointer if pointer is not None
                                    else "no checkpoint yet")
    return "an earlier run without a run record (%d checkpoint(s): %s)" % (
        len(ckpts), ", ".join(sorted(ckpts)[-2:]))


def decide(record: Optional[dict], ckpts: Iterable[str], run_id: str, resume: str,
           where: str, max_steps: Optional[int] = None, changed: str = "") -> Decision:
    """What a training job with identity ``run_id`` does with train_url ``where``, which holds
    ``record`` (its run.json, or None) and the checkpoint files ``ckpts`` (names under ckpt/).
    ``resume``: the config's train.resume ('' = continue this run only, 'auto' = continue
    whatever run is there). ``changed``: which settings differ from the run there, if known."""
    ckpts = [c for c in ckpts if step_of(c) is not None or c == BEST_NAME]
    has_run = bool(record) or bool(ckpts)
    same = bool(record) and record.get("run_id") == run_id
    if (record and not same and not ckpts and not (record.get("checkpoint") or {}).get("path")
            and record.get("status") in ("failed", "interrupted")):
        # A job that failed before saving anything (a typo in data_url...) trained nothing:
        # its fixed resubmission takes the train_url; the old record is kept inside the new.
        return Decision("fresh", message="new run %s in %s (replacing the record of run %s, "
                                         "which %s before saving any checkpoint)" % (
                                             run_id, where, record.get("run_id"),
                                             record.get("status")))
    if not has_run:
        return Decision("fresh", message="new run %s in %s" % (run_id, where))
    if not same and resume != "auto":
        return Decision("refuse", message=(
            "%s already holds %s; this job is run %s with other settings%s, and a train_url "
            "belongs to one run. Use another train_url, or --train.resume=auto to continue "
            "the run that is there with these settings" % (
                where, _describe(record, ckpts), run_id,
                " (%s)" % changed if changed else "")))
    if same and record.get("status") == "finished":
        step = (record.get("checkpoint") or {}).get("step")
        return Decision("finished", step=int(step or 0), message=(
            "run %s in %s already finished (step %s): nothing to train. --task=eval or "
            "--task=export redo those; --train.resume=auto with a larger --train.max_steps "
            "trains on; another train_url starts a new run" % (run_id, where, step)))
    pointer = (record or {}).get("checkpoint") or {}
    if pointer.get("path"):
        checkpoint, step = pointer["path"], int(pointer.get("step") or 0)
    elif not record or not record.get("run_id"):
        # A run from before run records: its newest step file is all there is to go by.
        checkpoint, step = newest_step(ckpts) or (None, 0)
    else:
        checkpoint, step = None, 0  # the run never completed a checkpoint upload
    if not same and max_steps is not None and step >= max_steps:
        return Decision("refuse", message=(
            "%s is already at step %d, at or past train.max_steps %d: raise --train.max_steps "
            "to train on, or use another train_url" % (where, step, max_steps)))
    what = "continuing" if same else "adopting (train.resume=auto)"
    origin = "from %s (step %d)" % (checkpoint, step) if checkpoint else "from step 0"
    return Decision("resume", checkpoint=checkpoint, step=step,
                    message="%s %s in %s %s" % (what, _describe(record, ckpts), where, origin))


# --------------------------------------------------------------------------- attempts

def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def open_attempt(record: Optional[dict], *, run_id: str, fp: str, decision: Decision, env,
                 started: float) -> dict:
    """The record with a new attempt appended: earlier attempts that never recorded their end
    are closed as 'lost'."""
    record = dict(record or {})
    if decision.action == "fresh" and record:
        # A failed record that trained nothing, replaced by this run (see decide()).
        record = {"replaced": {k: record.get(k) for k in ("run_id", "status", "error",
                                                           "attempts")}}
    attempts: List[Dict[str, Any]] = [dict(a) for a in record.get("attempts") or []]
    for attempt in attempts:
        if attempt.get("status") not in FINAL_STATUSES:
            attempt["status"] = "lost"
            attempt["reason"] = attempt.get("reason") or (
                "no end recorded: killed (SIGKILL, out of memory or node loss)")
    if record.get("run_id") and record["run_id"] != run_id:
        # train.resume=auto adopted another run: its later restarts are this identity's.
        record["adopted_from"] = list(record.get("adopted_from") or []) + [record["run_id"]]
    attempts.append({
        "attempt": len(attempts) + 1, "start": iso(started), "end": None, "status": "running",
        "first_step": decision.step, "last_step": decision.step, "platform": env.platform,
        "job_id": env.job_id, "host": socket.gethostname(), "reason": None,
    })
    record.update(run_id=run_id, fingerprint=fp, attempts=attempts, status="running")
    return record


def close_attempt(record: dict, *, status: str, reason: Optional[str], ended: float,
                  last_step: Optional[int] = None) -> dict:
    attempts = record.get("attempts") or []
    if attempts:
        current = attempts[-1]
        current.update(status=status, end=iso(ended), reason=reason)
        if last_step is not None:
            current["last_step"] = int(last_step)
    record["status"] = status
    return record
