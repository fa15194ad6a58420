"""Synthetic hazy data sets written in the real data sets' layouts, so the real readers read them.

Clear scenes come from two places, both with a depth map:
  * the real photos scikit-image ships (astronaut, coffee, chelsea, rocket, the two motorcycle
    stereo views), random crops at random scales, with a plausible depth: far at the top, near
    at the bottom, plus a smooth random field;
  * procedural scenes: sky, a ground plane in perspective, textured "buildings" and discs at
    their own depths.
Haze follows the atmospheric scattering model used to build RESIDE:
    I = J * t + A * (1 - t),   t = exp(-beta * d)
with beta (scattering coefficient) and A (airlight, slightly coloured) drawn per hazy image.

Writers (all deterministic for a seed; image size is configurable, small for CPU demos):
  write_reside(out, split)   <split>/hazy/<scene>_<k>_<beta>.png + <split>/clear/<scene>.png
                             (RESIDE-ITS naming; clear images carry an extra `border` so the
                             reader's centre crop is exercised like real ITS 640x480 vs 620x460)
  write_sots(out, split)     <split>/hazy/<scene>_<k>.png + <split>/clear/<scene>.png (SOTS)
  write_gt(out, split)       <split>/hazy/<NN>_hazy.png + <split>/GT/<NN>_GT.png (Dense/NH-HAZE)
  write_unpaired(out)        trainA/ hazy and trainB/ clear from DIFFERENT scenes (SinGAN-Dehaze,
                             CycleGAN layout) + test/hazy + test/clear in SOTS naming

scikit-image is imported only when photos are requested; without it a UserError says so (or
use photos=False for procedural scenes only).
"""
from __future__ import annotations

import os
import time
from typing import Dict, Sequence, Tuple

import numpy as np

from src.data.images import save_png
from src.errors import UserError

#: Colour photos shipped inside scikit-image's package data (no download needed).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right")
BETA_RANGE = (0.6, 1.8)        # RESIDE-ITS draws beta from [0.6, 1.8]
AIRLIGHT_RANGE = (0.7, 1.0)    # and A from [0.7, 1.0]
DEPTH_RANGE = (0.25, 1.5)      # scene depth in units where beta*d spans light to dense haze


def _cv2():
    import cv2

    cv2.setNumThreads(1)
    return cv2


_PHOTO_CACHE: Dict[str, np.ndarray] = {}


def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as HWC float32 RGB in [0, 1]."""
    if name in _PHOTO_CACHE:
        return _PHOTO_CACHE[name]
    try:
        import skimage.data as skdata
    except ImportError as exc:
        raise UserError("synthetic hazy data from photos needs scikit-image (pip install "
                        "scikit-image), or set synth.photos: false for procedural scenes only"
                        ) from exc
    if name.startswith("motorcycle_"):
        left, right, _ = skdata.stereo_motorcycle()
        img = left if name.endswith("left") else right
    else:
        img = getattr(skdata, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(np.float32) / 255.0
    _PHOTO_CACHE[name] = img
    return img


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    cv2 = _cv2()
    interp = cv2.INTER_AREA if h * w < img.shape[0] * img.shape[1] else cv2.INTER_LINEAR
    out = cv2.resize(img, (int(w), int(h)), interpolation=interp)
    return out if out.ndim == img.ndim else out[..., None]


def smooth_field(rng: np.random.Generator, h: int, w: int, cells: int = 4) -> np.ndarray:
    """Smooth random field in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    cv2 = _cv2()
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / (hi - lo + 1e-6)


def photo_scene(rng: np.random.Generator, h: int, w: int,
                photos: Sequence[str] = PHOTOS) -> Tuple[np.ndarray, np.ndarray, str]:
    """(clear HWC, depth HW, description): a random crop of a random photo at a random scale."""
    name = photos[int(rng.integers(0, len(photos)))]
    img = load_photo(name)
    ih, iw = img.shape[:2]
    # Crop a window of the photo's aspect-ratio-corrected size, scaled to 35-100% of the photo.
    max_scale = min(ih / h, iw / w)
    scale = max_scale * float(rng.uniform(0.35, 1.0))
    ch, cw = max(h, int(round(h * scale))), max(w, int(round(w * scale)))
    ch, cw = min(ch, ih), min(cw, iw)
    top = int(rng.integers(0, ih - ch + 1))
    left = int(rng.integers(0, iw - cw + 1))
    clear = _resize(img[top:top + ch, left:left + cw], h, w)
    if rng.integers(0, 2):
        clear = clear[:, ::-1]
    # Depth: far at the top, near at the bottom (most photos), warped by a smooth field.
    rows = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    rel = 0.65 * rows + 0.35 * smooth_field(rng, h, w)
    depth = DEPTH_RANGE[0] + (DEPTH_RANGE[1] - DEPTH_RANGE[0]) * rel
    return np.ascontiguousarray(clear, dtype=np.float32), depth.astype(np.float32), name


