"""PairedDehaze: hazy/clear image pairs in the layouts the public dehazing sets ship in.

Layouts (`layout:`; "auto" detects it from the folder names):

    reside   RESIDE ITS/OTS/SOTS   hazy/1_1_0.90179.png  ↔ clear/1.png
             the clear name is the hazy name up to the first '_' (any image extension);
             ITS clear images are 20 px larger than their hazy versions: both are centre-
             cropped to their common size, as the authors' loaders do.
    gt       Dense-Haze / NH-HAZE  hazy/46_hazy.png      ↔ GT/46_GT.png
             O-HAZE / I-HAZE       hazy/45_outdoor_hazy.jpg ↔ GT/45_outdoor_GT.jpg
             the clear name is the hazy name with its trailing 'hazy' replaced by 'GT'; the
             two may also sit side by side in one folder (NH-HAZE's archive does that).

`its`, `ots`, `sots` are accepted as names for `reside`; `dense`, `nh`, `ohaze`, `ihaze` for
`gt`.

mode "train": a sample is {"input": hazy crop, "target": clear crop} (CHW float32 RGB in
[0, 1]) with the same random crop and, with `flip_rot`, the same random flip/90° rotation.
mode "eval": full images, {"input", "target", "reference" (= the hazy image), "name"}.

Pure numpy + OpenCV: no MindSpore. Decoded images can be kept in a bounded in-memory cache
(`cache_mb`): ITS re-reads each of its 1,399 clear images ten times per epoch.
"""
from __future__ import annotations

import os
import re
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from src.data.listing import LOCAL
from src.data.images import center_crop, random_crop, random_flip_rot, read_image, to_chw
from src.errors import UserError, did_you_mean
from src.registry import DATASETS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LAYOUT_ALIASES = {
    "reside": "reside", "its": "reside", "ots": "reside", "sots": "reside",
    "gt": "gt", "dense": "gt", "densehaze": "gt", "nh": "gt", "nhhaze": "gt",
    "ohaze": "gt", "ihaze": "gt",
}
_LEADING_INT = re.compile(r"^(\d+)")


