#!/usr/bin/env python
"""Benchmark table: what a user pays for beyond the accelerator step, measured on this machine.

    python benchmarks/bench.py                 # every row (≈15-25 min on 2 CPU cores)
    python benchmarks/bench.py --rows conv,sync,aecrnet-demo
    python benchmarks/bench.py --list

Each row runs in its own process (clean peak memory, its own graph compile). Columns:
  first step s   time from the first batch to the first finished step (graph compile included)
  step ms        median train step after warm-up, graph mode (and PyNative where listed)
  img/s          images per second through the train step
  peak MB        peak resident memory of the row's process
  loader/core    samples/s the data loader delivers with ONE worker thread
  need           samples/s the step consumes (batch / step time): loader/core above it means
                 one host core keeps the step fed
The `conv` row is a regression guard: MindSpore 2.9/2.10 run this 3x3 convolution ~100x slower
on CPU than 2.8 (oneDNN falls back to its reference kernel); it is flagged SLOW above 100 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# name → (model, demo config, overrides, also time PyNative). The paper-sized rows take minutes
# per step on 2 CPU cores: they time one step after the first and skip PyNative.
MODEL_ROWS = {
    "aecrnet-demo": ("aecrnet", "configs/aecrnet_demo.yaml", [], True),
    "aecrnet-b16-c240": ("aecrnet", "configs/aecrnet_demo.yaml",
                         ["data.batch_size=16", "data.train.crop=240", "net.ngf=64", "synth.height=256",
                          "synth.width=256"], False),
    "lsid-demo": ("lsid", "configs/lsid_demo.yaml", [], True),
    "lsid-b1-c512": ("lsid", "configs/lsid_demo.yaml",
                     ["data.batch_size=1", "data.train.crop=512", "synth.height=1040",
                      "synth.width=1040", "synth.num_scenes=2"], False),
    "singan-demo": ("singan_dehaze", "configs/singan_dehaze_demo.yaml", [], True),
    "singan-b1-c256": ("singan_dehaze", "configs/singan_dehaze_demo.yaml",
                       ["data.batch_size=1", "data.train.crop=256", "net.generator.ngf=64",
                        "net.discriminator.ndf=64",
                        "synth.height=288", "synth.width=288"], False),
}
# --task infer on one photo of this size (AECR-Net at the paper's width, ngf 64): images/s
# after the first (graph compile) and the row process's peak memory with infer.tile tiling.
INFER_ROWS = {"infer-aecrnet-1024": (1024, 1024, 2), "infer-aecrnet-4000x3000": (3000, 4000, 1)}
# Inference builds no loss: cr_weight 0 keeps the contrastive loss's VGG19 out of the
# measurement (infer never runs it).
INFER_CONFIG = ("configs/aecrnet_demo.yaml", ["net.ngf=64", "loss.cr_weight=0", "mode=graph"])
OTHER_ROWS = ("conv", "sync") + tuple(INFER_ROWS)
SLOW_CONV_MS = 100.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def conv_row() -> dict:
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    net = nn.Conv2d(64, 64, 3, pad_mode="same", has_bias=True)
    x = ms.Tensor(np.random.rand(1, 64, 128, 128).astype(np.float32))
    started = time.perf_counter()
    net(x).asnumpy()
    first = time.perf_counter() - started
    times = []
    for _ in range(10):
        t = time.perf_counter()
        net(x).asnumpy()
        times.append(time.perf_counter() - t)
    ms_step = 1000 * sorted(times)[len(times) // 2]
    return {"row": "conv", "setting": "3x3 64->64 @128² fwd (ms %s)" % ms.__version__,
            "first_step_s": first, "step_ms": ms_step,
            "note": "SLOW: CPU conv regression" if ms_step > SLOW_CONV_MS else "ok"}


def sync_row() -> dict:
    import numpy as np

    import obs_sync

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        os.makedirs(src)
        rng = np.random.default_rng(0)
        for i in range(200):
            with open(os.path.join(src, "img_%03d.png" % i), "wb") as f:
                f.write(rng.bytes(64 * 1024))
        with open(os.path.join(src, "big.bin"), "wb") as f:
            f.write(rng.bytes(64 * 1024 * 1024))
        os.environ["OBS_MOCK_ROOT"] = os.path.join(tmp, "obs")
        t = time.perf_counter()
        up = obs_sync.sync(src, "obs://bench/data", threads=8)
        t_up = time.perf_counter() - t
        t = time.perf_counter()
        again = obs_sync.sync(src, "obs://bench/data", threads=8)
        t_again = time.perf_counter() - t
        t = time.perf_counter()
        obs_sync.sync("obs://bench/data", os.path.join(tmp, "down"), threads=8)
        t_down = time.perf_counter() - t
    total_mb = (200 * 64 * 1024 + 64 * 1024 * 1024) / 2 ** 20
    return {"row": "sync", "setting": "mock OBS, 200×64 KB + 64 MB",
            "note": "up %.0f MB/s, down %.0f MB/s, no-op re-sync %.2f s (%d skipped)"
                    % (total_mb / t_up, total_mb / t_down, t_again, again.skipped),
            "files": up.files}


def infer_row(name: str) -> dict:
    """Restore a photo of INFER_ROWS[name]'s size `repeat` times through the job's infer
    path (read, pad, tiles, blend, PNG write) and report the last run's rate."""
    import cv2
    import numpy as np

    from modelarts.context import apply_context, plan_context
    from modelarts.environment import detect_environment
    from src.config import load_config
    from src.engine.infer import find_inputs, run_infer
    from src.recipes.base import RecipeContext, get_recipe

    h, w, repeat = INFER_ROWS[name]
    cfg = load_config(os.path.join(REPO, INFER_CONFIG[0]), list(INFER_CONFIG[1]))
    apply_context(plan_context(detect_environment({}, platform="local", device_target="CPU"),
                               "graph"))
    tmp = tempfile.mkdtemp(prefix="bench-infer-")
    photos = os.path.join(tmp, "photos")
    os.makedirs(photos)
    rng = np.random.default_rng(0)
    cv2.imwrite(os.path.join(photos, "photo.jpg"), (rng.random((h, w, 3)) * 255).astype(np.uint8))
    recipe = get_recipe("aecrnet")(cfg, RecipeContext(data_dir="", output_dir=tmp))
    recipe.build()
    ic = cfg["infer"]
    tile = int(ic["tile"])
    times, cpu = [], 0.0
    for _ in range(repeat):
        t, c = time.perf_counter(), os.times()
        run_infer(recipe, recipe.predict, find_inputs(photos, recipe.infer_extensions),
                  os.path.join(tmp, "out"), tile=(tile, tile), overlap=int(ic["overlap"]),
                  multiple=int(cfg["eval"]["pad_multiple"]), log_every=100)
        times.append(time.perf_counter() - t)
        cpu = sum(os.times()[:2]) - sum(c[:2])
    # CPU seconds say what the wall clock cannot on a shared machine: its load.
    return {"row": name, "note": "%.0f CPU s per photo, load average %.1f"
                                 % (cpu, os.getloadavg()[0]),
            "setting": "AECR-Net ngf 64, one %dx%d photo, tile %d overlap %d"
                                    % (w, h, tile, int(ic["overlap"])),
            "first_step_s": times[0], "step_ms": 1000 * times[-1], "img_s": 1.0 / times[-1],
            "peak_mb": peak_mb()}