def procedural_scene(rng: np.random.Generator, h: int, w: int
                     ) -> Tuple[np.ndarray, np.ndarray, str]:
    """(clear HWC, depth HW, description): sky, a ground plane in perspective, and buildings /
    discs at their own depths, each with texture, painted far to near."""
    d_near, d_far = DEPTH_RANGE
    horizon = int(h * rng.uniform(0.3, 0.55))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    depth = np.full((h, w), d_far, np.float32)
    # Sky: a vertical gradient between two blues.
    top_c = np.array([0.35, 0.55, 0.9], np.float32) * rng.uniform(0.8, 1.1)
    bot_c = np.array([0.75, 0.85, 0.95], np.float32)
    a = (yy / max(horizon, 1))[..., None].clip(0, 1)
    img[:] = (1 - a) * top_c + a * bot_c
    # Ground: depth ~ 1/(distance below the horizon), textured colour.
    ground = yy >= horizon
    below = (yy - horizon + 1.0) / (h - horizon + 1.0)
    depth[ground] = np.clip(d_near + (d_far - d_near) * (0.08 / (below[ground] + 0.08)),
                            d_near, d_far)
    g_col = np.array(rng.choice([[0.3, 0.5, 0.2], [0.5, 0.45, 0.35], [0.4, 0.4, 0.42]]),
                     np.float32)
    tex = 0.75 + 0.5 * smooth_field(rng, h, w, cells=12)[..., None]
    stripes = 0.9 + 0.1 * np.sin(xx / max(w, 1) * rng.uniform(10, 40) + below * 30)[..., None]
    img[ground] = np.clip(g_col * tex * stripes, 0, 1)[ground]
    # Objects, far ones first so near ones occlude them.
    n_obj = int(rng.integers(3, 7))
    objs = sorted((float(rng.uniform(0.3, 1.0)) for _ in range(n_obj)), reverse=True)
    for rel in objs:
        d = d_near + (d_far - d_near) * rel
        base_y = horizon + int((1.0 - rel) * (h - horizon) * 0.9)
        colour = rng.uniform(0.1, 0.95, 3).astype(np.float32)
        size = (1.2 - rel) * rng.uniform(0.15, 0.45)
        if rng.random() < 0.6:   # building: rectangle with windows
            bw, bh = max(2, int(w * size)), max(3, int(h * size * rng.uniform(1.0, 2.5)))
            x0 = int(rng.integers(-bw // 3, w - bw // 2))
            y0 = max(0, base_y - bh)
            mask = (xx >= x0) & (xx < x0 + bw) & (yy >= y0) & (yy < base_y)
            period = max(2, int(rng.integers(3, 7)))
            windows = ((xx.astype(int) - x0) % period < period // 2) & \
                      ((yy.astype(int) - y0) % period < period // 2)
            shade = np.where(windows, 0.55, 1.0)[..., None]
            paint = colour * shade
        else:                    # disc: a tree crown / balloon with radial shading
            r = max(2.0, w * size * 0.5)
            cx, cy = float(rng.uniform(0, w)), float(base_y - r)
            dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            mask = dist < r
            paint = colour * (1.0 - 0.4 * (dist / r))[..., None]
        img[mask] = np.clip(paint, 0, 1)[mask]
        depth[mask] = d
    # Fine texture everywhere (real photos have it; a flat scene is too easy to dehaze).
    img = np.clip(img * (0.92 + 0.16 * rng.random((h, w, 1)).astype(np.float32)), 0, 1)
    return img.astype(np.float32), depth.astype(np.float32), "procedural"


def add_haze(clear: np.ndarray, depth: np.ndarray, beta: float, airlight: Sequence[float]
             ) -> np.ndarray:
    """I = J * t + A * (1 - t), t = exp(-beta * depth)."""
    t = np.exp(-float(beta) * depth)[..., None].astype(np.float32)
    a = np.asarray(airlight, np.float32).reshape(1, 1, -1)
    return np.clip(clear * t + a * (1.0 - t), 0.0, 1.0).astype(np.float32)


def random_airlight(rng: np.random.Generator) -> np.ndarray:
    a = float(rng.uniform(*AIRLIGHT_RANGE))
    return np.clip(a + rng.uniform(-0.03, 0.03, 3), 0.0, 1.0).astype(np.float32)


class SceneSource:
    """Deterministic stream of (clear, depth) scenes: scene i depends on (seed, i) only."""

    def __init__(self, height: int, width: int, seed: int = 0, photos: bool = True,
                 procedural: bool = True, photo_fraction: float = 0.6):
        if height < 8 or width < 8:
            raise UserError("synthetic images must be at least 8x8, got %dx%d" % (height, width))
        if not photos and not procedural:
            raise UserError("synth: enable photos or procedural scenes (both are off)")
        self.h, self.w = int(height), int(width)
        self.seed = int(seed)
        self.photos = bool(photos)
        self.procedural = bool(procedural)
        self.photo_fraction = float(photo_fraction) if (photos and procedural) else (
            1.0 if photos else 0.0)
        if self.photos:
            load_photo(PHOTOS[0])  # fail early (and clearly) without scikit-image

    def scene(self, index: int, stream: int = 0) -> Tuple[np.ndarray, np.ndarray, str]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, stream, int(index)]))
        if rng.random() < self.photo_fraction:
            return photo_scene(rng, self.h, self.w)
        return procedural_scene(rng, self.h, self.w)

    def haze_params(self, index: int, k: int, stream: int = 0) -> Tuple[float, np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, stream, int(index),
                                                            int(k), 7]))
        return float(rng.uniform(*BETA_RANGE)), random_airlight(rng)