def natural_key(name: str):
    """'2_1.png' before '12_1.png': numbers compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", name) if part]


def list_images(folder: str, fs=LOCAL) -> List[str]:
    """Image file names (not paths) directly inside `folder` in natural order, hidden files
    skipped. `fs`: the disk, or a listing of data_url (src/data/listing.py)."""
    return sorted((name for name in fs.listdir(folder)
                   if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
                   and fs.isfile(os.path.join(folder, name))), key=natural_key)


def _find_dir(base: str, candidates: Sequence[str], fs=LOCAL) -> Optional[str]:
    """First entry of `candidates` that exists under `base` as a folder, matched
    case-insensitively (Dense-Haze ships `GT`, some mirrors `gt`)."""
    try:
        entries = {e.lower(): e for e in fs.listdir(base) if fs.isdir(os.path.join(base, e))}
    except OSError:
        return None
    for cand in candidates:
        if cand.lower() in entries:
            return os.path.join(base, entries[cand.lower()])
    return None


def reside_clear_stem(hazy_name: str) -> str:
    return os.path.splitext(hazy_name)[0].split("_", 1)[0]


def gt_clear_stem(hazy_name: str) -> Optional[str]:
    """'46_hazy.png' → '46_GT'; None when the stem does not end in 'hazy'."""
    stem = os.path.splitext(hazy_name)[0]
    if not stem.lower().endswith("hazy"):
        return None
    return stem[:-4] + "GT"


class _ImageCache:
    """Decoded images kept until `budget` bytes are used, then no more are added: the access
    pattern is a random permutation per epoch, where LRU would evict as blindly as random and
    cost a lock round-trip per read. 8-bit images are stored as uint8 (4x smaller) and
    converted back bit-exactly."""

    def __init__(self, budget_bytes: int):
        self.budget = int(budget_bytes)
        self.used = 0
        self.items: Dict[str, Tuple[np.ndarray, bool]] = {}
        self.lock = threading.Lock()

    def read(self, path: str) -> np.ndarray:
        if self.budget <= 0:
            return read_image(path)
        hit = self.items.get(path)
        if hit is not None:
            arr, is_u8 = hit
            if is_u8:
                out = arr.astype(np.float32)
                out *= np.float32(1.0 / 255.0)
                return out
            return arr.copy()
        img = read_image(path)
        as_u8 = np.rint(img * 255.0).astype(np.uint8)
        back = as_u8.astype(np.float32)
        back *= np.float32(1.0 / 255.0)
        is_u8 = bool(np.array_equal(back, img))
        stored = as_u8 if is_u8 else img.copy()
        with self.lock:
            if path not in self.items and self.used + stored.nbytes <= self.budget:
                self.items[path] = (stored, is_u8)
                self.used += stored.nbytes
        return img


@DATASETS.register
class PairedDehaze:
    """Hazy/clear pairs under `root`/`path` (see the module docstring for the layouts).

    root: the staged data folder (the recipe passes data_dir); path: the set inside it, e.g.
    "train" or "ITS". layout: auto | reside (its/ots/sots) | gt (dense/nh/ohaze).
    hazy_dir / clear_dir: override the folder names ('' = per layout: hazy + clear / GT).
    mode: train (random crops) | eval (full images). crop: train patch side (0 = whole image;
    then every image must have the same size to batch). flip_rot: random flips and 90°
    rotations in train mode. ids: [first, last] keeps pairs whose name starts with a number in
    that range (Dense-Haze's official split: train [1, 45], test [51, 55]); [] keeps all.
    cache_mb: decoded-image cache budget in MB (0 = off)."""

    def __init__(self, root: str, path: str = "", layout: str = "auto", hazy_dir: str = "",
                 clear_dir: str = "", mode: str = "train", crop: int = 240,
                 flip_rot: bool = True, ids: Sequence[int] = (), cache_mb: int = 0):
        base = os.path.join(root, path) if path else root
        self.base = base
        if mode not in ("train", "eval"):
            raise UserError("PairedDehaze: mode must be 'train' or 'eval', got %r" % (mode,))
        self.mode = mode
        if isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or crop < 0:
            raise UserError("PairedDehaze: crop must be an integer >= 0 (0 = whole image), "
                            "got %r" % (crop,))
        self.crop = int(crop)
        self.flip_rot = bool(flip_rot)
        self.layout, self.hazy_dir, self.clear_dir, self.pairs = self.discover(
            base, layout, hazy_dir, clear_dir, ids)
        self._cache = _ImageCache(int(cache_mb) * 1024 * 1024)

    # -- discovery ------------------------------------------------------------------------

    @classmethod
    def discover(cls, base: str, layout: str = "auto", hazy_dir: str = "", clear_dir: str = "",
                 ids: Sequence[int] = (), fs=LOCAL
                 ) -> Tuple[str, str, str, List[Tuple[str, str, str]]]:
        """(layout, hazy folder, clear folder, [(hazy, clear, name)]) under `base`, found by
        names only: on the disk, or in a listing of data_url (`fs`)."""
        if not fs.isdir(base):
            raise UserError("PairedDehaze: data folder %s does not exist (check data_url and "
                            "the data set's path)" % base)
        layout = cls._resolve_layout(layout, base, hazy_dir, clear_dir, fs)
        hazy, clear = cls._folders(base, layout, hazy_dir, clear_dir, fs)
        return layout, hazy, clear, cls._pair(layout, hazy, clear, ids, fs)

    @classmethod
    def check_listing(cls, listing, path: str = "", layout: str = "auto", hazy_dir: str = "",
                      clear_dir: str = "", ids: Sequence[int] = (), **_unused) -> str:
        """What `--task=plan` says about this data set in a listing of data_url: the pairs
        found, or (UserError) the first problem the loader would meet."""
        base = os.path.join(listing.root, path) if path else listing.root
        found, hazy, clear, pairs = cls.discover(base, layout, hazy_dir, clear_dir, ids,
                                                 fs=listing)
        return "%d %s pairs: hazy %s, clear %s" % (len(pairs), found, hazy, clear)

    @staticmethod
    def _resolve_layout(layout: str, base: str, hazy_dir: str, clear_dir: str,
                        fs=LOCAL) -> str:
        key = str(layout).lower().replace("-", "").replace("_", "")
        if key != "auto":
            if key not in LAYOUT_ALIASES:
                raise UserError("PairedDehaze: unknown layout %r%s; use auto, reside (its, ots, "
                                "sots) or gt (dense, nh, ohaze)"
                                % (layout, did_you_mean(key, LAYOUT_ALIASES)))
            return LAYOUT_ALIASES[key]
        if clear_dir:
            return "gt" if clear_dir.lower() == "gt" else "reside"
        if _find_dir(base, ["GT"], fs):
            return "gt"
        if _find_dir(base, ["clear"], fs):
            return "reside"
        names = list_images(base, fs)
        if any(gt_clear_stem(n) for n in names):
            return "gt"  # NH-HAZE style: *_hazy and *_GT side by side
        raise UserError("PairedDehaze: cannot tell the layout of %s: expected hazy/ + clear/ "
                        "(RESIDE) or hazy/ + GT/ (Dense-Haze, NH-HAZE, O-HAZE); set layout, "
                        "hazy_dir and clear_dir" % base)

    @staticmethod
    def _folders(base: str, layout: str, hazy_dir: str, clear_dir: str,
                 fs=LOCAL) -> Tuple[str, str]:
        if hazy_dir:
            hazy = os.path.join(base, hazy_dir)
        else:
            hazy = _find_dir(base, ["hazy"], fs)
            if hazy is None and layout == "gt":
                hazy = base
        if clear_dir:
            clear = os.path.join(base, clear_dir)
        else:
            clear = _find_dir(base, ["clear"] if layout == "reside" else ["GT"], fs)
            if clear is None and layout == "gt" and hazy == base:
                clear = base
        want_clear = "clear" if layout == "reside" else "GT"
        if hazy is None or not fs.isdir(hazy):
            raise UserError("PairedDehaze: no hazy image folder %s" % (
                hazy or os.path.join(base, "hazy")))
        if clear is None or not fs.isdir(clear):
            raise UserError("PairedDehaze: no clear image folder %s (layout %s expects "
                            "hazy/ and %s/)" % (clear or os.path.join(base, want_clear),
                                                 layout, want_clear))
        return hazy, clear

    @staticmethod
    def _pair(layout: str, hazy_dir: str, clear_dir: str, ids: Sequence[int],
              fs=LOCAL) -> List[Tuple[str, str, str]]:
        hazy_names = list_images(hazy_dir, fs)
        clear_names = list_images(clear_dir, fs)
        if layout == "gt" and hazy_dir == clear_dir:
            hazy_names = [n for n in hazy_names if gt_clear_stem(n)]
        if not hazy_names:
            raise UserError("PairedDehaze: no hazy images (%s) in %s"
                            % ("/".join(IMAGE_EXTENSIONS), hazy_dir))
        if not clear_names:
            raise UserError("PairedDehaze: no clear images (%s) in %s"
                            % ("/".join(IMAGE_EXTENSIONS), clear_dir))
        by_stem: Dict[str, str] = {}
        for name in clear_names:
            by_stem.setdefault(os.path.splitext(name)[0], name)
        lo_hi = None
        if ids:
            if len(ids) != 2 or int(ids[0]) > int(ids[1]):
                raise UserError("PairedDehaze: ids must be [first, last], got %r" % (list(ids),))
            lo_hi = (int(ids[0]), int(ids[1]))
        pairs = []
        for name in hazy_names:
            if lo_hi is not None:
                m = _LEADING_INT.match(name)
                if not m or not lo_hi[0] <= int(m.group(1)) <= lo_hi[1]:
                    continue
            stem = (reside_clear_stem(name) if layout == "reside" else gt_clear_stem(name))
            if stem is None:
                raise UserError("PairedDehaze: hazy image %s does not end in '_hazy' (layout gt "
                                "pairs NN_hazy.png with GT/NN_GT.png)"
                                % os.path.join(hazy_dir, name))
            clear = by_stem.get(stem)
            if clear is None and layout == "gt":
                # NH-HAZE/O-HAZE archives are not consistent about 'GT' vs 'gt'.
                clear = next((v for k, v in by_stem.items() if k.lower() == stem.lower()), None)
            if clear is None:
                raise UserError("PairedDehaze: hazy image %s has no clear partner: expected %s.* "
                                "in %s" % (os.path.join(hazy_dir, name), stem,
                                           clear_dir))
            pairs.append((os.path.join(hazy_dir, name), os.path.join(clear_dir, clear),
                          name))
        if not pairs:
            raise UserError("PairedDehaze: no hazy images with ids in %r in %s"
                            % (list(ids), hazy_dir))
        return pairs

    # -- samples --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.pairs)

    def read_pair(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """(hazy, clear) HWC float32, centre-cropped to their common size."""
        hazy_path, clear_path, _ = self.pairs[index]
        hazy = self._cache.read(hazy_path)
        clear = self._cache.read(clear_path)
        h = min(hazy.shape[0], clear.shape[0])
        w = min(hazy.shape[1], clear.shape[1])
        if hazy.shape[:2] != (h, w):
            hazy = center_crop(hazy, h, w)
        if clear.shape[:2] != (h, w):
            clear = center_crop(clear, h, w)
        return hazy, clear

    def eval_sample(self, index: int) -> dict:
        """The full pair as a validation sample (whatever the mode)."""
        hazy, clear = self.read_pair(index)
        hazy_chw = to_chw(hazy)
        return {"input": hazy_chw, "target": to_chw(clear), "reference": hazy_chw,
                "name": self.pairs[index][2]}

    def load(self, index: int, rng: Optional[np.random.Generator] = None
             ) -> Dict[str, np.ndarray]:
        if self.mode == "eval":
            return self.eval_sample(index)
        hazy, clear = self.read_pair(index)
        if rng is None:
            rng = np.random.default_rng(index)
        if self.crop:
            hazy, clear = random_crop(rng, hazy, clear, size=self.crop)
        if self.flip_rot:
            hazy, clear = random_flip_rot(rng, hazy, clear, rot90=True)
        return {"input": to_chw(hazy), "target": to_chw(clear)}

    def samples(self, limit: int = 0):
        """Validation samples in order (a generator: one image in memory at a time);
        `limit` > 0 stops early."""
        count = len(self) if not limit else min(limit, len(self))
        for i in range(count):
            yield self.eval_sample(i)
