from __future__ import annotations

import numpy as np
import pytest

from src import metrics
from src.data.images import read_image, to_hwc
from src.engine.evaluate import PSNR_CAP, evaluate


def _sample(name, h, w, seed, channels=3):
    rng = np.random.default_rng(seed)
    target = rng.random((3, h, w)).astype(np.float32)
    hazy = np.clip(0.6 * target + 0.3, 0, 1).astype(np.float32)
    x = hazy if channels == 3 else rng.random((channels, h, w)).astype(np.float32)
    return {"input": x, "target": target, "reference": hazy, "name": name}


def test_identity_predict_odd_sizes_metrics_and_grids(tmp_path):
    samples = [_sample("a/one.png", 13, 17, 0), _sample("two.jpg", 15, 11, 1),
               _sample("three", 12, 12, 2)]
    shapes = []

    def identity(x):
        shapes.append(x.shape)
        return x.copy()

    out = evaluate(identity, iter(samples), pad_multiple=4, samples_dir=str(tmp_path),
                   num_samples=2)
    assert shapes == [(1, 3, 16, 20), (1, 3, 16, 12), (1, 3, 12, 12)]
    assert out["count"] == 3
    # Identity returns the hazy input, which is the reference: same scores.
    for key in ("psnr", "ssim", "ciede2000"):
        assert out[key] == pytest.approx(out["reference_" + key])
    expected = np.mean([metrics.psnr(to_hwc(s["reference"]), to_hwc(s["target"]))
                        for s in samples])
    assert out["psnr"] == pytest.approx(expected)
    assert [r["name"] for r in out["images"]] == ["a/one.png", "two.jpg", "three"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["one.png", "two.png"]
    grid = read_image(str(tmp_path / "one.png"))
    # input | output | target, enlarged 20x (13 px → 260 ≥ 256) under a caption band.
    k, gap = 20, 6
    band = grid.shape[0] - 13 * k
    assert 20 <= band <= 80 and grid.shape[1:] == (3 * 17 * k + 2 * gap, 3)
    output = grid[band:, 17 * k + gap:2 * 17 * k + gap]
    np.testing.assert_allclose(output[::k, ::k], to_hwc(samples[0]["input"]),
                               atol=0.5 / 255 + 1e-6)
    assert grid[:band].min() < 0.3 and grid[:band].max() == 1.0  # dark text on white


def test_perfect_prediction_caps_psnr_and_max_images():
    samples = [_sample("s%d" % i, 12, 12, i) for i in range(4)]
    order = iter(samples)

    def oracle(x):
        return next(order)["target"][None]

    out = evaluate(oracle, samples, pad_multiple=1, max_images=2)
    assert out["count"] == 2 and out["psnr"] == PSNR_CAP and out["ssim"] == pytest.approx(1.0)
    assert out["ciede2000"] == pytest.approx(0.0, abs=1e-9)


def test_raw_input_scale_two_shows_reference(tmp_path):
    # SID: a packed 4-channel raw at H/2 → RGB at H.
    h, w = 7, 9
    rng = np.random.default_rng(0)
    target = rng.random((3, 2 * h, 2 * w)).astype(np.float32)
    s = {"input": rng.random((4, h, w)).astype(np.float32), "target": target,
         "reference": np.clip(target * 0.5, 0, 1), "name": "raw1"}

    def upsample(x):
        assert x.shape == (1, 4, 8, 12)
        rgb = x[:, :3]
        return np.repeat(np.repeat(rgb, 2, axis=2), 2, axis=3) * 2.0  # out of range: clipped

    out = evaluate(upsample, [s], pad_multiple=4, scale=2, samples_dir=str(tmp_path))
    assert out["count"] == 1 and np.isfinite(out["psnr"])
    grid = read_image(str(tmp_path / "raw1.png"))
    k = 19  # 14 px → 266 ≥ 256
    band = grid.shape[0] - 2 * h * k
    assert grid.shape[1:] == (3 * 2 * w * k + 12, 3)
    np.testing.assert_allclose(grid[band::k, :2 * w * k:k], to_hwc(s["reference"]),
                               atol=0.5 / 255 + 1e-6)


def test_wrong_prediction_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"predict returned shape \(1, 3, 12, 12\).*expected "
                                         r"\(1, 3, 24, 24\)"):
        evaluate(lambda x: x, [_sample("a", 12, 12, 0)], pad_multiple=4, scale=2)


def test_no_samples_and_no_reference():
    out = evaluate(lambda x: x, [], pad_multiple=4)
    assert out["count"] == 0 and out["psnr"] is None and out["reference_psnr"] is None
    s = _sample("a", 12, 12, 0)
    del s["reference"]
    out = evaluate(lambda x: x, [s])
    assert out["psnr"] is not None and out["reference_ssim"] is None
