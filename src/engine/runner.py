"""One function per task, called by start.py inside the job's lifecycle.

Recipes see local folders only: this module stages what a config names by URL (data, raw
data, weight files, checkpoints) and hands back what a task writes (synthetic data, HDF5 sets).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Dict

from src.errors import UserError

log = logging.getLogger(__name__)

# Config keys whose URL values are places (synced as folders by the job or by a task), not
# files to fetch before the recipe is built.
LOCATION_KEYS = frozenset({"data_url", "train_url", "output_url", "raw_url", "cache_dir",
                           "output_dir"})


def describe_plan(cfg: dict, env, plan) -> dict:
    """What `--task plan` prints: everything decided before touching data or devices."""
    from modelarts.job import resolve_dirs
    from modelarts.run_record import run_identity

    data_dir, output_dir = resolve_dirs(cfg, env)
    return {
        "config": cfg,
        "platform": env.platform,
        "rank_id": env.global_rank,
        "rank_size": env.world_size,
        "local_rank": env.local_rank,
        "node_rank": env.node_rank,
        "device_id": env.device_id,
        "device_target": plan.device_target,
        "parallel_mode": plan.parallel_mode,
        "data_url": cfg["data_url"],
        "train_url": cfg["train_url"],
        "data_dir": data_dir,
        "output_dir": output_dir,
        "run_id": run_identity(cfg, env),
    }


def run_task(task: str, cfg: dict, env, plan, job) -> int:
    """Run one task; returns the process exit status."""
    from src.recipes.base import get_recipe

    recipe_cls = get_recipe(cfg["model"])
    if task == "synth":
        return _synth(recipe_cls, cfg, job)
    if task == "preprocess":
        return _preprocess(recipe_cls, cfg, job)
    if task in ("train", "eval", "export", "infer"):
        return _with_model(task, recipe_cls, cfg, env, plan, job)
    raise UserError("unknown task %r" % task)


def _synth(recipe_cls, cfg: dict, job) -> int:
    """Write the synthetic set into a scratch folder, then to the destination, which must be
    empty or hold only this model's earlier synthetic output (src/data/manifest.py): synth
    never overwrites or mixes with data it did not write."""
    import obs_sync
    from src.data import manifest as mf

    target = cfg.get("synth", {}).get("output_url") or cfg["data_url"]
    if not target:
        raise UserError("--task=synth needs a destination: set --data_url (or --synth.output_url)")
    model = cfg["model"]
    started = time.time()
    listing = obs_sync.list_files(target)
    fetched = mf.fetch(target, mf.SYNTH_MANIFEST, job.scratch_dir, listing, _sync_options(cfg))
    previous = mf.read_synth_manifest(fetched)
    mf.check_synth_destination(target, model, listing, previous)  # before anything is written

    local = os.path.join(job.scratch_dir, "synth")
    summary = recipe_cls.synthesize(cfg, local)
    written = {rel: e.size for rel, e in obs_sync.list_local_dir(local).items()
               if rel != mf.SYNTH_MANIFEST}
    # Files of our earlier run this one did not rewrite (e.g. fewer scenes now) would mix two
    # data sets: they are removed (they are ours: the manifest lists them).
    stale = sorted(rel for rel in (previous or {}).get("files", {})
                   if rel in listing and rel not in written)
    for rel in stale:
        obs_sync.remove(mf.join_url(target, rel), retries=_sync_options(cfg)["retries"])
    if stale:
        log.info("removed %d file(s) of the earlier synthetic set that this run does not "
                 "write, e.g. %s", len(stale), stale[0])
    path = mf.write_synth_manifest(os.path.join(local, mf.SYNTH_MANIFEST), mf.synth_manifest(
        model, dict(written), summary, cfg.get("synth", {})))
    # The manifest goes first: an upload cut short leaves only files it already claims.
    obs_sync.sync(path, mf.join_url(target, mf.SYNTH_MANIFEST), incremental=False,
                  **_sync_options(cfg))
    obs_sync.sync(local, target, exclude=(mf.SYNTH_MANIFEST,), **_sync_options(cfg))
    log.info("synthetic data for %s written to %s in %.1f s: %s",
             model, target, time.time() - started, summary)
    job.update_run(synth=summary)
    return 0


def _preprocess(recipe_cls, cfg: dict, job) -> int:
    import obs_sync

    raw_url = cfg.get("preprocess", {}).get("raw_url", "")
    target = cfg["data_url"]
    if not raw_url:
        raise UserError("--task=preprocess reads raw files from --preprocess.raw_url: set it")
    if not target:
        raise UserError("--task=preprocess writes to --data_url: set it")
    from src.data import manifest as mf

    raw_dir = job.stage(raw_url, "raw")
    done: dict = {}
    if obs_sync.is_remote(target):
        out_dir = os.path.join(job.scratch_dir, "preprocessed")
        os.makedirs(out_dir, exist_ok=True)
        # Skip what the destination already holds from its listing, no download of the set:
        # a listed file counts as done only at the size the destination's manifest recorded
        # when it was complete (the manifest is fetched into out_dir, where preprocess reads
        # and extends it).
        listing = obs_sync.list_files(target, retries=_sync_options(cfg)["retries"])
        if mf.fetch(target, mf.PREPROCESS_MANIFEST, out_dir, listing, _sync_options(cfg)):
            done = mf.listed_sizes(target, listing, mf.FileLog(out_dir).sizes)
        else:
            done = {rel: None for rel in listing}   # named, never trusted without sizes
    else:
        out_dir = target  # local outputs are opened and checked (validate_h5) instead
    report = recipe_cls.preprocess(cfg, raw_dir, out_dir, done=done)
    if out_dir != target:
        # The manifest last: it then claims only files already uploaded.
        obs_sync.sync(out_dir, target, exclude=(mf.PREPROCESS_MANIFEST,), **_sync_options(cfg))
        obs_sync.sync(os.path.join(out_dir, mf.PREPROCESS_MANIFEST),
                      mf.join_url(target, mf.PREPROCESS_MANIFEST), incremental=False,
                      **_sync_options(cfg))
    job.update_run(preprocess=report)
    failed = report.get("failed") or []
    if failed:
        # The exit status says it too: a job that lost files must not look green.
        log.error("%d raw file(s) failed to convert and were skipped: %s",
                  len(failed), ", ".join(failed))
        return 1
    return 0


def _with_model(task: str, recipe_cls, cfg: dict, env, plan, job) -> int:
    from modelarts.context import apply_context
    from src.engine.interrupts import deferred

    if job.finished_already:
        # The run in train_url is complete (the job said so): nothing to train. Ranks still
        # join the cluster, so that msrun's scheduler ends cleanly instead of timing out.
        if plan.init_communication:
            with deferred():
                apply_context(plan)
        return 0
    from src.config import dump_config
    from src.engine.checkpoint import CheckpointManager, resolve_resume
    from src.recipes.base import RecipeContext

    is_main = env.global_rank == 0
    source = str(cfg["eval"].get("checkpoint", "") or "")
    path = None
    if task != "train" and source in ("", "auto"):
        # Known before staging the data set: nothing to evaluate is said at once.
        path = job.run_checkpoint()
        if path is None:
            raise UserError("no checkpoint to %s: set --eval.checkpoint to a .ckpt path or "
                            "URL, or none (train_url %s holds none)"
                            % (task, cfg.get("train_url") or "''"))
    data_dir = job.stage_inputs() if task in ("train", "eval") else ""
    # infer reads photos from data_url, not the data set the recipe's sources describe.
    photos_dir = job.stage_inputs() if task == "infer" else ""
    given_cfg = cfg  # as the user wrote it: config.yaml keeps obs:// URLs, not cache copies
    cfg = stage_remote_files(cfg, job)
    if task == "infer" and path is None and str(cfg["eval"]["checkpoint"]).endswith(".mindir"):
        return _infer_mindir(recipe_cls, cfg, plan, job, photos_dir)
    # A SIGTERM inside MindSpore's import or graph building can leave the process unable to
    # exit: it waits until the model is built (src/engine/interrupts.py).
    with deferred():
        import mindspore as ms

        apply_context(plan)
        # Same seed on every rank: data-parallel replicas must start from identical weights.
        ms.set_seed(int(cfg["seed"]))
        ctx = RecipeContext(data_dir=data_dir, output_dir=job.output_dir,
                            num_shards=plan.num_shards, shard_id=plan.shard_id,
                            distributed=plan.parallel_mode == "data_parallel",
                            is_main=is_main, seed=int(cfg["seed"]), task=task)
        recipe = recipe_cls(cfg, ctx)
        recipe.build()
    # Staged copies (weights given by URL) are recorded by the URL the user gave.
    job.update_run(model={k: job.describe_path(v) if isinstance(v, str) else v
                          for k, v in recipe.describe().items()})
    ckpt_dir = os.path.join(job.output_dir, "ckpt")
    manager = CheckpointManager(
        ckpt_dir, keep_last=int(cfg["train"]["keep_last"]), is_writer=is_main,
        on_saved=lambda path: job.checkpoint_saved(path, step=manager.best_step,
                                                   metric=manager.best_metric))

    if task == "train":
        if is_main:
            path = os.path.join(job.output_dir, "config.yaml")
            dump_config(given_cfg, path)
            job.push(path)
        resume = str(cfg["train"]["resume"] or "")
        # The run's own newest checkpoint wins (a restart of a job that started from a given
        # .ckpt continues where it got to); a named checkpoint starts a run that has none.
        resume_from = job.resume_from
        if resume_from is None and resume not in ("", "auto"):
            resume_from = resolve_resume(resume, ckpt_dir)
        from src.engine.loop import train
        summary = train(recipe, cfg, output_dir=job.output_dir, ckpt=manager, is_main=is_main,
                        on_event=lambda name, **data: _on_event(job, name, data),
                        resume_from=resume_from)
        log.info("trainable parameter checksum (identical on every rank in data parallel): %s",
                 parameter_checksum(recipe.checkpoint_cells()))
        job.update_run(train=summary, metrics=summary.get("metrics", {}))
        if is_main:
            report_outcome(summary.get("metrics") or {}, cfg.get("train_url") or "",
                           job.output_dir)
    else:
        if source == "none":
            path = "none"
            log.info("%s of the net as built, with no training checkpoint", task)
        else:
            if path is None:
                path = resolve_resume(str(cfg["eval"]["checkpoint"]), ckpt_dir)
            with deferred():
                extra = manager.load(path, recipe.checkpoint_cells())
            log.info("loaded %s (step %s)", job.describe_path(path), extra.get("step"))
        if task == "eval":
            with deferred():
                metrics = evaluate_recipe(recipe, cfg, job.output_dir) if is_main else {}
            job.update_run(metrics=metrics, checkpoint=job.describe_path(path))
        if task == "infer":
            if not is_main:
                return 0  # one process restores the photos: outputs are rank 0's
            return infer_recipe(recipe, recipe.predict, cfg, job, photos_dir,
                                checkpoint=job.describe_path(path))
    if task in ("train", "export") and cfg["export"]["enabled"] and is_main:
        with deferred():
            exported = export_recipe(recipe, cfg, job.output_dir)
        job.push(exported)
        job.update_run(export=os.path.relpath(exported, job.output_dir))
    return 0


def _infer_mindir(recipe_cls, cfg: dict, plan, job, photos_dir: str) -> int:
    """--task infer with an exported MindIR: no net is built, the graph file runs alone
    between the recipe's input and output mappings."""
    from modelarts.context import apply_context
    from src.engine.infer import MindIRNet
    from src.engine.interrupts import deferred
    from src.recipes.base import RecipeContext

    path = str(cfg["eval"]["checkpoint"])
    if not os.path.isfile(path):
        raise UserError("eval.checkpoint=%s: file not found (give a local path or an obs:// "
                        "URL of an exported .mindir)" % job.describe_path(path))
    with deferred():
        import mindspore as ms

        apply_context(plan)
        # A loaded graph runs in graph mode only (MindSpore 2.0 refuses GraphCell in PyNative).
        ms.set_context(mode=ms.GRAPH_MODE)
    if job.env.global_rank != 0:
        return 0
    recipe = recipe_cls(cfg, RecipeContext(data_dir="", output_dir=job.output_dir))
    net = MindIRNet(path)

    def predict(x):
        if x.shape[1] != net.shape[1]:
            raise UserError("%s takes %d-channel inputs; model %s gives %d (a MindIR of another "
                            "model?)" % (job.describe_path(path), net.shape[1], cfg["model"],
                                         x.shape[1]))
        return recipe.net_output(net(recipe.net_input(x)))

    fixed = None if net.dynamic else (net.shape[2], net.shape[3])
    log.info("infer with %s (input %s)", job.describe_path(path),
             "any height x width" if fixed is None else "%d x %d, in tiles" % fixed)
    return infer_recipe(recipe, predict, cfg, job, photos_dir, checkpoint=job.describe_path(path),
                        fixed=fixed)