def _pad_clear(clear: np.ndarray, border: int) -> np.ndarray:
    """Extend the clear image by `border` px of reflected content (ITS clear images are larger
    than their hazy versions; the reader centre-crops them back)."""
    if border <= 0:
        return clear
    return np.pad(clear, ((border, border), (border, border), (0, 0)), mode="reflect")


def write_reside(out_dir: str, split: str = "train", num_scenes: int = 8,
                 hazy_per_scene: int = 3, height: int = 64, width: int = 64, seed: int = 0,
                 border: int = 4, photos: bool = True, procedural: bool = True,
                 stream: int = 1) -> dict:
    """RESIDE-ITS layout: <split>/hazy/<scene>_<k>_<beta>.png, <split>/clear/<scene>.png; each
    clear image is `border` px larger on every side than its hazy versions."""
    src = SceneSource(height, width, seed, photos, procedural)
    hazy_dir = os.path.join(out_dir, split, "hazy")
    clear_dir = os.path.join(out_dir, split, "clear")
    os.makedirs(hazy_dir, exist_ok=True)
    os.makedirs(clear_dir, exist_ok=True)
    count = 0
    for i in range(num_scenes):
        clear, depth, _ = src.scene(i, stream)
        scene_id = i + 1
        save_png(os.path.join(clear_dir, "%d.png" % scene_id),
                 _pad_clear(clear, int(border)))
        for k in range(hazy_per_scene):
            beta, airlight = src.haze_params(i, k, stream)
            save_png(os.path.join(hazy_dir, "%d_%d_%.5f.png" % (scene_id, k + 1, beta)),
                     add_haze(clear, depth, beta, airlight))
            count += 1
    return {"layout": "reside", "split": split, "clear": num_scenes, "hazy": count}


def write_sots(out_dir: str, split: str = "val", num_scenes: int = 4, hazy_per_scene: int = 1,
               height: int = 64, width: int = 64, seed: int = 0, photos: bool = True,
               procedural: bool = True, stream: int = 2, first_id: int = 1400) -> dict:
    """SOTS layout: <split>/hazy/<scene>_<k>.png, <split>/clear/<scene>.png (same size).
    Scenes come from their own stream, so they differ from the training scenes."""
    src = SceneSource(height, width, seed, photos, procedural)
    hazy_dir = os.path.join(out_dir, split, "hazy")
    clear_dir = os.path.join(out_dir, split, "clear")
    os.makedirs(hazy_dir, exist_ok=True)
    os.makedirs(clear_dir, exist_ok=True)
    count = 0
    for i in range(num_scenes):
        clear, depth, _ = src.scene(i, stream)
        scene_id = first_id + i
        save_png(os.path.join(clear_dir, "%d.png" % scene_id), clear)
        for k in range(hazy_per_scene):
            beta, airlight = src.haze_params(i, k, stream)
            save_png(os.path.join(hazy_dir, "%d_%d.png" % (scene_id, k + 1)),
                     add_haze(clear, depth, beta, airlight))
            count += 1
    return {"layout": "sots", "split": split, "clear": num_scenes, "hazy": count}


