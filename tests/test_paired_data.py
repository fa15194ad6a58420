"""PairedDehaze: every public layout pairs the right files; errors name the file or folder."""
from __future__ import annotations

import os

import numpy as np
import pytest

from src.data.images import read_image, save_png
from src.data.paired import PairedDehaze
from src.errors import UserError


def _img(seed: int, h: int = 12, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def _write(path, arr):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    save_png(str(path), arr)


def _q(arr):
    """What an 8-bit PNG round trip gives back."""
    return np.round(arr * 255).astype(np.float32) / 255


def test_its_layout_pairs_by_prefix_and_centre_crops_the_clear_image(tmp_path):
    big = {1: _img(1, 16, 20), 12: _img(2, 16, 20)}
    for sid, clear in big.items():
        _write(tmp_path / "ITS" / "clear" / ("%d.png" % sid), clear)
    # ITS: hazy images are the clear image's centre (the real set: 620x460 vs 640x480).
    for name, sid in [("1_1_0.90179.png", 1), ("1_2_0.7.png", 1), ("12_1_0.8.png", 12)]:
        _write(tmp_path / "ITS" / "hazy" / name, big[sid][2:14, 2:18] * 0.5 + 0.4)
    src = PairedDehaze(str(tmp_path), "ITS", mode="eval")
    assert src.layout == "reside" and len(src) == 3
    assert [os.path.basename(c) for _, c, _ in src.pairs] == ["1.png", "1.png", "12.png"]
    s = src.load(2)
    assert s["name"] == "12_1_0.8.png"
    assert s["input"].shape == s["target"].shape == (3, 12, 16)
    np.testing.assert_allclose(s["target"], np.transpose(_q(big[12])[2:14, 2:18], (2, 0, 1)),
                               atol=1e-6)
    np.testing.assert_array_equal(s["reference"], s["input"])


def test_sots_naming(tmp_path):
    _write(tmp_path / "val" / "clear" / "1400.png", _img(3))
    _write(tmp_path / "val" / "hazy" / "1400_1.png", _img(4))
    _write(tmp_path / "val" / "hazy" / "1400_10.png", _img(5))
    src = PairedDehaze(str(tmp_path), "val", layout="sots", mode="eval")
    assert [(os.path.basename(h), os.path.basename(c)) for h, c, _ in src.pairs] == [
        ("1400_1.png", "1400.png"), ("1400_10.png", "1400.png")]


@pytest.mark.parametrize("hazy,clear", [("46_hazy.png", "46_GT.png"),
                                        ("45_outdoor_hazy.jpg", "45_outdoor_GT.jpg")])
def test_gt_layouts_dense_nh_ohaze(tmp_path, hazy, clear):
    _write(tmp_path / "hazy" / hazy, _img(6))
    _write(tmp_path / "GT" / clear, _img(7))
    _write(tmp_path / "hazy" / hazy.replace("4", "0", 1), _img(8))
    _write(tmp_path / "GT" / clear.replace("4", "0", 1), _img(9))
    src = PairedDehaze(str(tmp_path), mode="eval")
    assert src.layout == "gt"
    pairs = {os.path.basename(h): os.path.basename(c) for h, c, _ in src.pairs}
    assert pairs[hazy] == clear
    assert len(pairs) == 2


def test_nh_haze_archive_with_both_in_one_folder_and_id_range(tmp_path):
    for i in range(1, 6):
        _write(tmp_path / "NH" / ("%02d_hazy.png" % i), _img(10 + i))
        _write(tmp_path / "NH" / ("%02d_GT.png" % i), _img(20 + i))
    src = PairedDehaze(str(tmp_path), "NH", mode="eval", ids=[2, 4])
    assert [n for _, _, n in src.pairs] == ["02_hazy.png", "03_hazy.png", "04_hazy.png"]
    assert all(c.endswith("_GT.png") for _, c, _ in src.pairs)


def test_train_mode_crops_and_augments_both_images_identically(tmp_path):
    clear = _img(30, 20, 24)
    _write(tmp_path / "clear" / "7.png", clear)
    _write(tmp_path / "hazy" / "7_1_0.5.png", clear)  # same content: crops must coincide
    src = PairedDehaze(str(tmp_path), crop=8)
    seen = set()
    for seed in range(12):
        s = src.load(0, np.random.default_rng(seed))
        assert s["input"].shape == s["target"].shape == (3, 8, 8)
        np.testing.assert_array_equal(s["input"], s["target"])
        seen.add(s["input"].tobytes())
    assert len(seen) > 6  # random crops/flips/rotations actually vary
    again = src.load(0, np.random.default_rng(3))["input"]
    np.testing.assert_array_equal(again, src.load(0, np.random.default_rng(3))["input"])


def test_cache_returns_identical_images(tmp_path):
    _write(tmp_path / "clear" / "1.png", _img(40))
    _write(tmp_path / "hazy" / "1_1_0.5.png", _img(41))
    cached = PairedDehaze(str(tmp_path), mode="eval", cache_mb=1)
    plain = PairedDehaze(str(tmp_path), mode="eval")
    for _ in range(2):
        a, b = cached.load(0), plain.load(0)
        np.testing.assert_array_equal(a["input"], b["input"])
        np.testing.assert_array_equal(a["target"], b["target"])
    assert cached._cache.used > 0 and len(cached._cache.items) == 2


def test_hazy_image_without_partner_is_named(tmp_path):
    _write(tmp_path / "clear" / "1.png", _img(50))
    _write(tmp_path / "hazy" / "1_1_0.5.png", _img(51))
    _write(tmp_path / "hazy" / "2_1_0.5.png", _img(52))
    with pytest.raises(UserError, match=r"2_1_0\.5\.png has no clear partner.*2\.\*"):
        PairedDehaze(str(tmp_path))


def test_empty_folder_is_named(tmp_path):
    (tmp_path / "hazy").mkdir()
    _write(tmp_path / "clear" / "1.png", _img(53))
    with pytest.raises(UserError, match="no hazy images.*%s" % os.path.join("", "hazy")):
        PairedDehaze(str(tmp_path))


def test_missing_folder_and_unknown_layout(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        PairedDehaze(str(tmp_path), "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError, match="cannot tell the layout"):
        PairedDehaze(str(tmp_path), "x")
    with pytest.raises(UserError, match="unknown layout 'itz'.*its"):
        PairedDehaze(str(tmp_path), "x", layout="itz")


def test_truncated_image_names_the_file(tmp_path):
    _write(tmp_path / "clear" / "1.png", _img(60))
    _write(tmp_path / "hazy" / "1_1_0.5.png", _img(61))
    bad = tmp_path / "hazy" / "1_1_0.5.png"
    data = bad.read_bytes()
    bad.write_bytes(data[:40])
    src = PairedDehaze(str(tmp_path), mode="eval")
    with pytest.raises(UserError, match=r"1_1_0\.5\.png"):
        src.load(0)


def test_registered_and_buildable_from_a_spec(tmp_path):
    from src.registry import DATASETS

    _write(tmp_path / "train" / "clear" / "1.png", _img(70))
    _write(tmp_path / "train" / "hazy" / "1_1_0.5.png", _img(71))
    src = DATASETS.build({"type": "PairedDehaze", "path": "train", "crop": 4}, root=str(tmp_path))
    assert len(src) == 1 and src.load(0, np.random.default_rng(0))["input"].shape == (3, 4, 4)
    assert read_image(src.pairs[0][1]).shape == (12, 16, 3)