def infer_recipe(recipe, predict, cfg: dict, job, photos_dir: str, *, checkpoint: str,
                 fixed=None) -> int:
    """Restore every input under photos_dir into <output>/restored/; 1 if a file was skipped."""
    from src.engine.infer import find_inputs, run_infer

    inputs = find_inputs(photos_dir, recipe.infer_extensions)
    if not inputs:
        raise UserError("no input files under data_url %s (looked for %s)"
                        % (cfg["data_url"], " ".join(recipe.infer_extensions)))
    ic = cfg["infer"]
    tile = fixed or (int(ic["tile"]), int(ic["tile"]))
    overlap = int(ic["overlap"])
    if fixed and overlap >= min(fixed) // 2:
        # Tiles of a small fixed-size MindIR would advance by a few pixels at a time.
        overlap = min(fixed) // 4
        log.info("infer.overlap=%d is not below half the MindIR's %d x %d input: overlapping "
                 "its tiles by %d pixels", int(ic["overlap"]), fixed[0], fixed[1], overlap)
    out_dir = os.path.join(job.output_dir, "restored")
    log.info("infer: %d file(s) from %s into %s", len(inputs), cfg["data_url"], out_dir)
    summary = run_infer(recipe, predict, inputs, out_dir, tile=tile, overlap=overlap,
                        multiple=int(cfg["eval"]["pad_multiple"]), fixed=fixed is not None,
                        log_every=int(ic["log_every"]), on_written=job.push)
    job.update_run(infer=summary, checkpoint=checkpoint)
    return 1 if summary["failed"] else 0


