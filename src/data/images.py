"""Image I/O and paired augmentations, pure numpy + OpenCV (no MindSpore).

Images travel as float32 in [0, 1]: HWC RGB straight off disk, CHW once they enter a sample.
Augmentations take an explicit `np.random.Generator` so a sample's crop and flips depend only on
its (seed, epoch, index) rng, never on thread timing."""
from __future__ import annotations

import os
import zlib
from typing import List, Optional, Sequence, Tuple

import numpy as np

from src.errors import UserError


def _cv2():
    import cv2

    # The loader runs its own worker threads; OpenCV's internal pool on top of them would
    # oversubscribe the cores (ModelArts nodes run 8 ranks per host).
    cv2.setNumThreads(1)
    return cv2


def read_image(path: str, info: Optional[dict] = None) -> np.ndarray:
    """8/16-bit PNG/JPG/BMP/TIFF → HWC float32 RGB in [0, 1]. Gray images become 3 channels and
    alpha is dropped; when `info` is a dict it receives the file's "bits" (8, 16 or 32) and its
    "alpha" (HW float32 in [0, 1], or None), so a restored copy can keep both. A missing, empty, truncated, corrupt or undecodable file raises UserError
    naming it: the bytes pass `check_image_bytes` before decoding and the decoded size must be
    the one the header declares, so damaged files are refused, never trained on."""
    cv2 = _cv2()
    if not os.path.isfile(path):
        raise UserError("image not found: %s (check the data set layout under data_url)" % path)
    try:
        # np.fromfile + imdecode instead of imread: imread returns None silently and cannot open
        # non-ASCII paths on some platforms.
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise UserError("cannot read image %s: %s" % (path, exc)) from exc
    declared = check_image_bytes(raw, path)
    if raw[:8].tobytes() == _PNG_SIGNATURE:
        raw = _without_colour_profile(raw)
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
    if img is None:
        raise UserError("cannot decode image %s (%d bytes): corrupt, truncated or not an image; "
                        "re-upload or delete it" % (path, raw.size))
    if declared is not None and img.shape[:2] not in (declared, declared[::-1]):
        raise UserError("image %s decoded to %dx%d but its header says %dx%d: corrupt file; "
                        "re-upload or delete it" % (path, img.shape[0], img.shape[1],
                                                    declared[0], declared[1]))
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    elif img.dtype == np.float32:
        scale = 1.0
    else:
        raise UserError("unsupported pixel type %s in %s (use 8- or 16-bit PNG/JPG)"
                        % (img.dtype, path))
    if info is not None:
        info["bits"] = {1.0: 32, 255.0: 8}.get(scale, 16)
        info["alpha"] = (img[:, :, 3].astype(np.float32) * np.float32(1.0 / scale)
                         if img.ndim == 3 and img.shape[2] == 4 else None)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise UserError("unsupported channel count %d in %s" % (img.shape[2], path))
    out = img.astype(np.float32)
    if scale != 1.0:
        out *= np.float32(1.0 / scale)
    return out


# --- structural checks -------------------------------------------------------------------------
# OpenCV decodes a JPEG cut in half without an error (libjpeg fills the missing rows with gray
# and OpenCV 4.10 does not even print libjpeg's warning), and what a decoder tolerates varies
# with its version. So the container structure is checked before decoding: a JPEG's markers
# must lead, segment by segment, to its end-of-image marker; a PNG's chunks must all have
# their CRC and end with IEND. Both are linear scans (numpy / zlib), about 1-5% of the
# decoding time (measured in tests/test_images.py::test_check_cost_is_small).

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15): they carry the image size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class CorruptImage(UserError):
    """An image file whose bytes are damaged (truncated, a bad checksum, a broken structure)."""


def _corrupt(path: str, what: str) -> CorruptImage:
    return CorruptImage("corrupt image %s: %s; re-upload or delete it" % (path, what))


