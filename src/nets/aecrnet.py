"""AECR-Net (Wu et al., "Contrastive Learning for Compact Single Image Dehazing", CVPR 2021).

A layer-for-layer port of the authors' PyTorch release (GlassyWu/AECR-Net, models/AECRNet.py,
models/deconv.py, and the DCNv2 module it imports). Parameter names equal the keys of the
official `state_dict`, so a converted checkpoint (src/tools/convert_torch.py) loads by name:

    deconv.{weight,bias,running_mean,running_deconv}       FastDeconv pre-layer
    down1.1.*  down2.0.*  down3.0.*                          encoder
    block.{conv1,conv2}.*  block.calayer.ca.{0,2}.*  block.palayer.pa.{0,2}.*
    dcn_block.dcn.{weight,bias}  dcn_block.dcn.conv_offset_mask.*
    mix1.w  mix2.w
    up1.0.*  up2.0.*  up3.1.*                                decoder

Two places where MindSpore differs from PyTorch and the port compensates:

* Transposed convolutions: MindSpore's `nn.Conv2dTranspose(output_padding=1)` zero-fills the
  extra row/column instead of computing it (checked on 2.8 CPU), so `ConvTranspose2d` below
  computes the full ('valid') transposed convolution and crops it exactly like PyTorch does.
* Deformable convolution: DCNv2 stores offsets as interleaved (dy, dx) pairs per kernel tap
  followed by mask logits; `ops.deformable_conv2d` wants [dx x9 | dy x9 | mask x9] with the
  sigmoid already applied. The checkpoint keeps DCNv2's channel order; the block reorders in
  `construct`.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Uniform, Zero, initializer
from mindspore.ops import constexpr

from src.registry import NETS



@constexpr
def _check_divisible_by_4(shape):
    """Runs in Python while the graph compiles (shapes are static), so the error is a plain
    ValueError on MindSpore 2.2 as well as later versions."""
    if shape[2] % 4 or shape[3] % 4:
        raise ValueError("AECRNet: input height and width must be divisible by 4, got %dx%d: "
                         "crop training patches to a multiple of 4 (inference pads and crops "
                         "back)" % (shape[2], shape[3]))
    return True

#: Fractional nudge added to deformable-conv offsets that are exact integers on Ascend (see
#: `ModulatedDeformConv2d`). 1e-3 px moves a bilinear sample by a thousandth of the gap between
#: neighbouring pixels: invisible in the output, but it gives every offset a fractional part.
ASCEND_OFFSET_NUDGE = 1e-3


def _uniform(shape, bound: float):
    return ms.Parameter(initializer(Uniform(scale=bound), shape, ms.float32))


def _torch_conv_init(conv: nn.Cell, fan_in: int) -> None:
    """PyTorch's default Conv init (kaiming_uniform with a=sqrt(5), bias U(+-1/sqrt(fan_in))):
    both reduce to U(+-1/sqrt(fan_in)). Matching it keeps training from scratch comparable with
    the reference run."""
    bound = 1.0 / math.sqrt(fan_in)
    conv.weight.set_data(initializer(Uniform(scale=bound), conv.weight.shape, ms.float32))
    if conv.bias is not None:
        conv.bias.set_data(initializer(Uniform(scale=bound), conv.bias.shape, ms.float32))


def conv2d(in_ch: int, out_ch: int, k: int, stride: int = 1, padding: Optional[int] = None
           ) -> nn.Conv2d:
    """PyTorch-style Conv2d (zero padding, bias, PyTorch init)."""
    padding = k // 2 if padding is None else padding
    conv = nn.Conv2d(in_ch, out_ch, k, stride=stride, pad_mode="pad" if padding else "valid",
                     padding=padding, has_bias=True)
    _torch_conv_init(conv, in_ch * k * k)
    return conv


class ConvTranspose2d(nn.Conv2dTranspose):
    """torch.nn.ConvTranspose2d(in, out, k, stride, padding, output_padding) semantics.

    Weight layout (in, out, kh, kw) is the same as PyTorch's. The full transposed convolution is
    (H-1)*s + k rows; PyTorch keeps rows [p, p + (H-1)*s - 2p + k + output_padding)."""

    def __init__(self, in_ch: int, out_ch: int, k: int, stride: int, padding: int,
                 output_padding: int):
        super().__init__(in_ch, out_ch, k, stride=stride, pad_mode="valid", has_bias=True)
        if not 0 <= output_padding < stride:
            raise ValueError("output_padding must be in [0, stride)")
        self.crop = padding
        self.trim = padding - output_padding       # rows dropped at the bottom/right end
        # torch computes fan_in of a transposed conv from weight.size(1) = out_channels.
        _torch_conv_init(self, out_ch * k * k)

    def construct(self, x):
        y = super().construct(x)
        h, w = y.shape[2], y.shape[3]
        if self.crop == 0 and self.trim == 0:
            return y
        return y[:, :, self.crop:h - self.trim, self.crop:w - self.trim]


def isqrt_newton_schulz(a, num_iters: int):
    """A^(-1/2) of a symmetric positive-definite matrix by coupled Newton-Schulz iterations
    (the authors' `isqrt_newton_schulz_autograd`): differentiable, no eigendecomposition."""
    dim = a.shape[0]
    norm_a = ops.sqrt((a * a).sum())
    y = a / norm_a
    eye = ops.eye(dim, dim, a.dtype)
    z = ops.eye(dim, dim, a.dtype)
    for _ in range(num_iters):
        t = 0.5 * (3.0 * eye - ops.matmul(z, y))
        y = ops.matmul(y, t)
        z = ops.matmul(t, z)
    return z / ops.sqrt(norm_a)


class FastDeconv(nn.Cell):
    """Network deconvolution (Ye et al., ICLR 2020) as used by AECR-Net: a conv layer that
    whitens its input patches first, with the whitening folded into the weights.

    Training: im2col of the input with stride `sampling_stride` (3x3 patches every 3 pixels),
    centre, covariance eps*I + X^T X / n, its inverse square root by Newton-Schulz, running
    mean / running whitening matrix updated with `momentum`. Eval: the running statistics.
    Only the groups=1 path of the original is ported (the only one AECR-Net uses)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1, eps: float = 1e-5, n_iter: int = 5,
                 momentum: float = 0.1, block: int = 64, sampling_stride: int = 3):
        super().__init__()
        if block > in_channels:
            block = in_channels
        elif in_channels % block != 0:
            block = math.gcd(block, in_channels)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.eps = eps
        self.n_iter = n_iter
        self.momentum = momentum
        self.block = block
        self.num_features = kernel_size * kernel_size * block
        self.sampling_stride = sampling_stride * stride
        fan_in = in_channels * kernel_size * kernel_size
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = _uniform((out_channels, in_channels, kernel_size, kernel_size), bound)
        self.bias = _uniform((out_channels,), bound)
        self.running_mean = ms.Parameter(
            ms.Tensor(np.zeros(self.num_features, np.float32)), requires_grad=False)
        self.running_deconv = ms.Parameter(
            ms.Tensor(np.eye(self.num_features, dtype=np.float32)), requires_grad=False)
        self.conv = ops.Conv2D(out_channels, kernel_size, pad_mode="pad", pad=padding,
                               stride=stride)

    def _patches(self, x):
        """(rows, k*k*block) matrix of the patches torch's unfold(k, padding, stride=s) takes;
        a row's features are ordered (channel, ky, kx) like the weight's flattening."""
        n, c, h, w = x.shape
        k, s, p = self.kernel_size, self.sampling_stride, self.padding
        if k == 1:
            rows = x.transpose(0, 2, 3, 1).reshape(-1, c)
            return rows[::s * s]
        xp = ops.pad(x, (p, p, p, p)) if p else x
        hp, wp = h + 2 * p, w + 2 * p
        lh, lw = (hp - k) // s + 1, (wp - k) // s + 1
        if s == k:
            # Non-overlapping windows: a reshape is the whole im2col (cheap, and it avoids
            # relying on Unfold support on every backend).
            xp = xp[:, :, :lh * k, :lw * k].reshape(n, c, lh, k, lw, k)
            cols = xp.transpose(0, 2, 4, 1, 3, 5).reshape(n * lh * lw, c * k * k)
        else:
            taps = []
            for i in range(k):
                for j in range(k):
                    taps.append(xp[:, :, i:i + s * (lh - 1) + 1:s, j:j + s * (lw - 1) + 1:s])
            cols = ops.stack(taps, axis=2)                     # n, c, k*k, lh, lw
            cols = cols.transpose(0, 3, 4, 1, 2).reshape(n * lh * lw, c * k * k)
        groups = c // self.block
        if groups == 1:
            return cols
        # torch: X.view(-1, num_features, C//B).transpose(1, 2).view(-1, num_features)
        return cols.reshape(-1, self.num_features, groups).transpose(0, 2, 1).reshape(
            -1, self.num_features)

    def construct(self, x):
        c = x.shape[1]
        groups = c // self.block
        if self.training:
            cols = self._patches(x)
            mean = cols.mean(axis=0)
            cols = cols - mean.reshape(1, -1)
            eye = ops.eye(self.num_features, self.num_features, cols.dtype)
            cov = self.eps * eye + ops.matmul(cols.T, cols) / cols.shape[0]
            deconv = isqrt_newton_schulz(cov, self.n_iter)
            m = self.momentum
            ops.assign(self.running_mean,
                       self.running_mean * (1.0 - m) + ops.stop_gradient(mean) * m)
            ops.assign(self.running_deconv,
                       self.running_deconv * (1.0 - m) + ops.stop_gradient(deconv) * m)
        else:
            mean = self.running_mean
            deconv = self.running_deconv
        # X * deconv * conv = X * (deconv * conv): fold the whitening into weight and bias.
        w = self.weight.reshape(-1, self.num_features, groups).transpose(0, 2, 1).reshape(
            -1, self.num_features)
        w = ops.matmul(w, deconv)
        b = self.bias - ops.matmul(w, mean.reshape(-1, 1)).reshape(self.out_channels, -1).sum(1)
        w = w.reshape(-1, groups, self.num_features).transpose(0, 2, 1).reshape(
            self.weight.shape)
        return ops.bias_add(self.conv(x, w), b)


class PALayer(nn.Cell):
    """Pixel attention: a one-channel sigmoid map multiplies every channel."""

    def __init__(self, channel: int):
        super().__init__()
        self.pa = nn.SequentialCell([conv2d(channel, channel // 8, 1), nn.ReLU(),
                                     conv2d(channel // 8, 1, 1), nn.Sigmoid()])

    def construct(self, x):
        return x * self.pa(x)


class CALayer(nn.Cell):
    """Channel attention: global average pool -> bottleneck -> per-channel sigmoid gate."""

    def __init__(self, channel: int):
        super().__init__()
        self.ca = nn.SequentialCell([conv2d(channel, channel // 8, 1), nn.ReLU(),
                                     conv2d(channel // 8, channel, 1), nn.Sigmoid()])

    def construct(self, x):
        return x * self.ca(x.mean(axis=(2, 3), keep_dims=True))


class DehazeBlock(nn.Cell):
    """FFA-Net's feature attention block: conv-ReLU + skip, conv, CA, PA, + skip."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.conv1 = conv2d(dim, dim, kernel_size)
        self.act1 = nn.ReLU()
        self.conv2 = conv2d(dim, dim, kernel_size)
        self.calayer = CALayer(dim)
        self.palayer = PALayer(dim)

    def construct(self, x):
        res = self.act1(self.conv1(x)) + x
        res = self.conv2(res)
        res = self.calayer(res)
        res = self.palayer(res)
        return res + x


class ModulatedDeformConv2d(nn.Cell):
    """DCNv2's `DCN` module (3x3, stride 1, padding 1, one deformable group): a zero-initialised
    conv predicts 2*9 offsets and 9 mask logits from the input, then a modulated deformable conv.

    `offset_nudge` > 0 adds that many pixels to every offset with no fractional part. MindSpore's
    Ascend kernel rejects integral offsets, and the zero-initialised offset conv makes every
    offset exactly 0.0 at step 0 (and whenever its output is integral). "auto" or None (the
    default) uses ASCEND_OFFSET_NUDGE on Ascend and 0 elsewhere, so CPU/GPU runs are
    bit-faithful."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 padding: int = 1, offset_nudge: Union[str, float, None] = "auto"):
        super().__init__()
        k = kernel_size
        self.kernel_size = k
        self.padding = padding
        self.taps = k * k
        bound = 1.0 / math.sqrt(in_channels * k * k)
        self.weight = _uniform((out_channels, in_channels, k, k), bound)
        self.bias = ms.Parameter(initializer(Zero(), (out_channels,), ms.float32))
        self.conv_offset_mask = nn.Conv2d(in_channels, 3 * k * k, k, pad_mode="pad",
                                          padding=padding, has_bias=True,
                                          weight_init="zeros", bias_init="zeros")
        if offset_nudge is None or offset_nudge == "auto":
            offset_nudge = ASCEND_OFFSET_NUDGE if ms.get_context("device_target") == "Ascend" \
                else 0.0
        self.offset_nudge = float(offset_nudge)

    def dcn_offsets(self, x):
        """DCNv2 layout → MindSpore layout: [dx per tap | dy per tap | sigmoid(mask)]."""
        om = self.conv_offset_mask(x)
        n, _, h, w = om.shape
        yx = om[:, :2 * self.taps].reshape(n, self.taps, 2, h, w)
        dy = yx[:, :, 0]
        dx = yx[:, :, 1]
        offsets = ops.concat((dx, dy), axis=1)
        if self.offset_nudge > 0:
            integral = ops.equal(offsets, ops.floor(offsets)).astype(offsets.dtype)
            offsets = offsets + ops.stop_gradient(integral) * self.offset_nudge
        mask = ops.sigmoid(om[:, 2 * self.taps:])
        return ops.concat((offsets, mask), axis=1)

    def construct(self, x):
        p = self.padding
        return ops.deformable_conv2d(x, self.weight, self.dcn_offsets(x),
                                     (self.kernel_size, self.kernel_size), (1, 1, 1, 1),
                                     (p, p, p, p), bias=self.bias)


class DCNBlock(nn.Cell):
    def __init__(self, in_channel: int, out_channel: int, offset_nudge: Union[str, float, None] = "auto"):
        super().__init__()
        self.dcn = ModulatedDeformConv2d(in_channel, out_channel, 3, 1, offset_nudge)

    def construct(self, x):
        return self.dcn(x)


class Mix(nn.Cell):
    """Adaptive mixup: out = f1 * sigmoid(w) + f2 * (1 - sigmoid(w)), one learnable scalar."""

    def __init__(self, m: float = -0.80):
        super().__init__()
        self.w = ms.Parameter(ms.Tensor(np.array([m], np.float32)))

    def construct(self, fea1, fea2):
        factor = ops.sigmoid(self.w)
        return fea1 * factor + fea2 * (1.0 - factor)


@NETS.register
class AECRNet(nn.Cell):
    """The authors' `Dehaze(3, 3)`: (N,3,H,W) hazy in [0,1] → (N,3,H,W) in [-1,1] (tanh).
    H and W must be divisible by 4 (two stride-2 stages); pad at inference, crop back.

    ngf: base width (64 in the paper, 2.61 M parameters); smaller values for tests and demos.
    num_blocks: applications of the ONE shared DehazeBlock (6); num_dcn: of the ONE shared DCN
    block (2)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64,
                 num_blocks: int = 6, num_dcn: int = 2,
                 offset_nudge: Union[str, float, None] = "auto"):
        super().__init__()
        self.num_blocks = int(num_blocks)
        self.num_dcn = int(num_dcn)
        self.down1 = nn.SequentialCell([nn.ReflectionPad2d(3), conv2d(in_channels, ngf, 7, padding=0),
                                        nn.ReLU()])
        self.down2 = nn.SequentialCell([conv2d(ngf, ngf * 2, 3, stride=2, padding=1), nn.ReLU()])
        self.down3 = nn.SequentialCell([conv2d(ngf * 2, ngf * 4, 3, stride=2, padding=1),
                                        nn.ReLU()])
        self.block = DehazeBlock(ngf * 4, 3)
        self.up1 = nn.SequentialCell([ConvTranspose2d(ngf * 4, ngf * 2, 3, 2, 1, 1), nn.ReLU()])
        self.up2 = nn.SequentialCell([ConvTranspose2d(ngf * 2, ngf, 3, 2, 1, 1), nn.ReLU()])
        self.up3 = nn.SequentialCell([nn.ReflectionPad2d(3), conv2d(ngf, out_channels, 7, padding=0),
                                      nn.Tanh()])
        self.dcn_block = DCNBlock(ngf * 4, ngf * 4, offset_nudge)
        self.deconv = FastDeconv(in_channels, in_channels, kernel_size=3, stride=1, padding=1)
        self.mix1 = Mix(m=-1.0)
        self.mix2 = Mix(m=-0.6)

    def construct(self, x):
        _check_divisible_by_4(x.shape)
        x_deconv = self.deconv(x)
        x_down1 = self.down1(x_deconv)
        x_down2 = self.down2(x_down1)
        x_down3 = self.down3(x_down2)
        feat = x_down3
        for _ in range(self.num_blocks):
            feat = self.block(feat)
        for _ in range(self.num_dcn):
            feat = self.dcn_block(feat)
        x_mix = self.mix1(x_down3, feat)
        x_up1 = self.up1(x_mix)
        x_up1_mix = self.mix2(x_down2, x_up1)
        x_up2 = self.up2(x_up1_mix)
        return self.up3(x_up2)


def count_parameters(net: nn.Cell, trainable_only: bool = True) -> int:
    params = net.trainable_params() if trainable_only else net.get_parameters()
    return int(sum(int(np.prod(p.shape)) for p in params))
