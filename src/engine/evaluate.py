"""Evaluation: full-image prediction, PSNR / SSIM / CIEDE2000 against the target, the same
metrics for the no-model `reference` (so "better than the input" is visible in every run), and
sample grids input|output|target as PNGs, each panel captioned with its PSNR and SSIM."""
from __future__ import annotations

import logging
import os
import re
import time
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from src.data.images import labelled_grid, pad_to_multiple, save_png, to_hwc

log = logging.getLogger(__name__)

METRICS = ("psnr", "ssim", "ciede2000")
# PSNR of identical images is infinite; capped so averages and run.json stay finite numbers.
PSNR_CAP = 100.0


def _safe_name(name: str, index: int) -> str:
    base = os.path.splitext(os.path.basename(str(name)))[0] or "sample_%d" % index
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base)


def _scores(out_hwc: np.ndarray, target_hwc: np.ndarray) -> Dict[str, float]:
    from src import metrics  # pure numpy; imported here so the engine imports without it

    return {"psnr": min(PSNR_CAP, float(metrics.psnr(out_hwc, target_hwc))),
            "ssim": float(metrics.ssim(out_hwc, target_hwc)),
            "ciede2000": float(metrics.ciede2000(out_hwc, target_hwc))}


def evaluate(predict: Callable[[np.ndarray], np.ndarray], samples: Iterable[dict], *,
             pad_multiple: int = 4, scale: int = 1, samples_dir: Optional[str] = None,
             num_samples: int = 4, max_images: int = 0) -> dict:
    """Run `predict` on every sample (input reflect-padded to `pad_multiple`, output cropped
    back to `scale` × the input size) and average the metrics over images.

    → {psnr, ssim, ciede2000, reference_psnr, reference_ssim, reference_ciede2000, count,
    seconds, images: [per-image scores]}; reference_* are None when no sample has a reference,
    all metrics None when there are no samples. The first `num_samples` grids go to
    `samples_dir/<name>.png`. `max_images` > 0 stops after that many images."""
    scale = int(scale)
    started = time.time()
    per_image: List[dict] = []
    for i, sample in enumerate(samples):
        if max_images and i >= max_images:
            break
        name = str(sample.get("name", "sample_%d" % i))
        x = np.asarray(sample["input"], dtype=np.float32)
        target = np.asarray(sample["target"], dtype=np.float32)
        padded, (h, w) = pad_to_multiple(x, int(pad_multiple), mode="reflect")
        pred = np.asarray(predict(padded[None]))
        want = (padded.shape[-2] * scale, padded.shape[-1] * scale)
        if pred.ndim != 4 or pred.shape[0] != 1 or pred.shape[1] != 3 or pred.shape[2:] != want:
            raise ValueError("predict returned shape %s for input %s of %s; expected (1, 3, %d, %d)"
                             % (pred.shape, padded.shape, name, want[0], want[1]))
        out = np.clip(pred[0, :, :h * scale, :w * scale].astype(np.float32), 0.0, 1.0)
        if target.shape != out.shape:
            raise ValueError("sample %s: target shape %s does not match the output %s"
                             % (name, target.shape, out.shape))
        out_hwc, target_hwc = to_hwc(out), to_hwc(target)
        record = {"name": name}
        record.update(_scores(out_hwc, target_hwc))
        reference = sample.get("reference")
        ref_hwc = None
        if reference is not None:
            ref_hwc = to_hwc(np.clip(np.asarray(reference, dtype=np.float32), 0.0, 1.0))
            if ref_hwc.shape != target_hwc.shape:
                raise ValueError("sample %s: reference shape %s does not match the target %s"
                                 % (name, reference.shape, target.shape))
            record.update({"reference_" + k: v for k, v in _scores(ref_hwc, target_hwc).items()})
        per_image.append(record)
        if samples_dir and i < num_samples:
            save_png(os.path.join(samples_dir, "%s.png" % _safe_name(name, i)),
                     _sample_grid(x, ref_hwc, out_hwc, target_hwc, record))

    result: dict = {"count": len(per_image)}
    for key in METRICS:
        vals = [r[key] for r in per_image]
        result[key] = float(np.mean(vals)) if vals else None
        refs = [r["reference_" + key] for r in per_image if "reference_" + key in r]
        result["reference_" + key] = float(np.mean(refs)) if refs else None
    result["seconds"] = round(time.time() - started, 3)
    result["images"] = per_image
    if per_image:
        log.info("eval on %d images: %s", len(per_image), format_metrics(result))
    return result


def format_metrics(result: dict) -> str:
    """`PSNR 15.90 (input 11.32) | SSIM 0.376 (input 0.555) | CIEDE2000 9.81 (input 14.20)`:
    each metric beside the input's, so a model worse than its input on any of them shows."""
    parts = []
    for key, label, fmt in (("psnr", "PSNR", "%.2f"), ("ssim", "SSIM", "%.3f"),
                            ("ciede2000", "CIEDE2000", "%.2f")):
        if result.get(key) is None:
            continue
        ref = result.get("reference_" + key)
        parts.append("%s %s (input %s)" % (label, fmt % result[key],
                                           fmt % ref if ref is not None else "n/a"))
    return " | ".join(parts)


def _sample_grid(x: np.ndarray, ref_hwc, out_hwc: np.ndarray, target_hwc: np.ndarray,
                 record: dict) -> np.ndarray:
    """input | output | target, each captioned with its PSNR and SSIM against the target."""
    # A raw (4-channel) input has no picture to show: its naive rendering stands in.
    view = to_hwc(x) if x.shape[0] == 3 else ref_hwc
    panels, labels = [], []
    if view is not None:
        panels.append(view)
        labels.append(["input" if x.shape[0] == 3 else "input (naive rendering)",
                       _scores_text(record, "reference_")])
    panels += [out_hwc, target_hwc]
    labels += [["output", _scores_text(record, "")], ["target", ""]]
    return labelled_grid(panels, labels)


def _scores_text(record: dict, prefix: str) -> str:
    if record.get(prefix + "psnr") is None:
        return ""
    return "PSNR %.2f  SSIM %.3f" % (record[prefix + "psnr"], record[prefix + "ssim"])
