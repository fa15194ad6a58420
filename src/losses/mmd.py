"""SinGAN-Dehaze's style term: multi-kernel RBF MMD between the high-frequency features of the
dehazed output and those of an unpaired clear image.

High frequency: f − G_σ * f (a per-channel Gaussian blur, reflect padding), which keeps edges
and texture — what haze washes out — and drops the low-frequency colour cast the GAN and the
content terms already handle.

Samples: each image contributes N feature vectors at random spatial positions (the caller draws
the positions); the two sets are compared with the multi-kernel MMD of DAN (Long et al. 2015),
as in the usual `guassian_kernel`/`mmd_rbf` code: bandwidth = mean pairwise squared distance of
the pooled samples (no gradient through it), kernel_num bandwidths bandwidth·kernel_mul^(i−⌊n/2⌋),
MMD² = mean K(X,X) + mean K(Y,Y) − mean K(X,Y) − mean K(Y,X)."""
from __future__ import annotations

import math

import numpy as np
from mindspore import Tensor, nn, ops

from src.registry import LOSSES

# Guards the bandwidth when every sample is identical (all distances 0): MMD is then 0, not NaN.
BANDWIDTH_EPS = 1e-12


def gaussian_taps(sigma: float) -> np.ndarray:
    """1-D normalised Gaussian, radius ceil(3σ)."""
    if not sigma > 0:
        raise ValueError("blur sigma must be > 0, got %r" % (sigma,))
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


class HighPass(nn.Cell):
    """x − GaussianBlur_σ(x) per channel, for (B, C, H, W); reflect padding keeps borders from
    looking like edges. The blur is separable (a k×1 then a 1×k convolution on B·C planes)."""

    def __init__(self, sigma: float = 1.0):
        super().__init__()
        taps = gaussian_taps(sigma)
        self.radius = (len(taps) - 1) // 2
        self.pad = nn.ReflectionPad2d(self.radius)
        self.kernel_v = Tensor(taps.reshape(1, 1, -1, 1))
        self.kernel_h = Tensor(taps.reshape(1, 1, 1, -1))
        self.conv_v = ops.Conv2D(out_channel=1, kernel_size=(len(taps), 1))
        self.conv_h = ops.Conv2D(out_channel=1, kernel_size=(1, len(taps)))

    def construct(self, x):
        b, c, h, w = x.shape
        planes = x.reshape(b * c, 1, h, w)
        blurred = self.conv_h(self.conv_v(self.pad(planes), self.kernel_v), self.kernel_h)
        return (planes - blurred).reshape(b, c, h, w)


def mmd_rbf(x, y, kernel_mul: float = 2.0, kernel_num: int = 5):
    """x (N, D), y (M, D) → scalar multi-kernel MMD² estimate (biased, as in DAN)."""
    n = x.shape[0]
    total = ops.concat((x, y), axis=0)
    sq = (total * total).sum(axis=1, keepdims=True)
    # ‖a−b‖² = ‖a‖² + ‖b‖² − 2a·b; clamped at 0 against rounding.
    dist = ops.relu(sq + sq.transpose(1, 0) - 2.0 * ops.matmul(total, total.transpose(1, 0)))
    count = total.shape[0]
    bandwidth = ops.stop_gradient(dist.sum()) / (count * count - count)
    bandwidth = bandwidth / (kernel_mul ** (kernel_num // 2)) + BANDWIDTH_EPS
    kernels = 0.0
    for i in range(kernel_num):
        kernels = kernels + ops.exp(-dist / (bandwidth * (kernel_mul ** i)))
    xx = kernels[:n, :n].mean()
    yy = kernels[n:, n:].mean()
    xy = kernels[:n, n:].mean()
    yx = kernels[n:, :n].mean()
    return xx + yy - xy - yx


@LOSSES.register
class MMDLoss(nn.Cell):
    """construct(feat_x, feat_y, ids_x, ids_y): (B, C, H, W) feature maps of the output and of
    the clear image, (N,) int32 flat positions for each → MMD² between the high-frequency
    vectors sampled at those positions (all images of the batch pooled into one set)."""

    def __init__(self, kernel_mul: float = 2.0, kernel_num: int = 5, blur_sigma: float = 1.0):
        super().__init__()
        if not kernel_mul > 1 or int(kernel_num) < 1:
            raise ValueError("MMD needs kernel_mul > 1 and kernel_num >= 1")
        self.kernel_mul = float(kernel_mul)
        self.kernel_num = int(kernel_num)
        self.high_pass = HighPass(blur_sigma)

    def samples(self, feat, ids):
        b, c = feat.shape[0], feat.shape[1]
        picked = ops.gather(self.high_pass(feat).reshape(b, c, -1), ids, 2)   # (B, C, N)
        return picked.transpose(0, 2, 1).reshape(-1, c)

    def construct(self, feat_x, feat_y, ids_x, ids_y):
        return mmd_rbf(self.samples(feat_x, ids_x), self.samples(feat_y, ids_y),
                       self.kernel_mul, self.kernel_num)
