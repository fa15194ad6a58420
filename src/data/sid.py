"""SID short/long exposure pairs, read lazily from the HDF5 files raw_preprocess writes.

Two ways to name the pairs (paths relative to the staged data_url):
- a list file: the authors' `Sony_train_list.txt` rows `./Sony/short/00001_00_0.04s.ARW
  ./Sony/long/00001_00_10s.ARW ISO200 F8`, paths relative to the list file's folder; the raw
  extension maps to `.h5`;
- a folder layout `<folder>/short/*.h5` + `<folder>/long/*.h5`, paired by scene id (the name
  before the first '_'), the long exposure being the first long file of that scene.
Either way `split` keeps the scenes whose id starts with 0 (train), 1 (test) or 2 (val).

Training (`augment=True`), as the authors' train_Sony.py: one sample per scene per epoch
(`per_scene`) with a random short exposure of it (the authors glob `<id>_00*`: frame 00 only
— `first_frame_only`), ratio = min(t_long / t_short, max_ratio), a random `crop`×`crop` packed
window and the aligned 2× window of the ground truth, random vertical/horizontal flips and
transpose, then the input is clipped to 1. Only the window is read from disk.

Evaluation (`augment=False`): every pair, the full image (or a centre `crop`), with
`reference` = what you get with no network: the ratio-scaled input through a naive camera
pipeline — the file's white balance, bilinear demosaic, its camera → sRGB matrix, clipping,
and LibRaw's BT.709 gamma (the ground truth's encoding). That is the fair "no model" baseline:
it differs from the ground truth by the noise and the demosaic quality, which is what the
network is for, not by a missing white balance or gamma.

h5py serialises every call behind one global lock, so loader threads may share this source;
each read opens its file (≈0.1 ms) instead of keeping thousands of handles open. An optional
bounded LRU cache (`cache_mb`) keeps whole decoded files for small data sets."""
from __future__ import annotations

import collections
import logging
import math
import os
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from src.data.listing import LOCAL
from src.data.raw_preprocess import bayer_offsets, exposure_from_name
from src.errors import UserError
from src.registry import DATASETS

log = logging.getLogger(__name__)

SPLITS = {"train": "0", "test": "1", "val": "2", "all": ""}
RGB_SCALE = 65535.0


# --- names and list files ----------------------------------------------------------------------

def scene_id(name: str) -> str:
    """'00001_00_0.04s.ARW' → '00001' (the name before the first '_')."""
    stem = os.path.splitext(os.path.basename(str(name)))[0]
    return stem.split("_", 1)[0]


def frame_id(name: str) -> str:
    """'00001_03_0.1s.ARW' → '03' ('' when the name has no frame field)."""
    parts = os.path.splitext(os.path.basename(str(name)))[0].split("_")
    return parts[1] if len(parts) >= 3 else ""


def exposure_ratio(short_exposure: float, long_exposure: float,
                   max_ratio: float = 300.0) -> float:
    """min(t_long / t_short, max_ratio): the authors' amplification (Sony: 100, 250, 300)."""
    if not (short_exposure > 0 and long_exposure > 0):
        raise ValueError("exposure times must be > 0, got %r and %r"
                         % (short_exposure, long_exposure))
    return float(min(long_exposure / short_exposure, max_ratio))


def read_list_file(path: str) -> List[Tuple[str, str]]:
    """(short, long) paths of a SID list file, relative to its folder, as written."""
    if not os.path.isfile(path):
        raise UserError("SID list file not found: %s (check data.*.list_file and data_url)" % path)
    pairs = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise UserError("%s line %d: expected '<short> <long> [ISO F]', got %r"
                                % (path, n, line.strip()))
            pairs.append((fields[0], fields[1]))
    return pairs


def _h5_path(base_dir: str, rel: str, ext: str) -> str:
    rel = rel[2:] if rel.startswith("./") else rel
    return os.path.normpath(os.path.join(base_dir, os.path.splitext(rel)[0] + ext))


# --- the naive camera pipeline (the evaluation reference) --------------------------------------

def bt709_gamma(linear: np.ndarray) -> np.ndarray:
    """LibRaw's default output curve (gamma 1/2.222 with a 4.5 linear toe = BT.709), which the
    ground truths are encoded with."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x < 0.018, 4.5 * x, 1.099 * np.power(x, 0.45) - 0.099).astype(np.float32)


def _upsample2(plane: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Bilinear ×2 of a Bayer plane whose samples sit at (2i + dy, 2j + dx): known samples are
    kept, the others are the mean of their two neighbours (edges replicate)."""
    def rows(p: np.ndarray, d: int) -> np.ndarray:
        h = p.shape[0]
        out = np.empty((2 * h,) + p.shape[1:], dtype=np.float32)
        out[d::2] = p
        if d == 0:
            out[1::2] = 0.5 * (p + np.concatenate([p[1:], p[-1:]]))
        else:
            out[0::2] = 0.5 * (p + np.concatenate([p[:1], p[:-1]]))
        return out

    return rows(rows(plane, dy).T, dx).T


