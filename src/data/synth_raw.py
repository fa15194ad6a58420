"""Synthetic low-light raw pairs that the real readers read: DNG files and Sony list files.

No SID data can be downloaded here, so `--task synth` for LSID writes the data set's real
layout with real raw files instead:

    <out>/Sony/short/00001_00_0.1s.dng    short exposures (noisy, dark)
    <out>/Sony/long/00001_00_10s.dng      the long exposure of the same scene (ground truth)
    <out>/Sony_train_list.txt             "./Sony/short/... ./Sony/long/... ISO400 F8" rows
    <out>/Sony_test_list.txt, <out>/Sony_val_list.txt

Scene ids follow SID: the first digit is the split (0 train, 1 test, 2 val). The DNGs are
written with tifffile (CFA photometric 32803, black 512, white 16383, ExposureTime, ColorMatrix1,
AsShotNeutral...) and LibRaw (rawpy) decodes them bit-exactly, so preprocessing, training and
evaluation run on real files end to end.

The sensor model, per scene: a linear sRGB radiance map (a real photograph shipped with
scikit-image or a procedural scene, linearised, cropped and scaled in brightness) seen through a
camera matrix whose rows sum to one, scaled per channel by the as-shot neutral (the camera's
response to white); photo-electrons at the long exposure fill `brightness` of the well; a short
exposure collects t_short / t_long of them. Each frame is Poisson shot noise on the electrons,
times the gain (DN per electron, from the ISO), plus Gaussian read noise in DN, plus the black
level, rounded and clipped to [0, white]. LibRaw's camera-WB + matrix pipeline inverts the
colour part exactly, so the long exposure's `postprocess()` is the scene, gamma-encoded: a
sensible ground truth."""
from __future__ import annotations

import fractions
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from src.errors import UserError

log = logging.getLogger(__name__)

CFA_COLORS = {"R": 0, "G": 1, "B": 2}
BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")

# CIE XYZ (D65) → linear sRGB. A DNG's ColorMatrix1 maps XYZ to camera space; LibRaw inverts
# it (after normalising rows) to get camera → sRGB.
XYZ_TO_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                        [-0.9692660, 1.8760108, 0.0415560],
                        [0.0556434, -0.2040259, 1.0572252]])

# Linear sRGB → camera RGB of the synthetic sensor: broad, overlapping filters like a real
# Bayer sensor's (rows sum to 1, so white stays white before the as-shot neutral).
CAMERA_FROM_SRGB = np.array([[0.70, 0.25, 0.05],
                             [0.12, 0.80, 0.08],
                             [0.03, 0.22, 0.75]])

# Camera response to white light, G = 1 (a typical daylight balance: R and B are weaker).
AS_SHOT_NEUTRAL = (0.50, 1.0, 0.65)

# Real photographs shipped with scikit-image (no download), and PROCEDURAL (sky, ground and
# buildings drawn by src.data.synth_haze): the scene content. Training scenes draw from
# TRAIN_SCENES (the colour wheel and the microscopy images teach saturated colours);
# evaluation scenes cycle through EVAL_SCENES, which training never sees, so consecutive
# samples show different scenes.
PROCEDURAL = "procedural"
TRAIN_SCENES = ("astronaut.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
                "retina.jpg", "ihc.png", "color.png", PROCEDURAL)
EVAL_SCENES = ("coffee.png", "chelsea.png", PROCEDURAL)

SPLIT_DIGIT = {"train": 0, "test": 1, "val": 2}

# Long exposures stay below this fraction of the white level. LibRaw rescales an image whose
# brightest pixel lies between 75% and 100% of the white level to that pixel
# (adjust_maximum_thr = 0.75), which would make a ground truth's brightness depend on its own
# content; real long exposures are either below that band or clipped at the white level.
MAX_SIGNAL = 0.72


# --- DNG writing -------------------------------------------------------------------------------

def _rational(x: float, max_den: int = 1000000) -> Tuple[int, int]:
    f = fractions.Fraction(float(x)).limit_denominator(max_den)
    return f.numerator, f.denominator


def _rationals(values, den: int = 10000) -> List[int]:
    """Numerator, denominator pairs for (S)RATIONAL array tags."""
    out: List[int] = []
    for v in np.asarray(values, dtype=np.float64).ravel():
        out += [int(round(v * den)), den]
    return out