def check_image_bytes(raw, path: str = "image") -> Optional[Tuple[int, int]]:
    """Check the structure of an encoded JPEG or PNG (other formats pass through; a BMP or
    WebP only needs its declared length). Returns the (height, width) the header declares, or
    None when the format is not one checked here. Raises CorruptImage naming `path`."""
    data = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw
    head = data[:12].tobytes()
    if head[:3] == b"\xff\xd8\xff":
        return _check_jpeg(data, path)
    if head[:8] == _PNG_SIGNATURE:
        return _check_png(data, path)
    if head[:2] == b"BM" and data.size >= 6:
        declared = int.from_bytes(head[2:6], "little")
        if declared and data.size < declared:
            raise _corrupt(path, "BMP truncated (%d of %d bytes)" % (data.size, declared))
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        declared = int.from_bytes(head[4:8], "little") + 8
        if data.size < declared:
            raise _corrupt(path, "WebP truncated (%d of %d bytes)" % (data.size, declared))
    return None


def _check_jpeg(data: np.ndarray, path: str) -> Tuple[int, int]:
    n = int(data.size)
    # Every place a marker can start inside entropy-coded data: 0xFF followed by neither a
    # stuffed 0x00, a fill 0xFF nor a restart marker (RST0-7 sit inside the scan).
    ff = np.flatnonzero(data[:-1] == 0xFF)
    following = data[ff + 1]
    markers = ff[(following != 0x00) & (following != 0xFF)
                 & ((following < 0xD0) | (following > 0xD7))]
    buf = memoryview(data)
    pos, size, scans = 2, None, 0
    while True:
        if pos >= n - 1:
            raise _corrupt(path, "JPEG truncated: %d bytes, no end-of-image marker (FF D9)" % n)
        if buf[pos] != 0xFF:
            raise _corrupt(path, "JPEG structure broken at byte %d (expected a marker)" % pos)
        while pos < n - 1 and buf[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        marker = buf[pos + 1]
        pos += 2
        if marker == 0xD9:
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn / TEM: no length
            continue
        if pos + 2 > n:
            raise _corrupt(path, "JPEG truncated inside a segment header at byte %d" % pos)
        length = (buf[pos] << 8) | buf[pos + 1]
        if length < 2 or pos + length > n:
            raise _corrupt(path, "JPEG truncated: segment FF%02X at byte %d needs %d bytes, "
                                 "the file has %d" % (marker, pos - 2, length, n - pos))
        if marker in _JPEG_SOF and length >= 7:
            size = ((buf[pos + 3] << 8) | buf[pos + 4], (buf[pos + 5] << 8) | buf[pos + 6])
        pos += length
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            scans += 1
            k = int(np.searchsorted(markers, pos))
            if k == len(markers):
                raise _corrupt(path, "JPEG truncated: %d bytes, the image data has no end "
                                     "(no end-of-image marker FF D9)" % n)
            pos = int(markers[k])
    if size is None or scans == 0:
        raise _corrupt(path, "JPEG has no %s" % ("frame header" if size is None else "image data"))
    # Bytes after the end-of-image marker (camera trailers, padding) are ignored by decoders.
    return size


def _check_png(data: np.ndarray, path: str) -> Tuple[int, int]:
    n = int(data.size)
    buf = memoryview(data)
    pos, size, idat = 8, None, False
    while True:
        if pos + 12 > n:
            raise _corrupt(path, "PNG truncated: %d bytes, no IEND chunk" % n)
        length = int.from_bytes(buf[pos:pos + 4], "big")
        ctype = bytes(buf[pos + 4:pos + 8])
        end = pos + 8 + length
        if length > 0x7FFFFFFF or end + 4 > n:
            raise _corrupt(path, "PNG truncated: chunk %r at byte %d needs %d bytes, the file "
                                 "has %d" % (ctype.decode("latin-1"), pos, length + 12, n - pos))
        crc = int.from_bytes(buf[end:end + 4], "big")
        if zlib.crc32(buf[pos + 4:end]) != crc:
            raise _corrupt(path, "PNG chunk %r at byte %d fails its CRC check"
                           % (ctype.decode("latin-1"), pos))
        if pos == 8:
            if ctype != b"IHDR" or length < 8:
                raise _corrupt(path, "PNG does not start with an IHDR chunk")
            size = (int.from_bytes(buf[pos + 12:pos + 16], "big"),
                    int.from_bytes(buf[pos + 8:pos + 12], "big"))
        idat = idat or ctype == b"IDAT"
        pos = end + 4
        if ctype == b"IEND":
            break
    if not idat:
        raise _corrupt(path, "PNG has no image data (IDAT)")
    return size


def _without_colour_profile(data: np.ndarray) -> np.ndarray:
    """A checked PNG's bytes without its iCCP chunk (an embedded ICC colour profile). OpenCV
    never applies colour profiles, but its libpng prints "libpng warning: iCCP: known incorrect
    sRGB profile" to the console on every decode of a file whose profile it dislikes (common
    in photos and scikit-image's sample images). The pixels are the same either way."""
    buf = memoryview(data)
    keep, pos, n = [bytes(buf[:8])], 8, int(data.size)
    dropped = False
    while pos + 12 <= n:
        length = int.from_bytes(buf[pos:pos + 4], "big")
        end = pos + 12 + length
        if bytes(buf[pos + 4:pos + 8]) == b"iCCP":
            dropped = True
        else:
            keep.append(bytes(buf[pos:end]))
        if bytes(buf[pos + 4:pos + 8]) in (b"IEND", b"IDAT") and not dropped:
            return data  # iCCP must come before the image data: none here
        pos = end
    return np.frombuffer(b"".join(keep), dtype=np.uint8) if dropped else data


def save_png(path: str, hwc: np.ndarray, *, bits: int = 8) -> str:
    """HWC float RGB or RGBA in [0, 1] (or HW gray) → 8-bit (or `bits`=16) PNG, written
    atomically."""
    cv2 = _cv2()
    top = 65535.0 if bits == 16 else 255.0
    img = np.clip(np.asarray(hwc, dtype=np.float32), 0.0, 1.0)
    img = (img * top + 0.5).astype(np.uint16 if bits == 16 else np.uint8)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("PNG encoding failed for %s" % path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    # Sample PNGs are pushed to OBS while training runs: never let the uploader see half a file.
    tmp = os.path.join(parent, ".%s.tmp" % os.path.basename(path))
    buf.tofile(tmp)
    os.replace(tmp, path)
    return path


def to_chw(hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(hwc, (2, 0, 1)), dtype=np.float32)


def to_hwc(chw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(chw, (1, 2, 0)))


def _hw(a: np.ndarray, chw: bool) -> Tuple[int, int]:
    return (a.shape[-2], a.shape[-1]) if chw else (a.shape[0], a.shape[1])


def random_crop(rng: np.random.Generator, *arrays: np.ndarray, size, chw: bool = False,
                scales: Sequence[int] = ()) -> List[np.ndarray]:
    """The same random `size` crop (int or (h, w)) of every array. Arrays are HWC (or CHW with
    chw=True). `scales[i]` > 1 marks an array at that multiple of the first one's resolution
    (SID: packed raw at H/2, RGB target at H): its crop is the scaled window."""
    ch, cw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    h, w = _hw(arrays[0], chw)
    if h < ch or w < cw:
        raise UserError("image of size %dx%d is smaller than the crop %dx%d: lower "
                        "data.train.crop (patch size) or remove the small images" % (h, w, ch, cw))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    out = []
    for i, a in enumerate(arrays):
        s = int(scales[i]) if i < len(scales) else 1
        ah, aw = _hw(a, chw)
        if (ah, aw) != (h * s, w * s):
            raise ValueError("random_crop: array %d is %dx%d, expected %dx%d"
                             % (i, ah, aw, h * s, w * s))
        ys, xs = slice(top * s, (top + ch) * s), slice(left * s, (left + cw) * s)
        out.append(np.ascontiguousarray(a[..., ys, xs] if chw else a[ys, xs]))
    return out


def random_flip_rot(rng: np.random.Generator, *arrays: np.ndarray, rot90: bool = True,
                    chw: bool = False) -> List[np.ndarray]:
    """The same random horizontal flip / vertical flip / 90° rotation of every array (the 8
    dihedral transforms when rot90, else the horizontal flip only)."""
    hflip = bool(rng.integers(0, 2))
    vflip = bool(rng.integers(0, 2)) if rot90 else False
    transpose = bool(rng.integers(0, 2)) if rot90 else False
    ya, xa = (-2, -1) if chw else (0, 1)
    out = []
    for a in arrays:
        if hflip:
            a = np.flip(a, axis=xa)
        if vflip:
            a = np.flip(a, axis=ya)
        if transpose:
            a = np.swapaxes(a, ya, xa)
        out.append(np.ascontiguousarray(a))
    return out


def center_crop(img: np.ndarray, h: int, w: int, *, chw: bool = False) -> np.ndarray:
    ih, iw = _hw(img, chw)
    if ih < h or iw < w:
        raise UserError("image of size %dx%d is smaller than the crop %dx%d" % (ih, iw, h, w))
    top, left = (ih - h) // 2, (iw - w) // 2
    ys, xs = slice(top, top + h), slice(left, left + w)
    return np.ascontiguousarray(img[..., ys, xs] if chw else img[ys, xs])


def pad_to(chw: np.ndarray, h: int, w: int, mode: str = "reflect") -> np.ndarray:
    """Pad the last two axes (bottom/right) up to h × w. Works for CHW and NCHW."""
    ph, pw = h - chw.shape[-2], w - chw.shape[-1]
    if ph == 0 and pw == 0:
        return chw
    # Reflect cannot pad more than size-1; tiny images fall back to edge replication.
    if mode == "reflect" and (ph >= chw.shape[-2] or pw >= chw.shape[-1]):
        mode = "edge"
    return np.pad(chw, [(0, 0)] * (chw.ndim - 2) + [(0, ph), (0, pw)], mode=mode)


def pad_to_multiple(chw: np.ndarray, m: int, mode: str = "reflect"
                    ) -> Tuple[np.ndarray, Tuple[int, int]]:
    """Pad the last two axes (bottom/right) up to a multiple of m. Returns (padded, (h, w)) with
    the original size, so the caller crops the prediction back. Works for CHW and NCHW."""
    h, w = chw.shape[-2], chw.shape[-1]
    return pad_to(chw, h + (-h) % m, w + (-w) % m, mode), (h, w)


def make_grid(images: Sequence[np.ndarray], *, gap: int = 4, value: float = 1.0) -> np.ndarray:
    """Side-by-side HWC images (heights may differ: shorter ones are padded) separated by
    `gap` columns of `value`."""
    if not images:
        raise ValueError("make_grid: no images")
    imgs = []
    for im in images:
        im = np.asarray(im, dtype=np.float32)
        if im.ndim == 2:
            im = im[..., None]
        if im.shape[2] == 1:
            im = np.repeat(im, 3, axis=2)
        imgs.append(np.clip(im, 0.0, 1.0))
    height = max(im.shape[0] for im in imgs)
    width = sum(im.shape[1] for im in imgs) + gap * (len(imgs) - 1)
    grid = np.full((height, width, 3), value, dtype=np.float32)
    x = 0
    for im in imgs:
        grid[:im.shape[0], x:x + im.shape[1]] = im
        x += im.shape[1] + gap
    return grid


def labelled_grid(images: Sequence[np.ndarray], labels: Sequence[Sequence[str]], *,
                  min_side: int = 256, gap: int = 6) -> np.ndarray:
    """make_grid with a caption band above each image (`labels[i]`: its lines, e.g. "output",
    "PSNR 15.90  SSIM 0.376"). Small images are enlarged by a whole factor (nearest pixel: what
    is shown is the pixels themselves) until their shorter side reaches `min_side`, so that
    the grid and its text stay readable."""
    cv2 = _cv2()
    if len(images) != len(labels):
        raise ValueError("labelled_grid: %d images, %d labels" % (len(images), len(labels)))
    shortest = min(min(np.asarray(im).shape[:2]) for im in images)
    factor = max(1, -(-int(min_side) // max(1, shortest)))  # ceil
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.55, 1
    line_h = cv2.getTextSize("Ag", font, scale, thick)[0][1] + 10
    band = line_h * max(len(lines) for lines in labels) + 6
    panels = []
    for im, lines in zip(images, labels):
        im = np.asarray(im, dtype=np.float32)
        if im.ndim == 2:
            im = im[..., None]
        if im.shape[2] == 1:
            im = np.repeat(im, 3, axis=2)
        if factor > 1:
            im = np.repeat(np.repeat(im, factor, axis=0), factor, axis=1)
        caption = np.full((band, im.shape[1], 3), 255, dtype=np.uint8)
        for k, text in enumerate(lines):
            cv2.putText(caption, str(text), (6, line_h * (k + 1)), font, scale, (0, 0, 0),
                        thick, cv2.LINE_AA)
        panels.append(np.concatenate([caption.astype(np.float32) / 255.0,
                                      np.clip(im, 0.0, 1.0)], axis=0))
    return make_grid(panels, gap=gap)
