"""Raw files (ARW, DNG, NEF, ... anything LibRaw opens) → one HDF5 file per raw.

Decoding a 12-megapixel raw and demosaicking its ground truth takes about a second; doing it
once, up front, makes training read-bound instead of decode-bound, and lets training read just
the random crop it needs. The public SID ports hold the whole decoded set in memory (50-110 GB);
this converter streams: worker processes take one file at a time, write its HDF5 file and
return a few numbers, so peak memory is (workers + 1) × one file however many files there are.

Per raw `<raw_dir>/<rel>/<stem>.<ext>` it writes `<out_dir>/<rel>/<stem>.h5`:
  raw   uint16 (4, H/2, W/2)  the packed Bayer planes, as recorded (black level NOT subtracted):
                              lossless, half the bytes of float32, and normalising only the crop
                              a sample reads is cheaper than normalising whole images up front
  rgb   uint16 (3, H, W)      long exposures only: LibRaw's 16-bit sRGB rendering, the SID
                              ground truth (postprocess(use_camera_wb=True, half_size=False,
                              no_auto_bright=True, output_bps=16), no rotation)
and attributes: black_level (per plane), white_level, exposure_time (s; NaN when neither the
name nor the EXIF says), exposure_source, cfa (e.g. 'RGGB'), planes ('R,G,B,G'), camera_wb,
rgb_cam (camera → linear sRGB, 3×3), iso, source (the raw's relative path).

Plane order: SID packs RGGB as R (0,0), G (0,1), B (1,1), G (1,0). For any 2×2 Bayer pattern
this module emits the planes with the same roles: red, the green on red's row, blue, the green
on blue's row, read from each file's own CFA layout (rawpy's raw_colors_visible/color_desc),
never assumed. (A non-RGGB sensor's planes sit half a pixel differently inside the 2×2 block;
a network trained on one layout is not expected to transfer to another.)

Storage: chunked ({RAW,RGB}_CHUNK) so a training crop reads only the chunks it covers, with
byte-shuffle + LZF by default. Measured on a Sony-sized synthetic pair (4256×2848, one 10 s
ground truth + one 0.1 s input) on 2 shared CPU cores: none 102 + 25.5 MB, 1.6 s to convert,
17 ms to load a 512 training sample; lzf 72 + 10.4 MB, 2.4 s, 60 ms; gzip(1) 64 + 7.4 MB, 3.9 s,
75 ms. LZF halves what every job stages from OBS (≈45 GB instead of ≈92 GB for SID Sony) and
its sample time stays far below a training step.

Writes are atomic (temporary file, then rename), so an interrupted run leaves no half file, and
a re-run skips what is complete: a local output is opened and checked (validate_h5: a file
truncated or damaged later, e.g. by a copy cut short, is converted again); an output at a remote
data_url is judged from the listing alone, by the size the manifest PREPROCESSED.jsonl recorded
when it was written (src/data/manifest.py). A raw LibRaw cannot decode (truncated, corrupt, not Bayer) is logged
by name, skipped and listed in the report's `failed`; the runner turns failures into a non-zero
exit status."""
from __future__ import annotations

import collections
import logging
import math
import multiprocessing
import os
import re
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from src.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "lsid-hdf5"
FORMAT_VERSION = 1
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# Extensions of the raw formats LibRaw reads (compared case-insensitively).
RAW_EXTENSIONS = (".arw", ".srf", ".sr2", ".dng", ".nef", ".nrw", ".cr2", ".cr3", ".crw",
                  ".raf", ".orf", ".rw2", ".pef", ".srw", ".3fr", ".fff", ".iiq", ".erf",
                  ".kdc", ".dcr", ".mos", ".mef", ".mrw", ".raw", ".rwl", ".x3f")

# Chunk sides (packed / RGB pixels): a 512 training crop reads ~25 chunks instead of the whole
# image, and a chunk is big enough that per-chunk overhead does not dominate.
RAW_CHUNK = 128
RGB_CHUNK = 256
COMPRESSIONS = ("none", "lzf", "gzip")

_EXPOSURE_IN_NAME = re.compile(r"_(\d+(?:\.\d*)?|\.\d+)s$", re.IGNORECASE)
_TEMP_MARK = ".part-"


# --- packing -----------------------------------------------------------------------------------

