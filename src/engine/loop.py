"""The training loop: steps, logging, checkpoints, evaluation. Everything model-specific is in
the recipe; everything platform-specific is in the job (on_event, on_saved).

Failure policy
- A non-finite loss (checked whenever the loss is read: at log, checkpoint and eval steps) stops
  training with NonFiniteLoss and saves nothing: the train step never applies a non-finite
  update, but the state that produced NaN is not one to resume from; the last periodic
  checkpoint is. With dynamic loss scaling an overflow is expected now and then (the step is
  skipped and the scale halves), so only several readings in a row stop it.
- Any other exception, KeyboardInterrupt or SystemExit (the job turns SIGTERM into one) saves a
  checkpoint first when steps were trained since the last one, then propagates: nothing
  trained is lost, and the job layer does the final upload."""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Callable, Dict, Optional, Tuple

from src.engine.curves import MetricsHistory
from src.engine.interrupts import deferred
from src.engine.progress import ProgressLogger, current_lr, to_floats
from src.errors import UserError

log = logging.getLogger(__name__)

# Consecutive non-finite loss readings tolerated with dynamic loss scaling.
DYNAMIC_SCALE_PATIENCE = 3


class NonFiniteLoss(RuntimeError):
    pass


def _strip_images(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "images"}


def check_schedules(cells: dict, max_steps: int) -> None:
    """A per-step learning-rate array shorter than the run makes MindSpore fail deep inside the
    optimizer once global_step passes its end; say so before training starts."""
    from mindspore import nn

    for key, cell in cells.items():
        if not isinstance(cell, nn.Optimizer) or not cell.dynamic_lr:
            continue
        schedules = cell.learning_rate if isinstance(cell.learning_rate, (tuple, list)) \
            else [cell.learning_rate]
        for schedule in schedules:
            values = getattr(schedule, "learning_rate", None)
            if values is not None and hasattr(values, "shape") and len(values.shape) == 1 \
                    and values.shape[0] < max_steps:
                raise ValueError("optimizer %r has a learning-rate array of %d steps, shorter "
                                 "than train.max_steps %d: build the schedule for max_steps"
                                 % (key, values.shape[0], max_steps))


def optimizer_steps(cells: dict) -> Dict[str, int]:
    """key → updates applied, for every optimizer among `cells`."""
    from mindspore import nn

    return {key: int(cell.global_step.asnumpy().reshape(-1)[0]) for key, cell in cells.items()
            if isinstance(cell, nn.Optimizer)}


def check_consistent(path: str, step: int, cells: dict) -> None:
    """A checkpoint's step must cover every update its optimizers applied (skipped non-finite
    steps make an optimizer lag, never lead). One that claims fewer steps was cut by an
    interrupt mid-step (written before this check existed): resuming from it runs past the end
    of the learning-rate schedule."""
    ahead = {k: n for k, n in optimizer_steps(cells).items() if n > step}
    if ahead:
        raise UserError("checkpoint %s says step %d but its optimizer(s) applied more updates "
                        "(%s): it was saved in the middle of a step; resume from an earlier "
                        "checkpoint (--train.resume=<that .ckpt>)" % (
                            path, step, ", ".join("%s: %d" % kv for kv in ahead.items())))


