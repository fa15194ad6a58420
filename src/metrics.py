"""Image quality metrics: PSNR, SSIM and CIEDE2000, in pure numpy.

Every function takes two RGB images as HWC arrays (H, W, 3) of the same shape with values in
[0, data_range] (data_range defaults to 1.0; a tolerance of 1e-6·data_range absorbs float
rounding, anything beyond is an error: clip model outputs first, divide uint8 images by 255).
Computation is in float64. A CHW tensor, a batch, NaN/inf or mismatched shapes raise
ValueError, so a layout mistake cannot turn into a plausible-looking number.

The definitions are the ones the dehazing and SID papers report, and they match scikit-image
(`peak_signal_noise_ratio`, `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=-1)`, `rgb2lab` +
`deltaE_ciede2000`); the tests check that to ~1e-10.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["psnr", "ssim", "ciede2000", "rgb_to_lab", "delta_e_ciede2000"]

_RANGE_TOLERANCE = 1e-6


def _check_pair(a, b, data_range: float, fn: str) -> Tuple[np.ndarray, np.ndarray]:
    if not (np.isscalar(data_range) and np.isfinite(data_range) and data_range > 0):
        raise ValueError("%s: data_range must be a positive number, got %r" % (fn, data_range))
    out = []
    for name, image in (("a", a), ("b", b)):
        image = np.asarray(image)
        if image.dtype == bool or not np.issubdtype(image.dtype, np.number) \
                or np.issubdtype(image.dtype, np.complexfloating):
            raise ValueError("%s: %s must be a real-valued image, got dtype %s"
                             % (fn, name, image.dtype))
        if image.ndim != 3 or image.shape[-1] != 3:
            hint = ""
            if image.ndim == 3 and image.shape[0] == 3:
                hint = " (this looks like CHW: pass x.transpose(1, 2, 0))"
            elif image.ndim == 4:
                hint = " (a batch? pass one image at a time)"
            raise ValueError("%s: %s must be an RGB image of shape (H, W, 3), got shape %s%s"
                             % (fn, name, image.shape, hint))
        out.append(image.astype(np.float64, copy=False))
    a, b = out
    if a.shape != b.shape:
        raise ValueError("%s: images differ in shape: %s vs %s" % (fn, a.shape, b.shape))
    for name, image in (("a", a), ("b", b)):
        if not np.isfinite(image).all():
            raise ValueError("%s: %s contains NaN or inf" % (fn, name))
        low, high = float(image.min()), float(image.max())
        slack = _RANGE_TOLERANCE * data_range
        if low < -slack or high > data_range + slack:
            raise ValueError("%s: %s has values in [%g, %g], outside [0, %g] (clip outputs; divide "
                             "uint8 images by 255)" % (fn, name, low, high, data_range))
    return a, b


def psnr(a, b, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: 10·log10(data_range² / MSE) over all pixels and
    channels. Identical images give inf (MSE 0): averaging code must handle it."""
    a, b = _check_pair(a, b, data_range, "psnr")
    mse = float(np.mean(np.square(a - b)))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range ** 2 / mse))