def _color_letters(color_desc: Union[bytes, str]) -> str:
    if isinstance(color_desc, bytes):
        color_desc = color_desc.decode("ascii", "replace")
    return str(color_desc).upper()


def bayer_offsets(pattern, color_desc: Union[bytes, str] = "RGBG") -> Tuple[Tuple[int, int], ...]:
    """(dy, dx) inside the 2×2 block of the four packed planes, in SID's order: red, the green
    on red's row, blue, the green on blue's row. `pattern`: a 2×2 array of colour indices into
    `color_desc` (rawpy's raw_colors_visible[:2, :2] / raw_pattern with color_desc) or a string
    like 'RGGB' (row-major). Raises ValueError for anything but a 2×2 Bayer layout."""
    if isinstance(pattern, str):
        letters = pattern.upper()
        if len(letters) != 4:
            raise ValueError("CFA pattern %r: expected 4 letters such as 'RGGB'" % pattern)
    else:
        idx = np.asarray(pattern)
        if idx.shape != (2, 2):
            raise ValueError("not a 2x2 Bayer sensor (CFA repeat %s); SID's 4-channel packing "
                             "needs one" % (idx.shape,))
        desc = _color_letters(color_desc)
        try:
            letters = "".join(desc[int(i)] for i in idx.ravel())
        except IndexError:
            raise ValueError("CFA pattern %s indexes past colour description %r"
                             % (idx.tolist(), desc)) from None
    if sorted(letters) != ["B", "G", "G", "R"]:
        raise ValueError("CFA pattern %r is not a Bayer pattern (one R, two G, one B); SID's "
                         "4-channel packing needs one" % letters)
    pos = [(k // 2, k % 2) for k in range(4)]
    red = pos[letters.index("R")]
    blue = pos[letters.index("B")]
    greens = [p for p, c in zip(pos, letters) if c == "G"]
    green_r = next(p for p in greens if p[0] == red[0])
    green_b = next(p for p in greens if p[0] == blue[0])
    return red, green_r, blue, green_b


def cfa_string(pattern, color_desc: Union[bytes, str] = "RGBG") -> str:
    """The 2×2 layout as letters, row-major ('RGGB', 'GRBG', ...)."""
    if isinstance(pattern, str):
        return pattern.upper()
    desc = _color_letters(color_desc)
    return "".join(desc[int(i)] for i in np.asarray(pattern).ravel())


def _plane_levels(black, pattern, offsets) -> np.ndarray:
    """Black level per packed plane: a scalar, or rawpy's black_level_per_channel (indexed by
    colour index) mapped through the pattern."""
    black = np.asarray(black, dtype=np.float64).ravel()
    if black.size == 1:
        return np.repeat(black, 4)
    if isinstance(pattern, str):
        raise ValueError("per-channel black levels need the numeric pattern (colour indices)")
    idx = np.asarray(pattern)
    return np.array([black[int(idx[dy, dx])] for dy, dx in offsets], dtype=np.float64)


def pack_bayer(raw_image: np.ndarray, black, white, pattern,
               color_desc: Union[bytes, str] = "RGBG", *, normalize: bool = True) -> np.ndarray:
    """Bayer mosaic (H×W) → (4, H/2, W/2) planes in SID's order (see bayer_offsets).

    normalize=True: float32 `max(raw − black, 0) / (white − black)` per plane, as the authors'
    pack_raw (black/white from the file, not Sony's 512/16383). normalize=False: the recorded
    values, same dtype (what the HDF5 files store). Odd trailing rows/columns are dropped."""
    raw_image = np.asarray(raw_image)
    if raw_image.ndim != 2:
        raise ValueError("pack_bayer: expected an H×W mosaic, got shape %s" % (raw_image.shape,))
    offsets = bayer_offsets(pattern, color_desc)
    h, w = raw_image.shape[0] // 2 * 2, raw_image.shape[1] // 2 * 2
    planes = np.stack([raw_image[dy:h:2, dx:w:2] for dy, dx in offsets])
    if not normalize:
        return planes
    levels = _plane_levels(black, pattern, offsets).astype(np.float32)[:, None, None]
    span = np.float32(white) - levels
    if np.any(span <= 0):
        raise ValueError("white level %r is not above the black levels %s" % (white, levels.ravel()))
    return np.maximum(planes.astype(np.float32) - levels, 0.0) / span


# --- exposure ----------------------------------------------------------------------------------

def exposure_from_name(name: str) -> Optional[float]:
    """Exposure time in seconds from a SID file name ('00001_00_0.04s.ARW' → 0.04,
    '00001_00_10s.h5' → 10.0), or None when the name carries none."""
    stem = os.path.splitext(os.path.basename(str(name)))[0]
    m = _EXPOSURE_IN_NAME.search(stem)
    if not m:
        return None
    value = float(m.group(1))
    return value if value > 0 else None


def exposure_from_exif(path: str) -> Optional[float]:
    """ExposureTime (EXIF 33434) from a TIFF-based raw (DNG, ARW, NEF, CR2, PEF, ...): IFD0, its
    EXIF sub-IFD or any page. None when absent or unreadable."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                tag = page.tags.get(33434)
                if tag is not None:
                    return _positive(tag.value)
                exif = page.tags.get(34665)
                if exif is not None and isinstance(exif.value, dict):
                    value = exif.value.get("ExposureTime")
                    if value is not None:
                        return _positive(value)
    except Exception:  # not TIFF-based (CR3, RAF...) or damaged: the caller reports "unknown"
        return None
    return None


def _positive(value) -> Optional[float]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        value = value[0] / value[1] if value[1] else 0.0
    value = float(value)
    return value if value > 0 and math.isfinite(value) else None


def _exposure(path: str, raw) -> Tuple[float, str]:
    """(seconds, source): the file name wins (SID's names are the published exposures), then
    LibRaw's EXIF reading, then tifffile's; NaN/'none' when nothing says."""
    t = exposure_from_name(path)
    if t is not None:
        return t, "name"
    other = getattr(raw, "other", None)  # rawpy >= 0.19
    if other is not None:
        t = _positive(getattr(other, "shutter_speed", 0.0) or 0.0)
        if t is not None:
            return t, "exif"
    t = exposure_from_exif(path)
    if t is not None:
        return t, "exif"
    return float("nan"), "none"


# --- one file ----------------------------------------------------------------------------------

def output_name(rel_path: str) -> str:
    return os.path.splitext(rel_path)[0] + ".h5"


#: Attributes convert_raw writes on every file.
REQUIRED_ATTRS = ("format", "version", "source", "cfa", "planes", "black_level", "white_level",
                  "exposure_time", "exposure_source", "camera_wb", "rgb_cam", "iso",
                  "ground_truth")


def validate_h5(path: str) -> Optional[str]:
    """None when `path` is a complete output of this converter, else why not ('truncated
    file...', 'no dataset rgb', ...). Opening checks the file's recorded end against its size
    (HDF5 refuses a truncated file); then the attributes and datasets convert_raw writes, and
    the last chunk of each dataset is read: ~4 ms for a Sony-sized pair, no full read."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != HDF5_SIGNATURE:
                return "not an HDF5 file"
    except OSError as exc:
        return "unreadable: %s" % exc
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = f.attrs
            missing = [a for a in REQUIRED_ATTRS if a not in attrs]
            if missing:
                return "attribute %s missing" % missing[0]
            if attrs["format"] != FORMAT or int(attrs["version"]) != FORMAT_VERSION:
                return "format %r version %r, expected %r %d" % (
                    attrs["format"], attrs["version"], FORMAT, FORMAT_VERSION)
            if "raw" not in f:
                return "no dataset raw"
            raw = f["raw"]
            if raw.dtype != np.uint16 or raw.ndim != 3 or raw.shape[0] != 4 or 0 in raw.shape:
                return "dataset raw is %s %s, expected uint16 (4, H, W)" % (raw.dtype, raw.shape)
            raw[:, -1, -1]
            if bool(attrs["ground_truth"]):
                if "rgb" not in f:
                    return "no dataset rgb (ground truth)"
                rgb = f["rgb"]
                want = (3, 2 * raw.shape[1], 2 * raw.shape[2])
                if rgb.dtype != np.uint16 or rgb.shape != want:
                    return "dataset rgb is %s %s, expected uint16 %s" % (rgb.dtype, rgb.shape,
                                                                       want)
                rgb[:, -1, -1]
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError... for damaged files
        return _one_line(exc)
    return None


def is_complete(path: str) -> bool:
    """An output exists and is complete (validate_h5 finds nothing wrong with it)."""
    return validate_h5(path) is None


def convert_raw(src: str, dst: str, *, ground_truth: bool, compression: str = "lzf",
                source_name: str = "") -> dict:
    """Decode one raw and write its HDF5 file atomically → {name, seconds, bytes, ...}.
    Raises on any failure (the caller reports it by name); never leaves a partial `dst`."""
    import h5py
    import rawpy

    started = time.time()
    comp = _h5_compression(compression)
    with rawpy.imread(src) as raw:
        mosaic = raw.raw_image_visible
        colors = raw.raw_colors_visible
        if mosaic.shape[0] < 4 or mosaic.shape[1] < 4:
            raise ValueError("image of %s pixels is too small" % (mosaic.shape,))
        pattern = np.array(colors[:2, :2])
        # The 2×2 pattern must repeat: X-Trans (6×6) sensors fail here, by name.
        n = min(12, colors.shape[0], colors.shape[1]) // 2 * 2
        if not np.array_equal(colors[:n, :n], np.tile(pattern, (n // 2, n // 2))):
            raise ValueError("CFA does not repeat every 2 pixels (X-Trans or another non-Bayer "
                             "layout); SID's 4-channel packing needs a Bayer sensor")
        desc = raw.color_desc
        offsets = bayer_offsets(pattern, desc)
        packed = np.asarray(pack_bayer(mosaic, 0, 1, pattern, desc, normalize=False), np.uint16)
        black = _plane_levels(raw.black_level_per_channel, pattern, offsets)
        white = float(raw.white_level)
        exposure, exposure_source = _exposure(src, raw)
        camera_wb = np.asarray(raw.camera_whitebalance, dtype=np.float64)
        rgb_cam = np.asarray(raw.color_matrix, dtype=np.float64)[:, :3]
        other = getattr(raw, "other", None)
        iso = float(getattr(other, "iso_speed", 0.0) or 0.0) if other is not None else 0.0
        rgb = None
        if ground_truth:
            rgb = raw.postprocess(use_camera_wb=True, half_size=False, no_auto_bright=True,
                                  output_bps=16, user_flip=0)
            h, w = packed.shape[1] * 2, packed.shape[2] * 2
            if rgb.shape[0] < h or rgb.shape[1] < w:
                raise ValueError("LibRaw rendered %s pixels for a %s mosaic; ground truth and raw "
                                 "would not align" % (rgb.shape[:2], mosaic.shape))
            rgb = np.ascontiguousarray(np.transpose(rgb[:h, :w], (2, 0, 1)))
        cfa = cfa_string(pattern, desc)
    del mosaic, colors

    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, ".%s%s%d" % (os.path.basename(dst), _TEMP_MARK, os.getpid()))
    try:
        with h5py.File(tmp, "w") as f:
            _dataset(f, "raw", packed, RAW_CHUNK, comp)
            if rgb is not None:
                _dataset(f, "rgb", rgb, RGB_CHUNK, comp)
            a = f.attrs
            a["format"] = FORMAT
            a["version"] = FORMAT_VERSION
            a["source"] = source_name or os.path.basename(src)
            a["cfa"] = cfa
            a["planes"] = "R,G,B,G"
            a["black_level"] = black.astype(np.float32)
            a["white_level"] = np.float32(white)
            a["exposure_time"] = np.float64(exposure)
            a["exposure_source"] = exposure_source
            a["camera_wb"] = camera_wb.astype(np.float32)
            a["rgb_cam"] = rgb_cam.astype(np.float32)
            a["iso"] = np.float32(iso)
            a["ground_truth"] = rgb is not None
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"name": source_name or os.path.basename(src), "seconds": time.time() - started,
            "bytes": os.path.getsize(dst), "exposure_source": exposure_source,
            "ground_truth": rgb is not None}


def _h5_compression(name: str) -> dict:
    name = str(name or "none").lower()
    if name not in COMPRESSIONS:
        raise UserError("preprocess.compression must be one of %s, got %r"
                        % (", ".join(COMPRESSIONS), name))
    if name == "none":
        return {}
    # Shuffle groups the high bytes of 16-bit samples together: dark raw frames then compress
    # well (their values sit a few DN above black).
    opts = {"compression": name, "shuffle": True}
    if name == "gzip":
        opts["compression_opts"] = 1
    return opts


def _dataset(f, name: str, data: np.ndarray, side: int, comp: dict) -> None:
    chunks = (data.shape[0], min(side, data.shape[1]), min(side, data.shape[2]))
    f.create_dataset(name, data=data, chunks=chunks, **comp)


# --- many files --------------------------------------------------------------------------------

def find_raws(raw_dir: str, extensions: Sequence[str] = RAW_EXTENSIONS) -> List[str]:
    """Relative paths of the raw files under raw_dir, sorted (hidden files skipped)."""
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    found = []
    for root, dirs, files in os.walk(raw_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(exts):
                found.append(os.path.relpath(os.path.join(root, name), raw_dir))
    return sorted(found)


def wants_ground_truth(rel_path: str, gt_dirs: Sequence[str]) -> bool:
    """SID keeps long exposures (the ground truths) in `long/`: a raw with a folder named in
    gt_dirs on its path gets the rendered RGB too. '*' renders every raw."""
    if "*" in gt_dirs:
        return True
    parts = rel_path.replace("\\", "/").split("/")[:-1]
    wanted = {d.lower() for d in gt_dirs}
    return any(p.lower() in wanted for p in parts)


def _worker_init() -> None:
    # Each worker already is one of `workers` parallel jobs: LibRaw's OpenMP threads on top
    # would oversubscribe the cores. Set before rawpy (and its libgomp) loads in this process.
    os.environ["OMP_NUM_THREADS"] = "1"


def _worker(task: Tuple[str, str, bool, str, str]) -> dict:
    src, dst, gt, compression, name = task
    try:
        return convert_raw(src, dst, ground_truth=gt, compression=compression, source_name=name)
    except Exception as exc:  # reported by name in the parent; one bad raw must not stop the run
        return {"name": name, "error": "%s: %s" % (type(exc).__name__, _one_line(exc))}


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc.args[0] if exc.args else None, bytes):
        text = exc.args[0].decode("utf-8", "replace")
    return " ".join(text.split()) or type(exc).__name__


class _PeakRSS:
    """Samples the resident memory of this process plus all its children (the workers) in a
    background thread; `peak_mb` is the largest sum seen. Needs psutil (optional)."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak_mb: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self):
        try:
            import psutil
        except ImportError:
            return self
        self._proc = psutil.Process()
        self.peak_mb = 0.0
        self._thread = threading.Thread(target=self._run, name="rss-monitor", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        total = 0
        for p in [self._proc] + self._proc.children(recursive=True):
            try:
                total += p.memory_info().rss
            except Exception:  # a worker exiting between listing and reading
                pass
        self.peak_mb = max(self.peak_mb or 0.0, total / 2.0 ** 20)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()
        return False


def remove_stale_parts(out_dir: str) -> int:
    """Delete temporary files an interrupted run left behind (one converter per out_dir)."""
    removed = 0
    for root, _dirs, files in os.walk(out_dir):
        for name in files:
            if name.startswith(".") and _TEMP_MARK in name:
                os.remove(os.path.join(root, name))
                removed += 1
    return removed


def copy_list_files(raw_dir: str, out_dir: str) -> List[str]:
    """SID's list files (any .txt under raw_dir) go beside the HDF5 files, so the converted set
    is self-contained at data_url. Unchanged files are not rewritten."""
    copied = []
    for root, dirs, files in os.walk(raw_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.lower().endswith(".txt") or name.startswith("."):
                continue
            src = os.path.join(root, name)
            rel = os.path.relpath(src, raw_dir)
            dst = os.path.join(out_dir, rel)
            if os.path.isfile(dst) and _same_bytes(src, dst):
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            tmp = os.path.join(os.path.dirname(dst), ".%s%s%d" % (name, _TEMP_MARK, os.getpid()))
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            copied.append(rel)
    return copied


def _same_bytes(a: str, b: str) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def preprocess_raws(raw_dir: str, out_dir: str, *, workers: Optional[int] = None,
                    gt_dirs: Sequence[str] = ("long",), compression: str = "lzf",
                    extensions: Sequence[str] = RAW_EXTENSIONS,
                    done: Union[Mapping[str, Optional[int]], Iterable[str]] = (),
                    log_every: float = 30.0) -> dict:
    """Convert every raw under raw_dir to `<out_dir>/<same path>.h5` (see the module docstring).

    workers: processes decoding in parallel (None: one per CPU; 0: in this process). An output
    already in out_dir is skipped when validate_h5 finds it complete (else it is converted
    again), so an interrupted run resumes. `done` maps outputs (relative .h5 paths) that exist
    elsewhere, e.g. listed at a remote data_url, to their listed sizes: one is skipped without a
    local copy only when the manifest in out_dir (PREPROCESSED.jsonl, see src/data/manifest.py;
    the caller fetches the destination's) records that very size; bare names (no sizes) are
    never trusted. The manifest gets a line as each output completes and is rewritten at the
    end with the outputs known complete. Returns
    {converted, skipped, redone: [outputs found incomplete], failed: [names],
    errors: {name: message}, list_files, manifest, seconds, files_per_second, workers,
    bytes_written, peak_rss_mb (this process + workers, sampled; None without psutil),
    peak_worker_rss_mb}."""
    from src.data.manifest import FileLog

    if not os.path.isdir(raw_dir):
        raise UserError("preprocess: raw folder %s does not exist (check preprocess.raw_url)"
                        % raw_dir)
    _h5_compression(compression)
    if workers is None:
        workers = os.cpu_count() or 1
    workers = int(workers)
    if workers < 0:
        raise UserError("preprocess.workers must be >= 0 (0: in-process), got %d" % workers)
    started = time.time()
    os.makedirs(out_dir, exist_ok=True)
    stale = remove_stale_parts(out_dir)
    if stale:
        log.info("removed %d temporary file(s) left by an interrupted run", stale)
    rels = find_raws(raw_dir, extensions)
    if not rels:
        raise UserError("preprocess: no raw files (%s) under %s; check preprocess.raw_url"
                        % (", ".join(sorted({e.lstrip('.') for e in extensions})[:6]) + ", ...",
                           raw_dir))
    lists = copy_list_files(raw_dir, out_dir)

    listed: Dict[str, Optional[int]] = (
        {k.replace("\\", "/"): v for k, v in done.items()} if isinstance(done, Mapping)
        else {d.replace("\\", "/"): None for d in done})
    manifest = FileLog(out_dir)
    recorded = dict(manifest.sizes)
    complete: Dict[str, int] = {}   # output → size, known complete (the final manifest)
    errors: Dict[str, str] = {}
    by_output: Dict[str, str] = {}
    tasks = []
    redone: List[str] = []
    skipped = 0
    for rel in rels:
        out_rel = output_name(rel).replace("\\", "/")
        if out_rel in by_output:
            errors[rel] = "same output %s as %s: rename one of them" % (out_rel, by_output[out_rel])
            continue
        by_output[out_rel] = rel
        dst = os.path.join(out_dir, out_rel)
        size = listed.get(out_rel)
        if size is not None and recorded.get(out_rel) == size:
            complete[out_rel] = size
            skipped += 1
            continue
        if os.path.exists(dst):
            problem = validate_h5(dst)
            if problem is None:
                complete[out_rel] = os.path.getsize(dst)
                skipped += 1
                continue
            redone.append("%s (%s)" % (out_rel, problem))
        elif out_rel in listed:
            redone.append("%s (at the destination %s)" % (
                out_rel, "with another size than recorded when it was written"
                if out_rel in recorded else "but no manifest records it complete"))
        tasks.append((os.path.join(raw_dir, rel), dst, wants_ground_truth(rel, gt_dirs),
                      compression, rel))
    if redone:
        log.warning("%d existing output(s) are incomplete or unverified and are converted again: "
                    "%s%s", len(redone), "; ".join(redone[:5]), "; ..." if len(redone) > 5 else "")
        for line in redone[5:]:
            log.debug("converting again: %s", line)
    log.info("preprocess %s → %s: %d raw file(s), %d already converted, %d to convert with %s",
             raw_dir, out_dir, len(rels), skipped, len(tasks),
             "%d worker(s)" % workers if workers else "no worker processes")

    def finished(result: dict) -> None:
        if "error" not in result:  # the file is complete under its final name: record it
            out_rel = output_name(result["name"]).replace("\\", "/")
            manifest.record(out_rel, result["bytes"])
            complete[out_rel] = result["bytes"]

    results: List[dict] = []
    progress = _Progress(len(tasks), log_every, finished)
    with _PeakRSS() as rss:
        if workers == 0 or not tasks:
            for task in tasks:
                results.append(_worker(task))
                progress.tick(results[-1])
        else:
            results.extend(_run_pool(tasks, min(workers, len(tasks)), progress))
    for r in results:
        if "error" in r:
            errors[r["name"]] = r["error"]
    for name in sorted(errors):
        log.error("cannot convert %s: %s", name, errors[name])
    converted = [r for r in results if "error" not in r]
    # Exactly the outputs known complete now: a failed or vanished file is not claimed.
    manifest.rewrite(complete)
    seconds = time.time() - started
    import resource

    report = {
        "converted": len(converted),
        "skipped": skipped,
        "redone": sorted(r.split(" (", 1)[0] for r in redone),
        "failed": sorted(errors),
        "errors": {k: errors[k] for k in sorted(errors)},
        "list_files": lists,
        "manifest": os.path.basename(manifest.path),
        "seconds": round(seconds, 3),
        "files_per_second": round(len(converted) / seconds, 3) if converted and seconds else 0.0,
        "workers": workers,
        "bytes_written": int(sum(r.get("bytes", 0) for r in converted)),
        "peak_rss_mb": None if rss.peak_mb is None else round(rss.peak_mb, 1),
        "peak_worker_rss_mb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, 1),
    }
    log.info("preprocess done: %d converted, %d skipped, %d failed in %.1f s (%.2f files/s)",
             report["converted"], skipped, len(errors), seconds, report["files_per_second"])
    return report


class _Progress:
    def __init__(self, total: int, every: float,
                 on_result: Optional[Callable[[dict], None]] = None):
        self.total, self.every = total, every
        self.on_result = on_result
        self.done = 0
        self.started = self.last = time.time()

    def tick(self, result: dict) -> None:
        if self.on_result is not None:
            self.on_result(result)
        self.done += 1
        now = time.time()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            log.info("preprocess: %d/%d files (%.2f files/s)", self.done, self.total, rate)


def _ping() -> int:
    return os.getpid()


def _new_pool(workers: int, ctx) -> ProcessPoolExecutor:
    """A pool whose workers are known to start: a pool that cannot run even a no-op (e.g. the
    parent's __main__ cannot be re-imported under spawn) is a set-up problem, not a bad raw."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
    try:
        pool.submit(_ping).result()
    except BrokenProcessPool as exc:
        pool.shutdown(wait=True)
        raise RuntimeError("preprocess worker processes die on start-up; run with "
                           "preprocess.workers=0 to convert in this process and see why") from exc
    return pool


def _run_pool(tasks: list, workers: int, progress: _Progress) -> List[dict]:
    """Run tasks on `workers` spawned processes, at most 2 × workers queued at a time so the
    parent holds nothing in proportion to the number of files. A worker that dies (a LibRaw
    crash) breaks the pool: the files in flight are retried one by one in fresh pools, so the
    culprit is named and the others still convert."""
    # spawn, not fork: rawpy's OpenMP runtime can deadlock in forked children.
    ctx = multiprocessing.get_context("spawn")
    results: List[dict] = []
    queue = collections.deque(tasks)
    suspects: List[tuple] = []
    while queue:
        pool = _new_pool(workers, ctx)
        inflight: Dict[object, tuple] = {}
        try:
            while queue or inflight:
                while queue and len(inflight) < 2 * workers:
                    task = queue.popleft()
                    inflight[pool.submit(_worker, task)] = task
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    task = inflight.pop(fut)
                    try:
                        results.append(fut.result())
                    except BrokenProcessPool:
                        suspects.append(task)
                        broken = True
                        continue
                    progress.tick(results[-1])
                if broken:
                    suspects.extend(inflight.values())
                    inflight.clear()
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    for task in suspects:
        # Alone in its own pool: if this one breaks it, this file is the one.
        pool = _new_pool(1, ctx)
        try:
            results.append(pool.submit(_worker, task).result())
        except BrokenProcessPool:
            results.append({"name": task[4], "error": "the decoder crashed the worker process "
                                                      "(corrupt or unsupported raw)"})
        finally:
            pool.shutdown(wait=True)
        progress.tick(results[-1])
    return results
