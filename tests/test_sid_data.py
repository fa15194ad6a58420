"""SIDPairs: list files and folder layouts, splits, ratios, the authors' crop/flip/clip, lazy
HDF5 reads from threads, the bounded cache, and the naive-pipeline reference."""
from __future__ import annotations

import os
import shutil
import threading

import h5py
import numpy as np
import pytest
import rawpy

from src.data import sid
from src.data.raw_preprocess import pack_bayer, preprocess_raws
from src.data.synth_raw import mosaic_camera, synthesize_sid, write_dng
from src.errors import UserError


@pytest.fixture(scope="module")
def h5_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("sid")
    raw, out = str(root / "raw"), str(root / "h5")
    synthesize_sid(raw, num_scenes=3, num_test_scenes=1, num_val_scenes=1, height=64, width=96,
                   frames=2, short_exposures=(0.1, 0.04, 0.033))
    report = preprocess_raws(raw, out, workers=0)
    assert report["failed"] == []
    return out


def test_ratio_and_names():
    assert sid.exposure_ratio(0.1, 10) == pytest.approx(100)
    assert sid.exposure_ratio(0.04, 10) == pytest.approx(250)
    assert sid.exposure_ratio(0.033, 10) == 300  # 303 capped, as the authors
    assert sid.exposure_ratio(0.1, 30) == 300
    assert sid.scene_id("./Sony/short/10003_05_0.1s.ARW") == "10003"
    assert sid.frame_id("10003_05_0.1s.ARW") == "05"


def test_list_file_splits_frames_and_scenes(h5_set):
    train = sid.SIDPairs(h5_set, list_file="Sony_train_list.txt", split="train", crop=16)
    assert len(train.pairs) == 3 * 3            # frame 00 only: scenes × exposures
    assert len(train) == 3                      # one sample per scene per epoch
    assert train.describe()["ratios"] == {"100": 3, "250": 3, "300": 3}
    every = sid.SIDPairs(h5_set, list_file="Sony_train_list.txt", split="train", crop=16,
                         first_frame_only=False, per_scene=False)
    assert len(every) == 3 * 3 * 2
    # The split filter works on any list: the val list holds only 2xxxx ids.
    with pytest.raises(UserError, match="no SID pairs"):
        sid.SIDPairs(h5_set, list_file="Sony_val_list.txt", split="train", crop=16)


def test_folder_layout_pairs_like_the_list(h5_set):
    listed = sid.SIDPairs(h5_set, list_file="Sony_train_list.txt", split="all", crop=16,
                          per_scene=False, first_frame_only=False)
    listed_all = set()
    for name in ("Sony_train_list.txt", "Sony_test_list.txt", "Sony_val_list.txt"):
        s = sid.SIDPairs(h5_set, list_file=name, split="all", crop=16, per_scene=False,
                         first_frame_only=False)
        listed_all |= {(p.short, p.long, p.ratio) for p in s.pairs}
    folder = sid.SIDPairs(h5_set, folder="Sony", split="all", crop=16, per_scene=False,
                          first_frame_only=False)
    assert {(p.short, p.long, p.ratio) for p in folder.pairs} == listed_all
    assert len(listed.pairs) < len(listed_all)


def _expected(h5_set, pair, rng, crop):
    """The authors' sampling, replayed with the same rng draws as SIDPairs.load."""
    with h5py.File(pair.short, "r") as f:
        raw = f["raw"][()].astype(np.float32)
        black = f.attrs["black_level"].reshape(4, 1, 1)
        white = float(f.attrs["white_level"])
    with h5py.File(pair.long, "r") as f:
        gt = f["rgb"][()].astype(np.float32) / 65535.0
    x = np.maximum(raw - black, 0) / (white - black) * pair.ratio
    h, w = x.shape[1:]
    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    x = x[:, top:top + crop, left:left + crop]
    y = gt[:, 2 * top:2 * top + 2 * crop, 2 * left:2 * left + 2 * crop]
    if rng.integers(0, 2):
        x, y = x[:, ::-1], y[:, ::-1]
    if rng.integers(0, 2):
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    if rng.integers(0, 2):
        x, y = x.transpose(0, 2, 1), y.transpose(0, 2, 1)
    return np.minimum(x, 1.0), y