def naive_isp(packed: np.ndarray, camera_wb: Sequence[float], rgb_cam: np.ndarray,
              cfa: str = "RGGB") -> np.ndarray:
    """Packed (4, h, w) planes in [0, 1] (R, G, B, G; see raw_preprocess) → (3, 2h, 2w) RGB in
    [0, 1]: white balance (multipliers scaled so the smallest is 1, then clipped, as LibRaw),
    bilinear demosaic, camera → linear sRGB, clip, BT.709 gamma."""
    packed = np.asarray(packed, dtype=np.float32)
    wb = np.asarray(camera_wb, dtype=np.float64)[:3]
    if not np.all(wb > 0):
        wb = np.ones(3)  # no as-shot white balance recorded: leave the channels as they are
    wb = (wb / wb.min()).astype(np.float32)
    offsets = bayer_offsets(cfa)
    gains = (wb[0], wb[1], wb[2], wb[1])
    up = [_upsample2(np.minimum(packed[k] * gains[k], 1.0), *offsets[k]) for k in range(4)]
    cam = np.stack([up[0], 0.5 * (up[1] + up[3]), up[2]])
    rgb = np.einsum("ij,jhw->ihw", np.asarray(rgb_cam, dtype=np.float32)[:3, :3], cam)
    return bt709_gamma(rgb)


# --- bounded cache -----------------------------------------------------------------------------

class ArrayCache:
    """Thread-safe LRU of whole decoded files, bounded in bytes (0 disables it)."""

    def __init__(self, max_mb: float):
        self.max_bytes = int(float(max_mb) * 2 ** 20)
        self._items: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> Optional[dict]:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: str, item: dict) -> None:
        size = sum(v.nbytes for v in item.values() if isinstance(v, np.ndarray))
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = item
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= sum(v.nbytes for v in old.values() if isinstance(v, np.ndarray))

    @property
    def nbytes(self) -> int:
        return self._bytes


# --- the source --------------------------------------------------------------------------------

class _Pair:
    __slots__ = ("short", "long", "ratio", "scene")

    def __init__(self, short: str, long: str, ratio: float, scene: str):
        self.short, self.long, self.ratio, self.scene = short, long, ratio, scene