def train(recipe, cfg: dict, *, output_dir: str, ckpt, is_main: bool,
          on_event: Optional[Callable[..., None]] = None,
          resume_from: Optional[str] = None) -> dict:
    """Train `recipe` (already built) until train.max_steps, continuing from the checkpoint
    `resume_from` when given; → summary dict {steps, start_step, seconds, first_step_seconds,
    images_per_second, metrics, checkpoint}."""
    from src.engine.evaluate import evaluate

    tcfg = cfg["train"]
    ecfg = cfg.get("eval", {})
    max_steps = int(tcfg["max_steps"])
    log_every = max(1, int(tcfg.get("log_every", 10) or 1))
    eval_every = int(tcfg.get("eval_every", 0) or 0)
    ckpt_every = int(tcfg.get("ckpt_every", 0) or 0)
    patience = DYNAMIC_SCALE_PATIENCE if str(tcfg.get("loss_scale", 1.0)) == "dynamic" else 1
    emit = on_event or (lambda name, **data: None)
    samples_dir = os.path.join(output_dir, "samples")

    validate_train_config(cfg)
    cells = recipe.checkpoint_cells()
    check_schedules(cells, max_steps)
    loader = recipe.train_loader()
    steps_per_epoch = len(loader)
    step = 0
    extra: dict = {}
    if resume_from:
        with deferred():
            extra = ckpt.load(resume_from, cells)
        step = int(extra.get("step", 0))
        check_consistent(resume_from, step, cells)
        log.info("resuming from %s at step %d", resume_from, step)
    start_step = step
    emit("start", step=step)
    if step >= max_steps:
        log.info("nothing to train: resumed at step %d >= train.max_steps %d", step, max_steps)

    world = int(getattr(getattr(recipe, "ctx", None), "num_shards", 1) or 1)
    progress = ProgressLogger(max_steps, every=log_every, batch_size=loader.batch_size,
                              world_size=world)
    # metrics.csv / curves.png: rank 0 writes them (the job pushes them with checkpoints).
    history = MetricsHistory(output_dir, start_step=step) if is_main else None
    state = {"saved_step": step, "bad_readings": 0}
    metrics: dict = {}
    last_eval_step = -1

    def check_finite(values: Dict[str, float], at: int) -> None:
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if not bad:
            state["bad_readings"] = 0
            return
        state["bad_readings"] += 1
        if state["bad_readings"] >= patience:
            raise NonFiniteLoss(
                "non-finite loss at step %d (%s): training stopped; lower optim.lr or resume "
                "from the last checkpoint in %s" % (at, ", ".join(
                    "%s=%s" % kv for kv in bad.items()), ckpt.directory))
        log.warning("non-finite loss at step %d (%s); the step was skipped", at, bad)

    def save(at: int, metric: Optional[float] = None) -> Optional[str]:
        epoch = at // steps_per_epoch
        with deferred():  # an interrupt waits for the file to be complete
            path = ckpt.save(at, cells, {"epoch": epoch}, metric=metric)
        state["saved_step"] = at
        # On every rank (path None where another rank writes): each pushes its own log.
        emit("checkpoint", step=at, path=path,
             best=path is not None and metric is not None and ckpt.best_step == at)
        return path

    def run_eval(at: int) -> dict:
        with deferred():
            return _run_eval(at)

    def _run_eval(at: int) -> dict:
        result = evaluate(recipe.predict, recipe.val_samples(),
                          pad_multiple=int(ecfg.get("pad_multiple", 4)),
                          scale=recipe.output_scale(), samples_dir=samples_dir,
                          num_samples=int(ecfg.get("num_samples", 4)),
                          max_images=int(ecfg.get("max_images", 0)))
        summary = _strip_images(result)
        summary["step"] = at
        if history is not None and summary.get("count"):
            history.log_eval(at, at // steps_per_epoch, summary)
        emit("eval", **summary)
        return summary

    def due(at: int) -> Tuple[bool, bool]:
        """(evaluate, checkpoint) at step `at`, as the schedule says."""
        return (is_main and (at == max_steps or (eval_every > 0 and at % eval_every == 0)),
                at == max_steps or (ckpt_every > 0 and at % ckpt_every == 0))

    def eval_and_save(at: int, do_eval: bool, do_ckpt: bool) -> None:
        nonlocal metrics, last_eval_step
        metric = None
        if do_eval:
            metrics = run_eval(at)
            last_eval_step = at
            metric = metrics.get("psnr")
            # Keep the weights behind a new best even between checkpoint steps.
            do_ckpt = do_ckpt or ckpt.is_better(metric)
        if do_ckpt:
            save(at, metric)

    # An interrupt between a step and its evaluation saved that step without a metric: the
    # evaluation an uninterrupted run made there comes first (best.ckpt depends on it).
    if resume_from and extra.get("metric") is None and due(step)[0]:
        log.info("evaluating step %d first: the earlier attempt stopped before it could", step)
        eval_and_save(step, True, due(step)[1])

    started = time.time()
    first_step_seconds = None
    steady_from = None  # (time, step) after the first step: throughput excludes compilation
    excluded = 0.0  # seconds spent evaluating and checkpointing since then
    try:
        while step < max_steps:
            epoch, start_batch = divmod(step, steps_per_epoch)
            loader.set_epoch(epoch, start_batch)
            batches = iter(loader)
            try:
                for batch in batches:
                    # The step and its counting are one: an interrupt is raised after both.
                    with deferred():
                        terms = recipe.train_step(batch)
                        step += 1
                    values = None
                    if first_step_seconds is None:
                        values = to_floats(terms)  # waits for the device: the real step time
                        first_step_seconds = time.time() - started
                        log.info("first step (compilation included) took %.1f s",
                                 first_step_seconds)
                        steady_from = (time.time(), step)
                        progress.start(step)
                    record = progress.update(step, terms, current_lr(cells))
                    if record is not None:
                        values = record["terms"]
                        if history is not None:
                            history.log_step(record, step // steps_per_epoch)
                        emit("step_log", **record)
                    do_eval, do_ckpt = due(step)
                    if values is None and (do_ckpt or do_eval):
                        values = to_floats(terms)
                    if values is not None:
                        check_finite(values, step)
                    paused = time.time()
                    eval_and_save(step, do_eval, do_ckpt)
                    if do_eval or do_ckpt:
                        # Throughput and ETA measure training, not evaluation and saving.
                        paused = time.time() - paused
                        progress.exclude(paused)
                        excluded += paused
                    if step >= max_steps:
                        break
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()  # stops the loader's threads when we leave mid-epoch
        if is_main and last_eval_step != step and step > start_step:
            metrics = run_eval(step)
        if state["saved_step"] != step and step > start_step:
            save(step, metrics.get("psnr") if metrics else None)
    except NonFiniteLoss:
        progress.close()
        raise
    except BaseException as exc:
        progress.close()
        if step > state["saved_step"]:
            log.warning("%s during training at step %d: saving a checkpoint before stopping",
                        type(exc).__name__, step)
            try:
                save(step)
            except Exception as save_exc:  # the original error matters more
                log.error("could not save the checkpoint at step %d: %s", step, save_exc)
        raise
    progress.close()

    seconds = time.time() - started
    ips = None
    if steady_from is not None and step > steady_from[1]:
        ips = ((step - steady_from[1]) * loader.batch_size * world
               / max(1e-9, time.time() - steady_from[0] - excluded))
    summary = {
        "steps": step,
        "start_step": start_step,
        "seconds": round(seconds, 3),
        "first_step_seconds": (round(first_step_seconds, 3) if first_step_seconds is not None
                               else None),
        "images_per_second": round(ips, 3) if ips is not None else None,
        "metrics": metrics,
        "checkpoint": ckpt.latest() if is_main else None,
        "best_checkpoint": (os.path.join(ckpt.directory, "best.ckpt")
                            if is_main and ckpt.best_step is not None else None),
    }
    log.info("trained %d steps (%d → %d) in %.1f s%s", step - start_step, start_step, step,
             seconds, "; %.1f img/s" % ips if ips else "")
    return summary


def validate_train_config(cfg: dict) -> None:
    """Cheap checks the loop relies on (the config schema checks types)."""
    t = cfg["train"]
    if int(t["max_steps"]) < 1:
        raise UserError("train.max_steps must be >= 1, got %r" % t["max_steps"])
    for key in ("log_every", "eval_every", "ckpt_every"):
        if int(t.get(key, 0) or 0) < 0:
            raise UserError("train.%s must be >= 0, got %r" % (key, t[key]))
