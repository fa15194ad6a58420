"""src/metrics.py against scikit-image, published CIEDE2000 test data, and its error paths."""
from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from src import metrics
from src.metrics import ciede2000, delta_e_ciede2000, psnr, rgb_to_lab, ssim


def sk_ssim(a, b, data_range=1.0):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=data_range,
                                 channel_axis=-1)


def sk_ciede(a, b):
    return float(np.mean(deltaE_ciede2000(rgb2lab(a), rgb2lab(b))))


def random_pair(shape, seed):
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    return a, np.clip(a + 0.15 * rng.standard_normal(shape), 0.0, 1.0)


def photo_pair():
    """A real photo and a hazed, slightly shifted copy (what a dehazing eval compares)."""
    a = skdata.astronaut()[100:196, 150:278].astype(np.float64) / 255.0
    b = np.roll(a, 1, axis=1) * 0.6 + 0.4 * 0.85
    return a, b


def gradient_pair():
    """Smooth ramps, flat grey areas (zero chroma, where CIEDE2000 hue is undefined) and
    saturated primaries."""
    h, w = 40, 52
    y, x = np.mgrid[0:h, 0:w] / np.array([h - 1, w - 1])[:, None, None]
    a = np.stack([x, y, 1 - x], axis=-1)
    a[:10, :10] = 0.5                  # grey
    a[-8:, -8:] = [1.0, 0.0, 0.0]      # pure red
    a[:6, -6:] = 0.0                   # black
    b = a.copy()
    b[:10, :10] = 0.55                 # grey vs grey: both chromas 0
    b[-8:, -8:] = 0.5                  # red vs grey: one chroma 0
    b[10:20] = b[10:20, ::-1]
    return a, b


PAIRS = {
    "random": lambda: random_pair((37, 45, 3), 0),
    "random_min_size": lambda: random_pair((11, 11, 3), 1),
    "photo": photo_pair,
    "gradients": gradient_pair,
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_matches_scikit_image(name):
    a, b = PAIRS[name]()
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-12)
    assert ssim(a, b) == pytest.approx(sk_ssim(a, b), abs=1e-10)
    assert ciede2000(a, b) == pytest.approx(sk_ciede(a, b), abs=1e-9)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_row_strips_change_nothing(name, monkeypatch):
    a, b = PAIRS[name]()
    whole = (ssim(a, b), ciede2000(a, b))
    monkeypatch.setattr(metrics, "_STRIP_PIXELS", 1)  # 8-row strips, a ragged last one
    assert ssim(a, b) == pytest.approx(whole[0], abs=1e-13)
    assert ciede2000(a, b) == pytest.approx(whole[1], abs=1e-12)
    assert ssim(a, b) == pytest.approx(sk_ssim(a, b), abs=1e-10)


def test_lab_conversion_matches_scikit_image():
    rng = np.random.default_rng(2)
    rgb = np.concatenate([rng.random((500, 3)), np.eye(3), np.zeros((1, 3)), np.ones((1, 3)),
                          np.full((1, 3), 0.04045), np.full((1, 3), 0.02)])
    np.testing.assert_allclose(rgb_to_lab(rgb), rgb2lab(rgb[None])[0], atol=1e-10)
    # white is (100, 0, 0) up to the rounding of the sRGB matrix's published constants
    np.testing.assert_allclose(rgb_to_lab([1.0, 1.0, 1.0]), [100.0, 0.0, 0.0], atol=1e-2)


# Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes,
# supplementary test data, and mathematical observations", Table 1 (a selection, 4 decimals).
SHARMA = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, -1.0000, 2.0000), (50.0000, 0.0000, 0.0000), 2.3669),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
]


def test_ciede2000_on_published_test_data():
    lab1 = np.array([p[0] for p in SHARMA])
    lab2 = np.array([p[1] for p in SHARMA])
    expected = np.array([p[2] for p in SHARMA])
    np.testing.assert_allclose(delta_e_ciede2000(lab1, lab2), expected, atol=5e-5)
    np.testing.assert_allclose(delta_e_ciede2000(lab1, lab2), deltaE_ciede2000(lab1, lab2),
                               atol=1e-10)


def test_known_values_and_identical_images():
    a = np.full((16, 16, 3), 0.5)
    assert psnr(a, a + 0.1) == pytest.approx(20.0, rel=1e-12)   # MSE 0.01
    assert psnr(a, a) == float("inf")
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ciede2000(a, a) == 0.0
    x, y = photo_pair()
    assert ssim(x, y) < 0.95 and ciede2000(x, y) > 1.0


def test_data_range_and_dtypes():
    a, b = random_pair((24, 30, 3), 3)
    a255, b255 = a * 255.0, b * 255.0
    assert psnr(a255, b255, data_range=255) == pytest.approx(psnr(a, b), rel=1e-12)
    assert ssim(a255, b255, data_range=255) == pytest.approx(
        sk_ssim(a255, b255, data_range=255), abs=1e-10)
    assert ciede2000(a255, b255, data_range=255) == pytest.approx(ciede2000(a, b), abs=1e-9)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    assert ssim(a32, b32) == pytest.approx(
        sk_ssim(a32.astype(np.float64), b32.astype(np.float64)), abs=1e-10)
    assert isinstance(psnr(a32, b32), float) and isinstance(ssim(a, b), float)


def test_values_within_rounding_of_the_range_are_accepted():
    a, b = random_pair((12, 12, 3), 4)
    b[0, 0, 0] = 1.0 + 1e-7
    assert np.isfinite(ssim(a, b))


@pytest.mark.parametrize("fn", [psnr, ssim, ciede2000])
def test_errors(fn):
    a, _ = random_pair((16, 16, 3), 5)
    with pytest.raises(ValueError, match="differ in shape"):
        fn(a, a[:15])
    with pytest.raises(ValueError, match=r"looks like CHW.*transpose\(1, 2, 0\)"):
        fn(a.transpose(2, 0, 1), a.transpose(2, 0, 1))
    with pytest.raises(ValueError, match=r"shape \(H, W, 3\), got shape \(16, 16\)"):
        fn(a[..., 0], a[..., 0])
    with pytest.raises(ValueError, match="a batch"):
        fn(a[None], a[None])
    with pytest.raises(ValueError, match="got shape"):
        fn(a[..., :2], a[..., :2])
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[3, 4, 1] = bad
        with pytest.raises(ValueError, match="b contains NaN or inf"):
            fn(a, b)
    with pytest.raises(ValueError, match=r"outside \[0, 1\].*divide uint8 images by 255"):
        fn((a * 255).astype(np.uint8), a)
    with pytest.raises(ValueError, match="outside"):
        fn(a - 0.01, a)
    with pytest.raises(ValueError, match="real-valued"):
        fn(a > 0.5, a > 0.5)
    with pytest.raises(ValueError, match="real-valued"):
        fn(a.astype(np.complex128), a)
    for data_range in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="data_range"):
            fn(a, a, data_range=data_range)


def test_ssim_needs_an_11_pixel_window():
    a, b = random_pair((10, 40, 3), 6)
    with pytest.raises(ValueError, match="at least 11×11"):
        ssim(a, b)
    with pytest.raises(ValueError, match="at least 11×11"):
        ssim(a.transpose(1, 0, 2), b.transpose(1, 0, 2))