#: (metric, label, format, which way is better) for the end-of-training summary.
OUTCOME_METRICS = (("psnr", "PSNR", "%.2f dB", "higher"), ("ssim", "SSIM", "%.3f", "higher"),
                   ("ciede2000", "CIEDE2000", "%.2f", "lower"))


def outcome_line(metrics: dict) -> str:
    """'PSNR 11.32 dB → 19.10 dB (higher is better), ...': each metric of the last evaluation
    next to the input's own score against the target ('' when nothing was evaluated)."""
    if not metrics or metrics.get("psnr") is None:
        return ""
    parts = []
    for key, label, fmt, better in OUTCOME_METRICS:
        value, ref = metrics.get(key), metrics.get("reference_" + key)
        if value is None:
            continue
        shown = fmt % value if ref is None else "%s → %s" % (fmt % ref, fmt % value)
        parts.append("%s %s (%s is better)" % (label, shown, better))
    return ", ".join(parts)


def report_outcome(metrics: dict, train_url: str, output_dir: str) -> None:
    """The end of a training run in two lines: what it bought on the validation set (input →
    output) and where its sample grids are, as the user can open them."""
    import obs_sync

    line = outcome_line(metrics)
    if not line:
        return
    log.info("result on %d validation images, input → output: %s", int(metrics.get("count", 0)),
             line)
    folder = os.path.join(output_dir, "samples")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png")) if os.path.isdir(
        folder) else []
    if not names:
        return
    where = os.path.join(folder, names[0])
    if train_url and obs_sync.is_remote(train_url):
        where = train_url.rstrip("/") + "/samples/" + names[0]
        # With the filesystem mock the grid is a local file: name that too, to open it.
        backend = obs_sync.select_backend()
        if isinstance(backend, obs_sync.MockBackend):
            where += " (%s)" % backend.local_path(where)
    log.info("sample grid (input | output | target): %s%s", where,
             " and %d more beside it" % (len(names) - 1) if len(names) > 1 else "")