def cfa_codes(pattern: str) -> Tuple[int, int, int, int]:
    """'RGGB' → DNG CFAPattern bytes (0 = red, 1 = green, 2 = blue), row-major over 2×2."""
    pattern = str(pattern).upper()
    if pattern not in BAYER_PATTERNS:
        raise UserError("CFA pattern %r is not a 2x2 Bayer pattern; use one of %s"
                        % (pattern, ", ".join(BAYER_PATTERNS)))
    return tuple(CFA_COLORS[c] for c in pattern)  # type: ignore[return-value]


def write_dng(path: str, mosaic: np.ndarray, *, exposure_time: float, cfa: str = "RGGB",
              black_level: int = 512, white_level: int = 16383, iso: Optional[int] = None,
              f_number: Optional[float] = None,
              color_matrix: Optional[np.ndarray] = None,
              as_shot_neutral: Sequence[float] = AS_SHOT_NEUTRAL,
              make: str = "Synthetic", model: str = "LSID sensor") -> str:
    """Write a Bayer mosaic (H×W uint16, values already including the black level) as an
    uncompressed DNG 1.4 that LibRaw opens. Written to a temporary name and renamed, so a
    reader never sees half a file. `color_matrix` is DNG ColorMatrix1 (XYZ → camera, D65);
    the default matches the synthetic sensor (CAMERA_FROM_SRGB)."""
    import tifffile

    mosaic = np.asarray(mosaic)
    if mosaic.ndim != 2 or mosaic.dtype != np.uint16:
        raise ValueError("write_dng: expected an H×W uint16 mosaic, got %s %s"
                         % (mosaic.dtype, mosaic.shape))
    if mosaic.shape[0] % 2 or mosaic.shape[1] % 2:
        raise ValueError("write_dng: a Bayer mosaic needs even sides, got %s" % (mosaic.shape,))
    if not exposure_time > 0:
        raise ValueError("write_dng: exposure_time must be > 0, got %r" % (exposure_time,))
    if color_matrix is None:
        color_matrix = CAMERA_FROM_SRGB @ XYZ_TO_SRGB
    tags = [
        (254, "I", 1, 0, True),                              # NewSubfileType: main image
        (271, "s", 0, make, True),                           # Make
        (272, "s", 0, model, True),                          # Model
        (274, "H", 1, 1, True),                              # Orientation: as stored
        (33421, "H", 2, (2, 2), True),                       # CFARepeatPatternDim
        (33422, "B", 4, cfa_codes(cfa), True),               # CFAPattern
        (33434, "2I", 1, _rational(exposure_time), True),    # ExposureTime (s)
        (50706, "B", 4, (1, 4, 0, 0), True),                 # DNGVersion 1.4
        (50707, "B", 4, (1, 1, 0, 0), True),                 # DNGBackwardVersion
        (50708, "s", 0, "%s %s" % (make, model), True),      # UniqueCameraModel
        (50710, "B", 3, (0, 1, 2), True),                    # CFAPlaneColor: R, G, B
        (50711, "H", 1, 1, True),                            # CFALayout: rectangular
        (50713, "H", 2, (1, 1), True),                       # BlackLevelRepeatDim
        (50714, "I", 1, int(black_level), True),             # BlackLevel
        (50717, "I", 1, int(white_level), True),             # WhiteLevel
        (50721, "2i", 9, _rationals(color_matrix), True),   # ColorMatrix1 (XYZ → camera)
        (50728, "2I", 3, _rationals(as_shot_neutral), True),  # AsShotNeutral
        (50778, "H", 1, 21, True),                           # CalibrationIlluminant1: D65
    ]
    if iso:
        tags.append((34855, "H", 1, int(iso), True))         # ISOSpeedRatings
    if f_number:
        tags.append((33437, "2I", 1, _rational(f_number, 100), True))  # FNumber
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, ".%s.part-%d" % (os.path.basename(path), os.getpid()))
    try:
        tifffile.imwrite(tmp, mosaic, photometric=32803, extratags=tags, metadata=None)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# --- scenes and the sensor model ---------------------------------------------------------------

def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _photo(name: str) -> np.ndarray:
    """An sRGB photo from scikit-image's bundled data as HWC float in [0, 1]."""
    import skimage

    from src.data.images import read_image

    path = os.path.join(os.path.dirname(skimage.__file__), "data", name)
    return read_image(path)


