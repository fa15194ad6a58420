"""The U-Net of "Learning to See in the Dark" (Chen et al., CVPR 2018), as in the authors'
TensorFlow release (train_Sony.py `network`), layer for layer:

    packed raw (N, 4, H, W), H and W multiples of 16
    5 levels of two 3×3 convs (with bias) + LeakyReLU 0.2 — max(0.2x, x), as the authors' lrelu —
    at 32 / 64 / 128 / 256 / 512 channels, 2×2 max-pool between them;
    up: 2×2 stride-2 transposed conv (no bias) to the skip's width, concat [up, skip],
    two 3×3 convs + LeakyReLU; 1×1 conv (with bias, no activation) → 12 channels;
    depth-to-space ×2 in TensorFlow's order → (N, 3, 2H, 2W) sRGB.

Depth-to-space: tf.depth_to_space (NHWC) gives out[2h+i, 2w+j, c] = in[h, w, (2i+j)·C + c]
(channel index = block position major, colour minor). PyTorch's pixel_shuffle uses c·4 + 2i + j
instead, and MindSpore's DepthToSpace has followed either over versions, so it is written here
with reshape/transpose; tests pin it against a numpy reference. Weights trained by the authors
therefore map channel for channel.

Initialisation follows the release too: TF-slim's conv2d defaults (Glorot/Xavier uniform
weights, zero biases) and truncated normal (σ 0.02, cut at 2σ) for the transposed convs, drawn
in numpy because MindSpore's TruncatedNormal changed meaning between 2.2 and 2.3."""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from src.registry import NETS


def depth_to_space_reference(x: np.ndarray, block: int = 2) -> np.ndarray:
    """numpy tf.nn.depth_to_space on NCHW: out[n, c, h·b + i, w·b + j] =
    x[n, (i·b + j)·C + c, h, w] with C = channels / b²."""
    n, ch, h, w = x.shape
    c = ch // (block * block)
    out = np.empty((n, c, h * block, w * block), dtype=x.dtype)
    for i in range(block):
        for j in range(block):
            out[:, :, i::block, j::block] = x[:, (i * block + j) * c:(i * block + j + 1) * c]
    return out


def _truncated_normal(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """tf.truncated_normal: N(0, σ²) redrawn outside ±2σ."""
    out = rng.normal(0.0, sigma, size=shape)
    bad = np.abs(out) > 2 * sigma
    while bad.any():
        out[bad] = rng.normal(0.0, sigma, size=int(bad.sum()))
        bad = np.abs(out) > 2 * sigma
    return out.astype(np.float32)


class DepthToSpace(nn.Cell):
    """tf.nn.depth_to_space for NCHW tensors (see the module docstring)."""

    def __init__(self, block: int = 2):
        super().__init__()
        self.block = block

    def construct(self, x):
        n, ch, h, w = x.shape
        b = self.block
        c = ch // (b * b)
        x = ops.reshape(x, (n, b, b, c, h, w))          # (n, i, j, c, h, w)
        x = ops.transpose(x, (0, 3, 4, 1, 5, 2))        # (n, c, h, i, w, j)
        return ops.reshape(x, (n, c, h * b, w * b))


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=1, pad_mode="same", has_bias=True,
                     weight_init="XavierUniform", bias_init="zeros")


def _up(rng: np.random.Generator, cin: int, cout: int) -> nn.Conv2dTranspose:
    # MindSpore's Conv2dTranspose weight is (in, out, kh, kw); TF's conv2d_transpose filter is
    # (kh, kw, out, in): a converted TF weight is transposed (3, 2, 0, 1).
    w = _truncated_normal(rng, (cin, cout, 2, 2), 0.02)
    return nn.Conv2dTranspose(cin, cout, 2, stride=2, pad_mode="same", has_bias=False,
                              weight_init=ms.Tensor(w))


@NETS.register
class UNetSID(nn.Cell):
    """SID U-Net: (N, in_channels, H, W) packed raw → (N, out_channels, 2H, 2W); H and W
    multiples of 16. `seed` seeds the transposed convs' init (the convs use MindSpore's seed)."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, base_channels: int = 32,
                 block: int = 2, seed: int = 0):
        super().__init__()
        c1, c2, c3, c4, c5 = [int(base_channels) * 2 ** k for k in range(5)]  # 32 ... 512
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x51D]))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, pad_mode="same")
        self.conv1_1, self.conv1_2 = _conv(in_channels, c1), _conv(c1, c1)
        self.conv2_1, self.conv2_2 = _conv(c1, c2), _conv(c2, c2)
        self.conv3_1, self.conv3_2 = _conv(c2, c3), _conv(c3, c3)
        self.conv4_1, self.conv4_2 = _conv(c3, c4), _conv(c4, c4)
        self.conv5_1, self.conv5_2 = _conv(c4, c5), _conv(c5, c5)
        self.up6 = _up(rng, c5, c4)
        self.conv6_1, self.conv6_2 = _conv(2 * c4, c4), _conv(c4, c4)
        self.up7 = _up(rng, c4, c3)
        self.conv7_1, self.conv7_2 = _conv(2 * c3, c3), _conv(c3, c3)
        self.up8 = _up(rng, c3, c2)
        self.conv8_1, self.conv8_2 = _conv(2 * c2, c2), _conv(c2, c2)
        self.up9 = _up(rng, c2, c1)
        self.conv9_1, self.conv9_2 = _conv(2 * c1, c1), _conv(c1, c1)
        self.conv10 = _conv(c1, int(out_channels) * int(block) ** 2, 1)
        self.depth_to_space = DepthToSpace(int(block))

    @staticmethod
    def lrelu(x):
        return ops.maximum(x * 0.2, x)

    def _level(self, first, second, x):
        return self.lrelu(second(self.lrelu(first(x))))

    def construct(self, x):
        conv1 = self._level(self.conv1_1, self.conv1_2, x)
        conv2 = self._level(self.conv2_1, self.conv2_2, self.pool(conv1))
        conv3 = self._level(self.conv3_1, self.conv3_2, self.pool(conv2))
        conv4 = self._level(self.conv4_1, self.conv4_2, self.pool(conv3))
        conv5 = self._level(self.conv5_1, self.conv5_2, self.pool(conv4))
        conv6 = self._level(self.conv6_1, self.conv6_2, ops.concat((self.up6(conv5), conv4), 1))
        conv7 = self._level(self.conv7_1, self.conv7_2, ops.concat((self.up7(conv6), conv3), 1))
        conv8 = self._level(self.conv8_1, self.conv8_2, ops.concat((self.up8(conv7), conv2), 1))
        conv9 = self._level(self.conv9_1, self.conv9_2, ops.concat((self.up9(conv8), conv1), 1))
        return self.depth_to_space(self.conv10(conv9))


def count_parameters(cell) -> int:
    return int(sum(int(np.prod(p.shape)) for p in cell.trainable_params()))