@DATASETS.register
class SIDPairs:
    """Source of SID pairs (see the module docstring). `root` is the staged data_url."""

    def __init__(self, root: str, *, list_file: str = "", folder: str = "Sony",
                 short_dir: str = "short", long_dir: str = "long", split: str = "train",
                 crop: int = 512, augment: bool = True, per_scene: bool = True,
                 first_frame_only: bool = True, max_ratio: float = 300.0,
                 cache_mb: float = 0.0, ext: str = ".h5"):
        if split not in SPLITS:
            raise UserError("SIDPairs split must be one of %s, got %r"
                            % (", ".join(SPLITS), split))
        if int(crop) < 0 or (augment and int(crop) == 0):
            raise UserError("SIDPairs crop must be > 0 for training (0: full images, evaluation "
                            "only), got %r" % (crop,))
        if not float(max_ratio) >= 1:
            raise UserError("SIDPairs max_ratio must be >= 1, got %r" % (max_ratio,))
        self.root = root
        self.crop = int(crop)
        self.augment = bool(augment)
        self.max_ratio = float(max_ratio)
        self.cache = ArrayCache(cache_mb) if float(cache_mb) > 0 else None
        self._shapes: Dict[str, Tuple[int, int]] = {}
        self.ext = ext if ext.startswith(".") else "." + ext
        if list_file:
            path = os.path.join(root, list_file)
            base = os.path.dirname(path)
            rows = [(_h5_path(base, s, self.ext), _h5_path(base, g, self.ext))
                    for s, g in read_list_file(path)]
            where = path
        else:
            rows = self._scan_folder(os.path.join(root, folder), short_dir, long_dir)
            where = os.path.join(root, folder)
        prefix = SPLITS[split]
        rows = [(s, g) for s, g in rows if scene_id(s).startswith(prefix)]
        if first_frame_only:
            rows = [(s, g) for s, g in rows if frame_id(s) in ("00", "")]
        rows = self._present(rows, where)
        self.pairs = [_Pair(s, g, self._ratio(s, g), scene_id(s)) for s, g in rows]
        # Training samples are scenes (the authors' epoch visits every scene once); evaluation
        # samples are pairs.
        if per_scene and self.augment:
            groups: Dict[str, List[int]] = collections.OrderedDict()
            for i, p in enumerate(self.pairs):
                groups.setdefault(p.scene, []).append(i)
            self.items = list(groups.values())
        else:
            self.items = [[i] for i in range(len(self.pairs))]
        log.info("SIDPairs %s (%s): %d pairs, %d samples", where, split, len(self.pairs),
                 len(self.items))

    # -- indexing ---------------------------------------------------------------------------
    @classmethod
    def check_listing(cls, listing, list_file: str = "", folder: str = "Sony",
                      short_dir: str = "short", long_dir: str = "long", split: str = "train",
                      first_frame_only: bool = True, ext: str = ".h5", **_unused) -> str:
        """What `--task=plan` says about this data set in a listing of data_url, by names
        only: the list file is there (its rows are read once staged), or the folder layout
        holds pairs of this split; else UserError naming what is missing."""
        ext = ext if ext.startswith(".") else "." + ext
        converted = sum(1 for rel in listing.files if rel.endswith(ext))
        if list_file:
            path = os.path.join(listing.root, list_file)
            if not listing.isfile(path):
                raise UserError("SID list file not found: %s (check data.*.list_file and "
                                "data_url)" % path)
            if not converted:
                raise UserError("no %s files in %s: run --task=preprocess to convert the raw "
                                "files first" % (ext, listing.root))
            return "%s present; %d %s files in data_url" % (path, converted, ext)
        where = os.path.join(listing.root, folder)
        rows = cls._scan_folder(where, short_dir, long_dir, listing)
        rows = [(s, g) for s, g in rows if scene_id(s).startswith(SPLITS.get(split, ""))]
        if first_frame_only:
            rows = [(s, g) for s, g in rows if frame_id(s) in ("00", "")]
        if not rows:
            raise UserError("no SID pairs in %s for this split: check list_file/folder, split "
                            "and that --task preprocess wrote the .h5 files" % where)
        return "%d %s pairs in %s" % (len(rows), split, where)

    @staticmethod
    def _scan_folder(root: str, short_dir: str, long_dir: str,
                     fs=LOCAL) -> List[Tuple[str, str]]:
        sdir, ldir = os.path.join(root, short_dir), os.path.join(root, long_dir)
        for d in (sdir, ldir):
            if not fs.isdir(d):
                raise UserError("SID folder %s not found: set data.*.folder (or list_file) to "
                                "where %s/ and %s/ are under data_url" % (d, short_dir, long_dir))
        longs: Dict[str, str] = {}
        for name in sorted(fs.listdir(ldir)):
            if name.endswith(".h5") and not name.startswith("."):
                longs.setdefault(scene_id(name), os.path.join(ldir, name))
        rows = []
        for name in sorted(fs.listdir(sdir)):
            if name.endswith(".h5") and not name.startswith("."):
                gt = longs.get(scene_id(name))
                if gt is not None:
                    rows.append((os.path.join(sdir, name), gt))
        return rows

    @staticmethod
    def _present(rows: List[Tuple[str, str]], where: str) -> List[Tuple[str, str]]:
        missing = sorted({p for row in rows for p in row if not os.path.isfile(p)})
        if missing:
            # A raw that failed preprocessing is missing here; train on the rest, but say so.
            log.warning("%s: %d file(s) missing (skipped: run --task preprocess?), e.g. %s",
                        where, len(missing), ", ".join(missing[:3]))
            gone = set(missing)
            rows = [r for r in rows if r[0] not in gone and r[1] not in gone]
        if not rows:
            raise UserError("no SID pairs in %s for this split: check list_file/folder, split "
                            "and that --task preprocess wrote the .h5 files" % where)
        return rows

    def _ratio(self, short: str, long: str) -> float:
        t_in = exposure_from_name(short) or self._attr_exposure(short)
        t_gt = exposure_from_name(long) or self._attr_exposure(long)
        return exposure_ratio(t_in, t_gt, self.max_ratio)

    @staticmethod
    def _attr_exposure(path: str) -> float:
        import h5py

        with h5py.File(path, "r") as f:
            t = float(f.attrs.get("exposure_time", float("nan")))
        if not (t > 0 and math.isfinite(t)):
            raise UserError("%s: no exposure time in its name or EXIF; name it SID-style "
                            "(<id>_<frame>_<seconds>s.<ext>)" % path)
        return t

    def __len__(self) -> int:
        return len(self.items)

    # -- reading ----------------------------------------------------------------------------
    def _meta(self, f) -> dict:
        a = f.attrs
        return {"black": np.asarray(a["black_level"], dtype=np.float32).reshape(4, 1, 1),
                "white": float(a["white_level"]), "cfa": str(a.get("cfa", "RGGB")),
                "camera_wb": np.asarray(a.get("camera_wb", np.ones(4)), dtype=np.float64),
                "rgb_cam": np.asarray(a.get("rgb_cam", np.eye(3)), dtype=np.float64)}

    def _read(self, path: str, key: str, window=None) -> Tuple[np.ndarray, dict]:
        """`key` ('raw' or 'rgb') of a file, whole or a (top, left, h, w) window, + metadata."""
        item = self.cache.get(path + ":" + key) if self.cache is not None else None
        if item is None:
            import h5py

            try:
                with h5py.File(path, "r") as f:
                    if key not in f:
                        raise UserError("%s has no %r data set: ground truths are rendered for "
                                        "raws in a long/ folder (preprocess.gt_dirs)" % (path, key))
                    ds = f[key]
                    whole = self.cache is not None or window is None
                    top, left, h, w = window or (0, 0, 0, 0)
                    data = ds[()] if whole else ds[:, top:top + h, left:left + w]
                    item = dict(self._meta(f), data=data)
            except OSError as exc:
                raise UserError("cannot read %s: %s (re-run --task preprocess)"
                                % (path, exc)) from exc
            if self.cache is None:
                return item["data"], item
            self.cache.put(path + ":" + key, item)
        data = item["data"]
        if window is not None:
            top, left, h, w = window
            data = data[:, top:top + h, left:left + w]
        return data, item

    def _shape(self, path: str, key: str) -> Tuple[int, int]:
        """(H, W) of a data set, remembered per file: the crop window is chosen before the
        read, and re-opening every file twice per sample would double the metadata I/O."""
        shape = self._shapes.get(path + ":" + key)
        if shape is None:
            import h5py

            try:
                with h5py.File(path, "r") as f:
                    shape = tuple(f[key].shape[1:])
            except (OSError, KeyError) as exc:
                raise UserError("cannot read %s: %s (re-run --task preprocess)"
                                % (path, exc)) from exc
            self._shapes[path + ":" + key] = shape
        return shape

    @staticmethod
    def _normalise(raw: np.ndarray, meta: dict, ratio: float) -> np.ndarray:
        black = meta["black"]
        return (np.maximum(raw.astype(np.float32) - black, 0.0) / (meta["white"] - black)
                * np.float32(ratio))

    def load(self, index: int, rng: np.random.Generator) -> dict:
        members = self.items[index]
        pair = self.pairs[members[int(rng.integers(0, len(members)))] if len(members) > 1
                          else members[0]]
        h, w = self._shape(pair.short, "raw")
        if self.augment or self.crop:
            c = self.crop
            if c <= 0 or h < c or w < c:
                raise UserError("%s is %dx%d packed, smaller than the crop %d: lower "
                                "data.*.crop" % (pair.short, h, w, c))
            if self.augment:
                top, left = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            else:
                top, left = (h - c) // 2, (w - c) // 2
            window, gwindow = (top, left, c, c), (2 * top, 2 * left, 2 * c, 2 * c)
        else:
            window = gwindow = None
        raw, meta = self._read(pair.short, "raw", window)
        rgb, _ = self._read(pair.long, "rgb", gwindow)
        want = (raw.shape[1] * 2, raw.shape[2] * 2)
        if rgb.shape[1:] != want:
            raise UserError("%s (%s) and %s (%s) do not align: the ground truth must be twice "
                            "the packed size" % (pair.short, raw.shape, pair.long, rgb.shape))
        x = self._normalise(raw, meta, pair.ratio)
        y = rgb.astype(np.float32) * np.float32(1.0 / RGB_SCALE)
        if self.augment:
            # The authors' three coin flips: vertical, horizontal, transpose.
            if rng.integers(0, 2):
                x, y = x[:, ::-1], y[:, ::-1]
            if rng.integers(0, 2):
                x, y = x[:, :, ::-1], y[:, :, ::-1]
            if rng.integers(0, 2):
                x, y = x.transpose(0, 2, 1), y.transpose(0, 2, 1)
        x = np.minimum(x, 1.0)
        sample = {"input": np.ascontiguousarray(x, dtype=np.float32),
                  "target": np.ascontiguousarray(y, dtype=np.float32)}
        if not self.augment:
            # The short file's name (with its extension: evaluators strip one, and SID names
            # have a dot in the exposure) — '20001_00_0.1s.h5' → samples/20001_00_0.1s.png.
            sample["name"] = os.path.basename(pair.short)
            sample["reference"] = naive_isp(sample["input"], meta["camera_wb"], meta["rgb_cam"],
                                            meta["cfa"])
        return sample

    def describe(self) -> dict:
        ratios = collections.Counter(int(round(p.ratio)) for p in self.pairs)
        return {"pairs": len(self.pairs), "samples": len(self.items),
                "scenes": len({p.scene for p in self.pairs}),
                "ratios": {str(k): v for k, v in sorted(ratios.items())}}