@pytest.mark.parametrize("cache_mb", [0, 8])
def test_training_sample_is_the_authors_crop_flip_clip(h5_set, cache_mb):
    src = sid.SIDPairs(h5_set, list_file="Sony_train_list.txt", split="train", crop=16,
                       per_scene=False, cache_mb=cache_mb)
    seen_flips = set()
    for index in range(len(src)):
        for seed in range(3):
            sample = src.load(index, np.random.default_rng(seed))
            x, y = _expected(h5_set, src.pairs[index], np.random.default_rng(seed), 16)
            np.testing.assert_allclose(sample["input"], x, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(sample["target"], y, rtol=1e-6)
            assert sample["input"].shape == (4, 16, 16) and sample["target"].shape == (3, 32, 32)
            assert sample["input"].max() <= 1.0 and sample["input"].dtype == np.float32
            seen_flips.add(tuple(np.random.default_rng(seed).integers(0, 2, 5)[2:]))
    assert len(seen_flips) > 1


def test_per_scene_sample_draws_one_of_the_scene_pairs(h5_set):
    src = sid.SIDPairs(h5_set, list_file="Sony_train_list.txt", split="train", crop=16)
    members = src.items[0]
    ratios = set()
    for seed in range(12):
        replay = np.random.default_rng(seed)
        pair = src.pairs[members[int(replay.integers(0, len(members)))]]
        x, _ = _expected(h5_set, pair, replay, 16)
        np.testing.assert_allclose(src.load(0, np.random.default_rng(seed))["input"], x,
                                   rtol=1e-6, atol=1e-7)
        ratios.add(pair.ratio)
    assert len(ratios) > 1


def test_eval_sample_full_image_with_reference(h5_set):
    src = sid.SIDPairs(h5_set, list_file="Sony_val_list.txt", split="val", crop=0,
                       augment=False, per_scene=False)
    sample = src.load(0, np.random.default_rng(0))
    assert sample["input"].shape == (4, 32, 48) and sample["target"].shape == (3, 64, 96)
    assert sample["reference"].shape == (3, 64, 96)
    assert sample["name"] == "20001_00_0.1s.h5"
    assert 0 <= sample["reference"].min() and sample["reference"].max() <= 1
    centre = sid.SIDPairs(h5_set, list_file="Sony_val_list.txt", split="val", crop=16,
                          augment=False, per_scene=False).load(0, np.random.default_rng(5))
    np.testing.assert_array_equal(centre["input"], sample["input"][:, 8:24, 16:32])
    np.testing.assert_array_equal(centre["target"], sample["target"][:, 16:48, 32:64])


def test_naive_isp_matches_libraw_on_flat_colours(tmp_path):
    """The reference pipeline (WB, matrix, BT.709 gamma) is LibRaw's, minus the demosaic: on
    flat patches, where demosaicking is exact, it reproduces postprocess()."""
    for k, colour in enumerate([(0.02, 0.05, 0.03), (0.2, 0.15, 0.05), (0.05, 0.3, 0.25)]):
        cam = np.ones((32, 32, 3)) * np.array(colour)  # LibRaw refuses sides below ~22
        mosaic = np.round(512 + mosaic_camera(cam, "GRBG") * 15871).astype(np.uint16)
        path = write_dng(str(tmp_path / ("flat%d.dng" % k)), mosaic, exposure_time=1.0,
                         cfa="GRBG")
        with rawpy.imread(path) as r:
            libraw = r.postprocess(use_camera_wb=True, half_size=False, no_auto_bright=True,
                                   output_bps=16)[16, 16] / 65535.0
            packed = pack_bayer(r.raw_image_visible, r.black_level_per_channel, r.white_level,
                                r.raw_colors_visible[:2, :2], r.color_desc)
            ours = sid.naive_isp(packed, r.camera_whitebalance, r.color_matrix[:, :3], "GRBG")
        np.testing.assert_allclose(ours[:, 16, 16], libraw, atol=2e-3)


def test_threads_share_a_source(h5_set):
    src = sid.SIDPairs(h5_set, list_file="Sony_train_list.txt", split="train", crop=16,
                       per_scene=False)
    expected = [src.load(i % len(src), np.random.default_rng(i))["input"] for i in range(24)]
    got = [None] * 24
    errors = []

    def work(offset):
        try:
            for i in range(offset, 24, 4):
                got[i] = src.load(i % len(src), np.random.default_rng(i))["input"]
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


def test_cache_is_bounded(h5_set):
    # 52 KB: a short file (4·32·48·2 B = 12 KB) and a ground truth (3·64·96·2 B = 36 KB) fit,
    # the set (9 short + 3 long files) does not.
    src = sid.SIDPairs(h5_set, list_file="Sony_train_list.txt", split="train", crop=16,
                       per_scene=False, cache_mb=0.05)
    for i in range(len(src)):
        src.load(i, np.random.default_rng(i))
    assert 0 < src.cache.nbytes <= src.cache.max_bytes
    before = src.cache.hits
    src.load(len(src) - 1, np.random.default_rng(0))
    assert src.cache.hits >= before + 2  # the last pair's two files are still cached


def test_missing_files_and_exif_exposures(h5_set, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("./Sony/short/00009_00_0.1s.ARW ./Sony/long/00009_00_10s.ARW ISO100 F4\n")
    os.makedirs(tmp_path / "Sony")
    with pytest.raises(UserError, match="no SID pairs"):
        sid.SIDPairs(str(tmp_path), list_file="list.txt", split="train", crop=16)
    with pytest.raises(UserError, match="not found"):
        sid.SIDPairs(str(tmp_path), list_file="nope.txt", crop=16)
    # Names without an exposure: the ratio comes from the files' EXIF-derived attributes.
    for kind, src_name, dst_name in (("short", "00001_00_0.1s.h5", "00001_00_a.h5"),
                                     ("long", "00001_00_10s.h5", "00001_00_b.h5")):
        os.makedirs(tmp_path / "cam" / kind, exist_ok=True)
        shutil.copy(os.path.join(h5_set, "Sony", kind, src_name), tmp_path / "cam" / kind / dst_name)
    pairs = sid.SIDPairs(str(tmp_path), folder="cam", split="train", crop=16)
    assert [p.ratio for p in pairs.pairs] == [pytest.approx(100.0)]