# SSIM window: Gaussian σ 1.5 truncated at 3.5σ → radius int(3.5·1.5 + 0.5) = 5, 11 taps
# (scipy.ndimage / scikit-image's truncate=3.5; the 11×11 window of Wang et al. 2004).
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _gaussian_taps(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


_TAPS = _gaussian_taps(_SSIM_SIGMA, _SSIM_RADIUS)


def _blur_valid(image: np.ndarray, axis: int) -> np.ndarray:
    """Gaussian blur along `axis`, keeping only outputs whose window lies inside the image.

    scikit-image blurs with reflected borders and then drops a `radius`-wide border before
    averaging; the outputs it keeps never touch the reflection, so computing only those is
    exact and skips the padding. The window is symmetric: pair taps k and 2r-k (6 multiplies
    instead of 11)."""
    r = _SSIM_RADIUS
    n = image.shape[axis] - 2 * r

    def part(start: int) -> np.ndarray:
        index = [slice(None)] * image.ndim
        index[axis] = slice(start, start + n)
        return image[tuple(index)]

    out = part(r) * _TAPS[r]
    pair = np.empty_like(out)
    for k in range(r):
        np.add(part(k), part(2 * r - k), out=pair)
        pair *= _TAPS[k]
        out += pair
    return out


def _blur2d(image: np.ndarray) -> np.ndarray:
    return _blur_valid(_blur_valid(image, 0), 1)


# Work in row strips of about this many pixels: the dozen temporaries per strip stay in the
# CPU cache, which makes SSIM and CIEDE2000 about twice as fast on large images as whole-image
# numpy and bounds their memory, whatever the image size.
_STRIP_PIXELS = 1 << 16


def _strip_rows(width: int) -> int:
    return max(8, _STRIP_PIXELS // max(width, 1))


def ssim(a, b, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004): Gaussian window 11×11, σ 1.5, K1 0.01,
    K2 0.03, population (not sample) covariances, mean over the pixels at least 5 from the
    border and over the three channels. Images must be at least 11×11."""
    a, b = _check_pair(a, b, data_range, "ssim")
    r = _SSIM_RADIUS
    if a.shape[0] <= 2 * r or a.shape[1] <= 2 * r:
        raise ValueError("ssim: images must be at least %d×%d, got %s"
                         % (2 * r + 1, 2 * r + 1, a.shape))
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    out_rows = a.shape[0] - 2 * r
    step = _strip_rows(a.shape[1])
    total = 0.0
    for ch in range(a.shape[-1]):
        for top in range(0, out_rows, step):
            # Output rows [top, top+step) need input rows [top, top+step+2r).
            bottom = min(top + step, out_rows) + 2 * r
            x = np.ascontiguousarray(a[top:bottom, :, ch])
            y = np.ascontiguousarray(b[top:bottom, :, ch])
            mx, my = _blur2d(x), _blur2d(y)
            mxx, myy, mxy = mx * mx, my * my, mx * my
            var_x = _blur2d(x * x) - mxx
            var_y = _blur2d(y * y) - myy
            cov = _blur2d(x * y) - mxy
            num = (2.0 * mxy + c1) * (2.0 * cov + c2)
            den = (mxx + myy + c1) * (var_x + var_y + c2)
            total += float(np.sum(num / den))
    return total / (out_rows * (a.shape[1] - 2 * r) * a.shape[-1])


# sRGB (IEC 61966-2-1) → XYZ → CIE Lab, D65 white, 2° observer; constants as in
# scikit-image's rgb2lab so the numbers are comparable with papers that used it.
_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb) -> np.ndarray:
    """sRGB in [0, 1], shape (..., 3) → CIE Lab (D65), float64 (..., 3)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = rgb / 12.92
    curved = rgb > 0.04045
    linear[curved] = ((rgb[curved] + 0.055) / 1.055) ** 2.4
    xyz = linear @ (_XYZ_FROM_RGB / _D65_WHITE[:, None]).T  # already divided by the white
    f = 7.787 * xyz + 16.0 / 116.0
    cube = xyz > 0.008856
    f[cube] = np.cbrt(xyz[cube])
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


_25_POW_7 = 25.0 ** 7


def delta_e_ciede2000(lab1, lab2) -> np.ndarray:
    """Per-pixel CIEDE2000 colour difference (kL = kC = kH = 1) between Lab arrays (..., 3),
    following Sharma, Wu & Dalal (2005), including its conventions for zero chroma."""
    lab1 = np.asarray(lab1, dtype=np.float64)
    lab2 = np.asarray(lab2, dtype=np.float64)
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]

    # Stretch a* for near-neutral colours (G), then work in the primed LCh coordinates.
    c_mean7 = (0.5 * (np.hypot(a1, b1) + np.hypot(a2, b2))) ** 7
    g = 0.5 * (1.0 - np.sqrt(c_mean7 / (c_mean7 + _25_POW_7)))
    a1p, a2p = a1 * (1.0 + g), a2 * (1.0 + g)
    C1, C2 = np.hypot(a1p, b1), np.hypot(a2p, b2)
    two_pi = 2.0 * np.pi
    h1 = np.mod(np.arctan2(b1, a1p), two_pi)
    h2 = np.mod(np.arctan2(b2, a2p), two_pi)

    chroma_product = C1 * C2
    neutral = chroma_product == 0.0  # a hue is undefined: Δh = 0, mean hue = sum of hues
    dh = h2 - h1
    dh = np.where(dh > np.pi, dh - two_pi, np.where(dh < -np.pi, dh + two_pi, dh))
    dh[neutral] = 0.0
    dH = 2.0 * np.sqrt(chroma_product) * np.sin(0.5 * dh)

    h_sum = h1 + h2
    far = np.abs(h1 - h2) > np.pi
    h_mean = np.where(far, np.where(h_sum < two_pi, h_sum + two_pi, h_sum - two_pi), h_sum)
    h_mean = np.where(neutral, h_sum, 0.5 * h_mean)

    L_mean = 0.5 * (L1 + L2)
    C_mean = 0.5 * (C1 + C2)
    t = (1.0 - 0.17 * np.cos(h_mean - np.deg2rad(30.0)) + 0.24 * np.cos(2.0 * h_mean)
         + 0.32 * np.cos(3.0 * h_mean + np.deg2rad(6.0))
         - 0.20 * np.cos(4.0 * h_mean - np.deg2rad(63.0)))
    l50 = (L_mean - 50.0) ** 2
    s_l = 1.0 + 0.015 * l50 / np.sqrt(20.0 + l50)
    s_c = 1.0 + 0.045 * C_mean
    s_h = 1.0 + 0.015 * C_mean * t
    c_mean7 = C_mean ** 7
    r_c = 2.0 * np.sqrt(c_mean7 / (c_mean7 + _25_POW_7))
    d_theta = np.deg2rad(30.0) * np.exp(-(((np.rad2deg(h_mean) - 275.0) / 25.0) ** 2))
    r_t = -np.sin(2.0 * d_theta) * r_c

    dl = (L2 - L1) / s_l
    dc = (C2 - C1) / s_c
    dh_term = dH / s_h
    return np.sqrt(np.maximum(dl * dl + dc * dc + dh_term * dh_term + r_t * dc * dh_term, 0.0))


def ciede2000(a, b, data_range: float = 1.0) -> float:
    """Mean per-pixel CIEDE2000 ΔE between two sRGB images (converted to Lab, D65).
    0 for identical images; larger is worse (about 1 is just noticeable)."""
    a, b = _check_pair(a, b, data_range, "ciede2000")
    if data_range != 1.0:
        a, b = a / data_range, b / data_range
    step = _strip_rows(a.shape[1])
    total = 0.0
    for top in range(0, a.shape[0], step):
        lab_a = rgb_to_lab(a[top:top + step])
        lab_b = rgb_to_lab(b[top:top + step])
        total += float(np.sum(delta_e_ciede2000(lab_a, lab_b)))
    return total / (a.shape[0] * a.shape[1])