def model_row(name: str, steps: int) -> dict:
    import numpy as np

    from modelarts.context import apply_context, plan_context
    from modelarts.environment import detect_environment
    from src.config import load_config
    from src.data.loader import Loader
    from src.recipes.base import RecipeContext, get_recipe

    model, config, overrides, pynative = MODEL_ROWS[name]
    if not pynative:
        steps = 1
    mode = os.environ.get("BENCH_MODE", "graph")
    tmp = tempfile.mkdtemp(prefix="bench-")
    cfg = load_config(os.path.join(REPO, config), overrides + ["mode=" + mode])
    recipe_cls = get_recipe(model)
    if model == "lsid":
        raw = os.path.join(tmp, "raw")
        recipe_cls.synthesize(cfg, raw)
        data_dir = os.path.join(tmp, "data")
        recipe_cls.preprocess(cfg, raw, data_dir)
    else:
        data_dir = os.path.join(tmp, "data")
        recipe_cls.synthesize(cfg, data_dir)
    env = detect_environment({}, platform="local", device_target="CPU")
    apply_context(plan_context(env, mode))
    ctx = RecipeContext(data_dir=data_dir, output_dir=os.path.join(tmp, "out"), num_shards=1,
                        shard_id=0, distributed=False, is_main=True, seed=0)
    recipe = recipe_cls(cfg, ctx)
    recipe.build()
    loader = recipe.train_loader()
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == 2:
            break
    batch_size = len(next(iter(batches[0].values())))

    def run(batch):
        out = recipe.train_step(batch)
        return {k: float(np.asarray(v.asnumpy() if hasattr(v, "asnumpy") else v))
                for k, v in out.items()}

    t = time.perf_counter()
    run(batches[0])
    first = time.perf_counter() - t
    times = []
    for i in range(steps):
        t = time.perf_counter()
        run(batches[i % len(batches)])
        times.append(time.perf_counter() - t)
    step_s = sorted(times)[len(times) // 2]

    one = Loader(loader.source, batch_size, shuffle=True, drop_last=True, seed=1, workers=1,
                 prefetch=2)
    t, n = time.perf_counter(), 0
    for _ in one:
        n += batch_size
        if n >= max(4 * batch_size, 16) or time.perf_counter() - t > 20:
            break
    loader_rate = n / (time.perf_counter() - t)
    return {"row": name, "setting": "%s b%d (%s)" % (config.split("/")[-1], batch_size, mode),
            "first_step_s": first, "step_ms": 1000 * step_s, "img_s": batch_size / step_s,
            "peak_mb": peak_mb(), "loader_per_core": loader_rate, "need": batch_size / step_s,
            "pynative": pynative}


def run_row(name: str, steps: int, mode: str = "graph") -> dict:
    """Run one row in a fresh process and parse its JSON line."""
    env = dict(os.environ, BENCH_MODE=mode)
    res = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(steps)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=3600)
    for line in reversed(res.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"row": name, "setting": "FAILED", "note": (res.stderr or res.stdout)[-300:]}


