"""UnpairedDehaze: hazy images (trainA/) and clear images (trainB/) with no correspondence, the
training set of SinGAN-Dehaze (and of CUT / CycleGAN's UnalignedDataset).

A sample is one hazy image and one clear image drawn independently: the hazy one by the
loader's index (so every hazy image is visited once per epoch when trainA/ is the larger
folder), the clear one uniformly at random from the sample's own rng — deterministic for a
(seed, epoch, index), independent of the hazy pick. Each gets its own random resized crop and
horizontal flip.

Values are float32 CHW RGB in [0, 1] like every other Source; the SinGAN-Dehaze recipe maps
them to the generator's [−1, 1] on the way into the nets (recipes/singan_dehaze.py, `to_net`),
the one place the conversion happens for training batches and for prediction alike."""
from __future__ import annotations

import math
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from src.data.images import read_image, to_chw
from src.data.listing import LOCAL
from src.data.paired import IMAGE_EXTENSIONS, list_images
from src.errors import UserError
from src.registry import DATASETS

def _cv2():
    import cv2

    cv2.setNumThreads(1)
    return cv2


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """HWC float image → (height, width): area averaging when shrinking (no aliasing),
    bilinear when enlarging."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    shrinking = height * width < h * w
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = cv2.resize(img, (int(width), int(height)), interpolation=interp)
    return out if out.ndim == 3 else out[..., None]


def limit_side(img: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so that the longer side is at most `max_side` (0: unchanged)."""
    h, w = img.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return img
    s = max_side / float(max(h, w))
    return resize(img, max(1, int(round(h * s))), max(1, int(round(w * s))))


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: Sequence[float], ratio: Sequence[float]
                            ) -> Tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a random fraction `scale` of the area with aspect
    ratio (w/h) log-uniform in `ratio`; torchvision's RandomResizedCrop rule, including its
    fallback to the largest centred crop within `ratio` after 10 failed draws."""
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / float(height)
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@DATASETS.register
class UnpairedDehaze:
    """`root`/`path`/`hazy_dir` and `root`/`path`/`clear_dir` image folders.

    Sample: {"hazy": (3, crop, crop), "clear": (3, crop, crop)} float32 RGB in [0, 1].
    len = max(#hazy, #clear) (CUT's UnalignedDataset); index i reads hazy image i mod #hazy.

    crop: output side. scale / ratio: RandomResizedCrop area fraction and aspect (w/h) ranges
    ([1, 1] and [1, 1] with a square image = plain resize). hflip: random horizontal flips.
    max_side: shrink huge photos (O-HAZE is ~5k × 3k) so the longer side is at most this before
    cropping, so decoding dominates less and crops cover a sensible field of view (0: off)."""

    def __init__(self, root: str, path: str = "", hazy_dir: str = "trainA",
                 clear_dir: str = "trainB", crop: int = 256, scale: Sequence[float] = (0.5, 1.0),
                 ratio: Sequence[float] = (0.75, 4.0 / 3.0), hflip: bool = True,
                 max_side: int = 0):
        base = os.path.join(root, path) if path else root
        self.hazy_dir = os.path.join(base, hazy_dir)
        self.clear_dir = os.path.join(base, clear_dir)
        self.crop = _positive_int(crop, "crop")
        self.scale = _range(scale, "scale", upper=1.0)
        self.ratio = _range(ratio, "ratio")
        self.hflip = bool(hflip)
        self.max_side = 0 if not max_side else _positive_int(max_side, "max_side")
        self.hazy = self._folder(self.hazy_dir, "hazy")
        self.clear = self._folder(self.clear_dir, "clear")

    @classmethod
    def check_listing(cls, listing, path: str = "", hazy_dir: str = "trainA",
                      clear_dir: str = "trainB", **_unused) -> str:
        """What `--task=plan` says about this data set in a listing of data_url (names only):
        the images found, or (UserError) the first folder the loader would miss."""
        base = os.path.join(listing.root, path) if path else listing.root
        hazy = cls._folder(os.path.join(base, hazy_dir), "hazy", listing)
        clear = cls._folder(os.path.join(base, clear_dir), "clear", listing)
        return "%d hazy, %d clear images (%s, %s)" % (
            len(hazy), len(clear), os.path.join(base, hazy_dir), os.path.join(base, clear_dir))

    @staticmethod
    def _folder(folder: str, what: str, fs=LOCAL) -> List[str]:
        if not fs.isdir(folder):
            raise UserError("UnpairedDehaze: %s image folder %s does not exist (expected "
                            "<data>/trainA with hazy and <data>/trainB with clear images; set "
                            "data.train.path / hazy_dir / clear_dir)" % (what, folder))
        files = [os.path.join(folder, name) for name in list_images(folder, fs)]
        if not files:
            raise UserError("UnpairedDehaze: no images (%s) in %s"
                            % ("/".join(IMAGE_EXTENSIONS), folder))
        return files

    def __len__(self) -> int:
        return max(len(self.hazy), len(self.clear))

    def _augment(self, path: str, rng: np.random.Generator) -> np.ndarray:
        img = limit_side(read_image(path), self.max_side)
        top, left, h, w = random_resized_crop_box(rng, img.shape[0], img.shape[1],
                                                  self.scale, self.ratio)
        img = resize(img[top:top + h, left:left + w], self.crop, self.crop)
        if self.hflip and rng.integers(0, 2):
            img = img[:, ::-1]
        return to_chw(img)

    def load(self, index: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        hazy = self.hazy[index % len(self.hazy)]
        clear = self.clear[int(rng.integers(0, len(self.clear)))]
        return {"hazy": self._augment(hazy, rng), "clear": self._augment(clear, rng)}


def _positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError("UnpairedDehaze: %s must be a positive integer, got %r" % (key, value))
    return int(value)


def _range(value, key: str, upper: float = float("inf")) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UserError("UnpairedDehaze: %s must be a pair [low, high], got %r"
                        % (key, value)) from None
    if not 0 < lo <= hi <= upper:
        raise UserError("UnpairedDehaze: %s must satisfy 0 < low <= high%s, got %r" % (
            key, " <= %g" % upper if upper != float("inf") else "", value))
    return lo, hi