def _on_event(job, name: str, data: dict) -> None:
    if name == "start":
        job.training_started(data["step"])
    elif name == "eval":
        job.update_run(last_eval=data)
    elif name == "checkpoint":
        job.push_log()
        # The metric history travels with the checkpoints (src/engine/curves.py).
        from src.engine.curves import CSV_NAME, PLOT_NAME
        for rel in (CSV_NAME, PLOT_NAME):
            path = os.path.join(job.output_dir, rel)
            if os.path.isfile(path):
                job.push(path)


def _sync_options(cfg: dict) -> dict:
    sync = cfg.get("sync", {})
    return {"threads": int(sync.get("threads", 8)), "retries": int(sync.get("retries", 3))}


def stage_remote_files(cfg: dict, job) -> dict:
    """Replace obs:// / s3:// file values (weights, checkpoints) by staged local copies."""
    import copy

    import obs_sync

    cfg = copy.deepcopy(cfg)

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, prefix + key + ".")
            elif (isinstance(value, str) and key not in LOCATION_KEYS
                  and obs_sync.is_remote(value)):
                node[key] = job.stage(value, "files")
                log.info("staged %s%s=%s → %s", prefix, key, value, node[key])

    walk(cfg, "")
    return cfg


def evaluate_recipe(recipe, cfg: dict, output_dir: str) -> Dict[str, float]:
    from src.engine.evaluate import evaluate

    ev = cfg["eval"]
    return evaluate(recipe.predict, recipe.val_samples(), pad_multiple=int(ev["pad_multiple"]),
                    scale=recipe.output_scale(), samples_dir=os.path.join(output_dir, "samples"),
                    num_samples=int(ev["num_samples"]), max_images=int(ev["max_images"]))


def export_recipe(recipe, cfg: dict, output_dir: str) -> str:
    from src.engine.export import export_mindir

    cell, examples = recipe.export_cell()
    path = os.path.join(output_dir, "export", "%s.mindir" % cfg["model"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    started = time.time()
    dynamic = bool(cfg["export"].get("dynamic", True)) and recipe.dynamic_export
    export_mindir(cell, examples, path, check=True, dynamic=dynamic,
                  multiple=int(cfg["eval"]["pad_multiple"]))
    log.info("exported %s%s (round trip checked) in %.1f s", path,
             " (any height and width)" if dynamic else "", time.time() - started)
    return path


def parameter_checksum(cells: dict) -> str:
    """A short digest of the trainable network parameters, to compare replicas across ranks.

    Running statistics (FastDeconv's whitening, like BatchNorm's) follow each rank's own
    batches and legitimately differ; rank 0's are the ones saved."""
    digest = hashlib.sha256()
    for key in sorted(k for k in cells if not k.startswith("opt")):
        for param in sorted(cells[key].trainable_params(), key=lambda p: p.name):
            digest.update(param.name.encode())
            digest.update(param.asnumpy().tobytes())
    return digest.hexdigest()[:16]