def fmt(v, spec="%.0f"):
    return spec % v if isinstance(v, (int, float)) else (v or "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--rows", default=",".join(OTHER_ROWS + tuple(MODEL_ROWS)))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.list:
        print("\n".join(OTHER_ROWS + tuple(MODEL_ROWS)))
        return 0
    if args.one:
        row = {"conv": conv_row, "sync": sync_row}.get(args.one)
        if args.one in INFER_ROWS:
            print(json.dumps(infer_row(args.one)))
        else:
            print(json.dumps(row() if row else model_row(args.one, args.steps)))
        return 0
    header = "| row | setting | first step s | step ms | PyNative ms | img/s | peak MB | loader/core | need | note |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in args.rows.split(","):
        if name not in OTHER_ROWS and name not in MODEL_ROWS:
            print("unknown row %r; --list shows them" % name, file=sys.stderr)
            return 2
        row = run_row(name, args.steps)
        pyn = ""
        if row.get("pynative"):
            pyn = fmt(run_row(name, args.steps, "pynative").get("step_ms"))
        print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            row["row"], row.get("setting", ""), fmt(row.get("first_step_s"), "%.1f"),
            fmt(row.get("step_ms")), pyn, fmt(row.get("img_s"), "%.2f"),
            fmt(row.get("peak_mb")), fmt(row.get("loader_per_core"), "%.1f"),
            fmt(row.get("need"), "%.1f"), row.get("note", "")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