def scene_radiance(rng: np.random.Generator, height: int, width: int,
                   photos: Sequence[str], index: Optional[int] = None) -> np.ndarray:
    """H×W×3 linear sRGB radiance: a random crop of a photo (random scale, flips, rotation),
    resized to the sensor, linearised, or a procedural scene (PROCEDURAL). The photo is
    photos[index % len(photos)], or a random one when index is None. Values in [0, 1]."""
    import cv2

    name = photos[int(rng.integers(0, len(photos))) if index is None else index % len(photos)]
    if name == PROCEDURAL:
        from src.data.synth_haze import procedural_scene

        img = procedural_scene(rng, height, width)[0]
        return np.clip(srgb_to_linear(np.clip(img, 0.0, 1.0)), 0.0, 1.0)
    img = _photo(name)
    if rng.integers(0, 2):
        img = img[:, ::-1]
    if rng.integers(0, 2):
        img = np.rot90(img)
    h, w = img.shape[:2]
    aspect = width / float(height)
    frac = rng.uniform(0.55, 1.0)
    ch = int(min(h, w / aspect) * frac)
    cw = int(ch * aspect)
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    crop = np.ascontiguousarray(img[top:top + ch, left:left + cw])
    interp = cv2.INTER_AREA if ch > height else cv2.INTER_CUBIC
    crop = cv2.resize(crop, (width, height), interpolation=interp)
    return np.clip(srgb_to_linear(np.clip(crop, 0.0, 1.0)), 0.0, 1.0)


def mosaic_camera(rgb_cam: np.ndarray, cfa: str) -> np.ndarray:
    """H×W×3 camera RGB → H×W single-channel Bayer mosaic for `cfa`."""
    codes = cfa_codes(cfa)
    out = np.empty(rgb_cam.shape[:2], dtype=rgb_cam.dtype)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[dy::2, dx::2] = rgb_cam[dy::2, dx::2, codes[k]]
    return out


def expose(rng: np.random.Generator, signal: np.ndarray, *, fraction: float, gain: float,
           read_noise: float, black_level: int, white_level: int) -> np.ndarray:
    """Camera signal (mosaic, 1.0 = a full well at the long exposure) → raw DN for an exposure
    collecting `fraction` of the long exposure's light: Poisson electrons × gain + Gaussian read
    noise + black, quantised and clipped like an ADC."""
    span = float(white_level - black_level)
    electrons = np.clip(signal, 0.0, 1.0) * (span / gain) * fraction
    dn = rng.poisson(electrons).astype(np.float64) * gain
    dn += rng.normal(0.0, read_noise, size=dn.shape)
    return np.clip(np.round(dn + black_level), 0, white_level).astype(np.uint16)


def _exposure_token(seconds: float) -> str:
    return "%gs" % seconds


def _parse_split_counts(num_scenes: int, num_test_scenes: int,
                        num_val_scenes: int) -> Dict[str, int]:
    counts = {"train": int(num_scenes), "test": int(num_test_scenes), "val": int(num_val_scenes)}
    for split, n in counts.items():
        if n < 0 or n > 9999:
            raise UserError("synth: the number of %s scenes must be in [0, 9999], got %d"
                            % (split, n))
    if counts["train"] < 1:
        raise UserError("synth.num_scenes must be >= 1 (training scenes), got %d"
                        % counts["train"])
    return counts


