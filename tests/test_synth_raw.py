"""Synthetic SID raws: DNGs that rawpy decodes bit-exactly, the sensor noise model, the layout
and the Sony-style list files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import rawpy

from src.data import synth_raw as sr
from src.data.raw_preprocess import cfa_string, exposure_from_name
from src.errors import UserError


@pytest.mark.parametrize("cfa", ["RGGB", "GRBG", "BGGR"])
def test_dng_round_trip_is_bit_exact(tmp_path, cfa):
    rng = np.random.default_rng(1)
    mosaic = rng.integers(0, 16384, size=(48, 64)).astype(np.uint16)
    path = sr.write_dng(str(tmp_path / "x.dng"), mosaic, exposure_time=0.04, cfa=cfa)
    with rawpy.imread(path) as r:
        np.testing.assert_array_equal(r.raw_image_visible, mosaic)
        assert r.sizes.flip == 0
        assert list(r.black_level_per_channel) == [512] * 4
        assert r.white_level == 16383
        assert cfa_string(r.raw_colors_visible[:2, :2], r.color_desc) == cfa
        wb = np.asarray(r.camera_whitebalance[:3])
        np.testing.assert_allclose(wb / wb[1], 1.0 / np.asarray(sr.AS_SHOT_NEUTRAL), rtol=1e-3)
        other = getattr(r, "other", None)
        if other is not None:  # rawpy >= 0.19 exposes EXIF
            assert other.shutter_speed == pytest.approx(0.04)
        # LibRaw derives camera → sRGB from ColorMatrix1: the inverse of the sensor's matrix.
        np.testing.assert_allclose(r.color_matrix[:, :3], np.linalg.inv(sr.CAMERA_FROM_SRGB),
                                   atol=2e-3)
    assert not [n for n in os.listdir(tmp_path) if n != "x.dng"]  # no temporary file left


def test_write_dng_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="even"):
        sr.write_dng(str(tmp_path / "a.dng"), np.zeros((3, 4), np.uint16), exposure_time=1)
    with pytest.raises(ValueError, match="uint16"):
        sr.write_dng(str(tmp_path / "a.dng"), np.zeros((4, 4), np.float32), exposure_time=1)
    with pytest.raises(UserError, match="Bayer"):
        sr.write_dng(str(tmp_path / "a.dng"), np.zeros((4, 4), np.uint16), exposure_time=1,
                     cfa="RGBW")


def test_noise_model_shot_and_read_noise():
    rng = np.random.default_rng(0)
    signal = np.full((400, 400), 0.3)
    gain, read = 0.5, 2.0
    fraction = 1 / 100.0
    dn = sr.expose(rng, signal, fraction=fraction, gain=gain, read_noise=read,
                   black_level=512, white_level=16383).astype(np.float64) - 512
    electrons = 0.3 * (16383 - 512) / gain * fraction  # ≈ 95 e-
    assert dn.mean() == pytest.approx(electrons * gain, rel=0.01)
    # Poisson variance in DN is gain² · electrons, plus read noise² and quantisation (1/12).
    assert dn.var() == pytest.approx(gain ** 2 * electrons + read ** 2 + 1 / 12.0, rel=0.05)
    bright = sr.expose(rng, np.ones((8, 8)), fraction=1.0, gain=gain, read_noise=read,
                       black_level=512, white_level=16383)
    assert bright.max() <= 16383


def test_synthesize_layout_lists_and_exposures(tmp_path):
    summary = sr.synthesize_sid(str(tmp_path), num_scenes=2, num_test_scenes=1,
                                num_val_scenes=1, height=64, width=96, frames=2,
                                short_exposures=(0.1, 0.033))
    assert summary["scenes"] == {"train": 2, "test": 1, "val": 1}
    rows = (tmp_path / "Sony_train_list.txt").read_text().splitlines()
    assert len(rows) == 2 * 2 * 2  # scenes × frames × exposures
    assert rows[0].startswith("./Sony/short/00001_00_0.1s.dng ./Sony/long/00001_00_10s.dng ISO")
    for split, digit in (("train", "0"), ("test", "1"), ("val", "2")):
        for row in (tmp_path / ("Sony_%s_list.txt" % split)).read_text().splitlines():
            short, long_, iso, fnum = row.split()
            assert os.path.basename(short)[0] == digit and iso.startswith("ISO")
            assert fnum.startswith("F")
            assert (tmp_path / short).is_file() and (tmp_path / long_).is_file()
            assert exposure_from_name(long_) == 10.0
            assert exposure_from_name(short) in (0.1, 0.033)
    assert (tmp_path / "Sony" / "short" / "00002_01_0.033s.dng").is_file()
    # A short exposure collects t/10 of the light: its mean above black scales accordingly.
    with rawpy.imread(str(tmp_path / "Sony/long/00001_00_10s.dng")) as r:
        long_mean = r.raw_image_visible.mean() - 512
    with rawpy.imread(str(tmp_path / "Sony/short/00001_00_0.1s.dng")) as r:
        short_mean = r.raw_image_visible.mean() - 512
    assert short_mean == pytest.approx(long_mean / 100, rel=0.1)
    # Long exposures stay below LibRaw's auto-maximum band (75% of the white level).
    assert long_mean > 0.02 * 15871


def test_synthesize_rejects_bad_sizes(tmp_path):
    with pytest.raises(UserError, match="even"):
        sr.synthesize_sid(str(tmp_path), height=101, width=96)
    with pytest.raises(UserError, match="shorter"):
        sr.synthesize_sid(str(tmp_path), height=64, width=64, short_exposures=(20.0,))


def test_evaluation_scenes_are_different_photos_and_come_first(tmp_path):
    """The first samples an evaluation shows are different scenes (each held-out photo and a
    procedural scene in turn), not one scene at several exposures."""
    sr.synthesize_sid(str(tmp_path), num_scenes=2, num_test_scenes=1, num_val_scenes=3,
                      height=64, width=96, short_exposures=(0.1, 0.033))
    rows = (tmp_path / "Sony_val_list.txt").read_text().splitlines()
    assert len(rows) == 3 * 2
    longs = [row.split()[1] for row in rows]
    assert len(set(longs[:3])) == 3 and longs[3:] == longs[:3]
    assert [exposure_from_name(row.split()[0]) for row in rows] == [0.1] * 3 + [0.033] * 3
    images = []
    for name in longs[:3]:
        with rawpy.imread(str(tmp_path / name)) as r:
            img = r.postprocess(use_camera_wb=True, no_auto_bright=True).astype(np.float32)
        images.append(img / img.mean())
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(images[i] - images[j]).mean() > 0.2  # not crops of one photo


def test_scene_sources_cycle_for_evaluation():
    rng = np.random.default_rng(0)
    scenes = [sr.scene_radiance(rng, 32, 48, sr.EVAL_SCENES, index=k) for k in range(3)]
    assert all(s.shape == (32, 48, 3) and 0.0 <= s.min() and s.max() <= 1.0 for s in scenes)
    assert sr.PROCEDURAL in sr.TRAIN_SCENES and sr.PROCEDURAL in sr.EVAL_SCENES
    assert not set(sr.TRAIN_SCENES) & set(sr.EVAL_SCENES) - {sr.PROCEDURAL}
