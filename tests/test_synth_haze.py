"""Synthetic hazy sets: real layouts the real readers read, deterministic, physically hazy."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from src.data import synth_haze
from src.data.paired import PairedDehaze
from src.errors import UserError
from src.metrics import psnr


def _digest(folder) -> str:
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(str(folder))):
        for f in sorted(files):
            h.update(f.encode())
            with open(os.path.join(root, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_scattering_model():
    clear = np.full((2, 2, 3), 0.2, np.float32)
    depth = np.array([[0.0, 1.0], [2.0, 50.0]], np.float32)
    hazy = synth_haze.add_haze(clear, depth, beta=1.0, airlight=[0.9, 0.9, 0.9])
    t = np.exp(-depth)[..., None]
    np.testing.assert_allclose(hazy, np.broadcast_to(0.2 * t + 0.9 * (1 - t), hazy.shape), rtol=1e-6)
    assert hazy[0, 0, 0] == pytest.approx(0.2) and hazy[1, 1, 0] == pytest.approx(0.9)


def test_reside_and_sots_layouts_are_read_by_paired_dehaze(tmp_path):
    summary = synth_haze.synthesize_paired(str(tmp_path), "reside", num_scenes=3,
                                           hazy_per_scene=2, num_val=2, height=24, width=32,
                                           seed=1)
    assert summary["train"]["hazy"] == 6 and summary["val"]["hazy"] == 2
    names = sorted(os.listdir(tmp_path / "train" / "hazy"))
    assert names[0].startswith("1_1_") and names[0].count("_") == 2
    train = PairedDehaze(str(tmp_path), "train", crop=16)
    assert train.layout == "reside" and len(train) == 6
    # ITS-style: clear images are larger than the hazy ones and get centre-cropped back.
    from src.data.images import read_image
    hazy_path, clear_path, _ = train.pairs[0]
    assert read_image(clear_path).shape[:2] == (32, 40)
    assert read_image(hazy_path).shape[:2] == (24, 32)
    val = PairedDehaze(str(tmp_path), "val", mode="eval")
    assert sorted(n for _, _, n in val.pairs) == ["1400_1.png", "1401_1.png"]
    for s in val.samples():
        hazy, clear = np.transpose(s["input"], (1, 2, 0)), np.transpose(s["target"], (1, 2, 0))
        assert psnr(hazy, clear) < 25          # visibly hazy
        assert hazy.mean() > clear.mean() - 0.02  # haze brightens (airlight ≥ 0.7)


def test_gt_layout(tmp_path):
    synth_haze.synthesize_paired(str(tmp_path), "dense", num_scenes=2, num_val=1, height=16,
                                 width=16, photos=False)
    assert sorted(os.listdir(tmp_path / "train" / "GT")) == ["01_GT.png", "02_GT.png"]
    assert sorted(os.listdir(tmp_path / "val" / "hazy")) == ["03_hazy.png"]
    assert PairedDehaze(str(tmp_path), "val", mode="eval").layout == "gt"


def test_unpaired_layout_uses_different_scenes(tmp_path):
    info = synth_haze.write_unpaired(str(tmp_path), num_hazy=3, num_clear=3, num_test=2,
                                     height=16, width=16, seed=2)
    assert info == {"layout": "unpaired", "trainA": 3, "trainB": 3, "test": 2}
    assert sorted(os.listdir(tmp_path / "trainA")) == ["1.png", "2.png", "3.png"]
    assert len(os.listdir(tmp_path / "trainB")) == 3
    test = PairedDehaze(str(tmp_path), "test", mode="eval")
    assert len(test) == 2
    # trainB holds no clear version of any trainA scene: dehazing trainA never reproduces it.
    from src.data.images import read_image
    a = [read_image(str(p)) for p in sorted((tmp_path / "trainA").iterdir())]
    b = [read_image(str(p)) for p in sorted((tmp_path / "trainB").iterdir())]
    for hazy in a:
        for clear in b:
            assert np.corrcoef(hazy.ravel(), clear.ravel())[0, 1] < 0.99


def test_deterministic_for_a_seed(tmp_path):
    kw = dict(num_scenes=2, hazy_per_scene=1, num_val=1, height=16, width=16)
    synth_haze.synthesize_paired(str(tmp_path / "a"), seed=5, **kw)
    synth_haze.synthesize_paired(str(tmp_path / "b"), seed=5, **kw)
    synth_haze.synthesize_paired(str(tmp_path / "c"), seed=6, **kw)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_photos_come_from_scikit_image():
    img = synth_haze.load_photo("astronaut")
    assert img.shape == (512, 512, 3) and img.dtype == np.float32 and 0 <= img.min() < img.max() <= 1
    rng = np.random.default_rng(0)
    clear, depth, name = synth_haze.photo_scene(rng, 20, 28)
    assert clear.shape == (20, 28, 3) and depth.shape == (20, 28) and name in synth_haze.PHOTOS
    assert depth[0].mean() > depth[-1].mean()  # far at the top


def test_missing_scikit_image_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("skimage"):
            raise ImportError("No module named 'skimage'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(synth_haze, "_PHOTO_CACHE", {})
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(UserError, match="scikit-image.*photos: false"):
        synth_haze.SceneSource(16, 16, photos=True)
    synth_haze.SceneSource(16, 16, photos=False).scene(0)  # procedural needs no skimage


def test_bad_settings():
    with pytest.raises(UserError, match="at least 8x8"):
        synth_haze.SceneSource(4, 16)
    with pytest.raises(UserError, match="synth.layout"):
        synth_haze.synthesize_paired("/nonexistent", layout="cityscapes")