def write_gt(out_dir: str, split: str = "train", num_scenes: int = 8, height: int = 64,
             width: int = 64, seed: int = 0, photos: bool = True, procedural: bool = True,
             stream: int = 3, first_id: int = 1, dense: bool = True) -> dict:
    """Dense-Haze / NH-HAZE layout: <split>/hazy/<NN>_hazy.png, <split>/GT/<NN>_GT.png.
    dense=True draws thick haze (Dense-Haze), else the lighter, non-homogeneous-looking NH-HAZE
    range (beta modulated by a smooth field)."""
    src = SceneSource(height, width, seed, photos, procedural)
    hazy_dir = os.path.join(out_dir, split, "hazy")
    gt_dir = os.path.join(out_dir, split, "GT")
    os.makedirs(hazy_dir, exist_ok=True)
    os.makedirs(gt_dir, exist_ok=True)
    for i in range(num_scenes):
        clear, depth, _ = src.scene(i, stream)
        beta, airlight = src.haze_params(i, 0, stream)
        if dense:
            beta_map = np.float32(beta * 1.6)
        else:
            rng = np.random.default_rng(np.random.SeedSequence([src.seed, stream, i, 11]))
            beta_map = beta * (0.4 + 1.2 * smooth_field(rng, src.h, src.w, cells=3))
        t = np.exp(-beta_map * depth)[..., None].astype(np.float32)
        hazy = np.clip(clear * t + airlight.reshape(1, 1, 3) * (1.0 - t), 0, 1)
        name = "%02d" % (first_id + i)
        save_png(os.path.join(hazy_dir, name + "_hazy.png"), hazy)
        save_png(os.path.join(gt_dir, name + "_GT.png"), clear)
    return {"layout": "gt", "split": split, "clear": num_scenes, "hazy": num_scenes}


def write_unpaired(out_dir: str, num_hazy: int = 8, num_clear: int = 8, num_test: int = 4,
                   height: int = 64, width: int = 64, seed: int = 0, photos: bool = True,
                   procedural: bool = True, test_split: str = "test") -> dict:
    """Unpaired layout (SinGAN-Dehaze / CycleGAN): trainA/<i>.png hazy and trainB/<i>.png clear
    rendered from DIFFERENT scenes (separate scene streams), plus a paired test set
    <test_split>/hazy/<id>_1.png + <test_split>/clear/<id>.png in SOTS naming."""
    src = SceneSource(height, width, seed, photos, procedural)
    a_dir = os.path.join(out_dir, "trainA")
    b_dir = os.path.join(out_dir, "trainB")
    os.makedirs(a_dir, exist_ok=True)
    os.makedirs(b_dir, exist_ok=True)
    for i in range(num_hazy):
        clear, depth, _ = src.scene(i, stream=10)
        beta, airlight = src.haze_params(i, 0, stream=10)
        save_png(os.path.join(a_dir, "%d.png" % (i + 1)), add_haze(clear, depth, beta, airlight))
    for i in range(num_clear):
        clear, _, _ = src.scene(i, stream=11)
        save_png(os.path.join(b_dir, "%d.png" % (i + 1)), clear)
    test = write_sots(out_dir, test_split, num_scenes=num_test, hazy_per_scene=1, height=height,
                      width=width, seed=seed, photos=photos, procedural=procedural, stream=12)
    return {"layout": "unpaired", "trainA": num_hazy, "trainB": num_clear,
            "test": test["hazy"]}


def synthesize_paired(out_dir: str, layout: str = "reside", num_scenes: int = 8,
                      hazy_per_scene: int = 3, num_val: int = 4, height: int = 64,
                      width: int = 64, seed: int = 0, photos: bool = True,
                      procedural: bool = True, train_split: str = "train",
                      val_split: str = "val") -> dict:
    """A training split and a validation split in one of the paired layouts:
    reside → <train_split> in ITS naming + <val_split> in SOTS naming;
    gt → both splits in Dense-Haze naming (val ids continue after the train ids)."""
    started = time.time()
    if layout in ("reside", "its"):
        train = write_reside(out_dir, train_split, num_scenes, hazy_per_scene, height, width,
                             seed, photos=photos, procedural=procedural)
        val = write_sots(out_dir, val_split, num_val, 1, height, width, seed, photos=photos,
                         procedural=procedural)
    elif layout in ("gt", "dense", "nh"):
        dense = layout != "nh"
        train = write_gt(out_dir, train_split, num_scenes, height, width, seed, photos,
                         procedural, stream=3, first_id=1, dense=dense)
        val = write_gt(out_dir, val_split, num_val, height, width, seed, photos, procedural,
                       stream=4, first_id=num_scenes + 1, dense=dense)
    else:
        raise UserError("synth.layout must be reside (ITS + SOTS), dense or nh, got %r"
                        % (layout,))
    return {"train": train, "val": val, "seconds": round(time.time() - started, 2),
            "size": [int(height), int(width)]}