def synthesize_sid(out_dir: str, *, num_scenes: int = 8, num_test_scenes: int = 2,
                   num_val_scenes: int = 2, height: int = 256, width: int = 384,
                   long_exposure: float = 10.0,
                   short_exposures: Sequence[float] = (0.1, 0.04, 0.033),
                   frames: int = 1, cfa: str = "RGGB", black_level: int = 512,
                   white_level: int = 16383, iso: Sequence[int] = (200, 400, 800),
                   unity_gain_iso: float = 1600.0, read_noise: float = 2.0,
                   brightness: Sequence[float] = (0.25, 0.6), camera: str = "Sony",
                   extension: str = ".dng", seed: int = 0) -> dict:
    """Write the synthetic SID set under `out_dir` (layout in the module docstring).

    Per scene: one long exposure `long_exposure` s and, for every short exposure, `frames`
    independent frames (`_00`, `_01`, ...). `iso` values are drawn per scene; the gain is
    iso / unity_gain_iso DN per electron. `brightness` is the range of the long exposure's
    99th-percentile signal as a fraction of the white level (SID's ground truths are well
    exposed); highlights are capped at MAX_SIGNAL. Test and val scenes come from photos the
    training scenes never use. Returns {files, scenes: {split: n}, bytes, size, seconds}."""
    started = time.time()
    height, width = int(height), int(width)
    if height < 32 or width < 32 or height % 2 or width % 2:
        raise UserError("synth.height/width must be even (a Bayer mosaic) and >= 32 (LibRaw "
                        "refuses tinier raws); got %dx%d" % (height, width))
    shorts = [float(s) for s in short_exposures]
    if not shorts or any(not 0 < s < float(long_exposure) for s in shorts):
        raise UserError("synth.short_exposures must be > 0 and shorter than synth.long_exposure "
                        "(%g s); got %s" % (long_exposure, shorts))
    if int(frames) < 1 or int(frames) > 100:
        raise UserError("synth.frames must be in [1, 100], got %r" % (frames,))
    counts = _parse_split_counts(num_scenes, num_test_scenes, num_val_scenes)
    cfa_codes(cfa)
    if not extension.startswith("."):
        extension = "." + extension
    # Held-out scenes for test/val so evaluation scenes are not crops of training scenes.
    photos = {"train": TRAIN_SCENES, "test": EVAL_SCENES, "val": EVAL_SCENES}
    short_dir = os.path.join(out_dir, camera, "short")
    long_dir = os.path.join(out_dir, camera, "long")
    files = 0
    total_bytes = 0
    for split, n in counts.items():
        rows: List[Tuple[int, int, str]] = []  # (exposure, scene, row)
        for k in range(n):
            scene_id = "%d%04d" % (SPLIT_DIGIT[split], k + 1)
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), SPLIT_DIGIT[split], k]))
            radiance = scene_radiance(rng, height, width, photos[split],
                                      index=None if split == "train" else k)
            camera_rgb = np.einsum("ij,hwj->hwi", CAMERA_FROM_SRGB, radiance)
            camera_rgb *= np.asarray(AS_SHOT_NEUTRAL)
            p99 = float(np.percentile(camera_rgb, 99)) or 1.0
            camera_rgb *= rng.uniform(*brightness) / p99
            signal = np.minimum(mosaic_camera(camera_rgb, cfa), MAX_SIGNAL)
            scene_iso = int(rng.choice(np.asarray(iso)))
            gain = scene_iso / float(unity_gain_iso)
            f_number = float(rng.choice([4.0, 5.6, 8.0, 11.0]))
            meta = dict(cfa=cfa, black_level=black_level, white_level=white_level,
                        iso=scene_iso, f_number=f_number, make=camera)
            noise = dict(gain=gain, read_noise=read_noise, black_level=black_level,
                         white_level=white_level)
            long_name = "%s_00_%s%s" % (scene_id, _exposure_token(long_exposure), extension)
            long_path = os.path.join(long_dir, long_name)
            write_dng(long_path, expose(rng, signal, fraction=1.0, **noise),
                      exposure_time=long_exposure, **meta)
            files += 1
            total_bytes += os.path.getsize(long_path)
            for frame in range(int(frames)):
                for e, t in enumerate(shorts):
                    name = "%s_%02d_%s%s" % (scene_id, frame, _exposure_token(t), extension)
                    path = os.path.join(short_dir, name)
                    write_dng(path, expose(rng, signal, fraction=t / float(long_exposure),
                                           **noise), exposure_time=t, **meta)
                    files += 1
                    total_bytes += os.path.getsize(path)
                    rows.append((e, k, "./%s/short/%s ./%s/long/%s ISO%d F%g" % (
                        camera, name, camera, long_name, scene_iso, f_number)))
        if split != "train":
            # Evaluation lists run through the scenes first, so the first samples an
            # evaluation shows (eval.num_samples) are different scenes, not one scene's
            # exposures; a stable sort keeps the frames in order.
            rows.sort(key=lambda row: row[:2])
        list_path = os.path.join(out_dir, "%s_%s_list.txt" % (camera, split))
        _write_text(list_path, "".join(r[2] + "\n" for r in rows))
        files += 1
    summary = {"files": files, "scenes": counts, "bytes": total_bytes,
               "size": [height, width], "seconds": round(time.time() - started, 2)}
    log.info("synthetic SID set in %s: %s", out_dir, summary)
    return summary


def _write_text(path: str, text: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, ".%s.part-%d" % (os.path.basename(path), os.getpid()))
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
