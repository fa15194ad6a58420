"""SinGAN-Dehaze networks: the CUT ResNet generator, the 70×70 PatchGAN discriminator and the
PatchNCE projection head (Park et al., "Contrastive Learning for Unpaired Image-to-Image
Translation", ECCV 2020, as used by "Farewell to CycleGAN", Neurocomputing 2025).

Layer for layer as the reference with `--normG instance --normD instance --no_antialias
--no_antialias_up --no_dropout` (the variant the SinGAN-Dehaze port describes: strided
convolutions down, transposed convolutions up): conv biases on (instance norm has no affine
parameters), weights N(0, 0.02), biases 0. Images are in [-1, 1] (Tanh output).

The generator keeps CUT's flat layer list (`model.<i>.…` parameter names) because the PatchNCE
layers are indices into it: with the default layers 0, 4, 8, 12, 16 the features are the
reflection-padded input (3 ch), the first stride-2 conv before its norm (2·ngf), the second
downsampling after its norm (4·ngf), and the outputs of residual blocks 3 and 7 (4·ngf).

Instance norm is written with reductions instead of nn.InstanceNorm2d: MindSpore's CPU backend
has no InstanceNorm kernel (checked on 2.8), and the same code then runs, trains and exports
identically on CPU, GPU and Ascend."""
from __future__ import annotations

from typing import List, Sequence, Tuple

from mindspore import nn, ops
from mindspore.common.initializer import Normal

from src.registry import NETS

INIT_GAIN = 0.02          # CUT init_type='normal', init_gain=0.02
NORM_EPS = 1e-5           # torch.nn.InstanceNorm2d default
L2_EPS = 1e-7             # CUT Normalize
SQ_NORM_FLOOR = 1e-24     # see l2_normalize


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, pad_mode="pad" if padding else "valid",
                     padding=padding, has_bias=True, weight_init=Normal(INIT_GAIN),
                     bias_init="zeros")


class InstanceNorm2d(nn.Cell):
    """torch.nn.InstanceNorm2d(affine=False, track_running_stats=False): per sample and channel,
    normalise over H and W with the biased variance."""

    def __init__(self, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.mean = ops.ReduceMean(keep_dims=True)

    def construct(self, x):
        mu = self.mean(x, (2, 3))
        centred = x - mu
        var = self.mean(centred * centred, (2, 3))
        return centred * ops.rsqrt(var + self.eps)


class UpConv(nn.Conv2dTranspose):
    """torch.nn.ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1): exactly 2H × 2W.

    Computed as the full ('valid') transposed convolution, (2H+1) × (2W+1), cropped to rows and
    columns 1..2H / 1..2W. MindSpore's own padding=1 + output_padding=1 does not give PyTorch's
    result: on CPU (2.8) its extra last row/column is zeros instead of the convolution's values
    (checked against torch); the crop is exact on every backend. Subclassing keeps the
    parameter names (`weight`, `bias`) of a plain transposed convolution."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, stride=2, pad_mode="valid", has_bias=True,
                         weight_init=Normal(INIT_GAIN), bias_init="zeros")

    def construct(self, x):
        h, w = x.shape[2], x.shape[3]
        return super().construct(x)[:, :, 1:1 + 2 * h, 1:1 + 2 * w]


class ResnetBlock(nn.Cell):
    """x + [reflect-pad 1, conv3, IN, ReLU, reflect-pad 1, conv3, IN](x)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.SequentialCell([
            nn.ReflectionPad2d(1), _conv(dim, dim, 3), InstanceNorm2d(), nn.ReLU(),
            nn.ReflectionPad2d(1), _conv(dim, dim, 3), InstanceNorm2d(),
        ])

    def construct(self, x):
        return x + self.conv_block(x)


@NETS.register
class ResnetGenerator(nn.Cell):
    """ReflectionPad3 + Conv7 (in→ngf) + IN + ReLU; two Conv3 s2 (×2 channels) + IN + ReLU;
    `n_blocks` residual blocks at 4·ngf; two ConvTranspose3 s2 (output_padding 1, ÷2 channels)
    + IN + ReLU; ReflectionPad3 + Conv7 (ngf→out) + Tanh. H and W must be multiples of 4."""

    N_DOWN = 2

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64,
                 n_blocks: int = 9):
        super().__init__()
        if n_blocks < 0 or ngf < 1:
            raise ValueError("ResnetGenerator: need ngf >= 1 and n_blocks >= 0")
        self.in_channels = in_channels
        self.ngf = ngf
        self.n_blocks = n_blocks
        # Per layer: output channels and how it changes H (and W): ("grow", n) adds n,
        # ("down",) is a 3×3 stride-2 conv with padding 1, ("up",) doubles.
        layers: List[nn.Cell] = [nn.ReflectionPad2d(3), _conv(in_channels, ngf, 7),
                                 InstanceNorm2d(), nn.ReLU()]
        channels = [in_channels, ngf, ngf, ngf]
        geometry = [("grow", 6), ("grow", -6), ("same",), ("same",)]
        ch = ngf
        for _ in range(self.N_DOWN):
            layers += [_conv(ch, ch * 2, 3, stride=2, padding=1), InstanceNorm2d(), nn.ReLU()]
            ch *= 2
            channels += [ch] * 3
            geometry += [("down",), ("same",), ("same",)]
        for _ in range(n_blocks):
            layers.append(ResnetBlock(ch))
            channels.append(ch)
            geometry.append(("same",))
        for _ in range(self.N_DOWN):
            layers += [UpConv(ch, ch // 2), InstanceNorm2d(), nn.ReLU()]
            ch //= 2
            channels += [ch] * 3
            geometry += [("up",), ("same",), ("same",)]
        layers += [nn.ReflectionPad2d(3), _conv(ch, out_channels, 7), nn.Tanh()]
        channels += [ch, out_channels, out_channels]
        geometry += [("grow", 6), ("grow", -6), ("same",)]
        self.model = nn.CellList(layers)
        self._channels = tuple(channels)
        self._geometry = tuple(geometry)

    def feature_channels(self, layers: Sequence[int]) -> List[int]:
        """Channels of the output of each layer index in `layers` (for the NCE head)."""
        n = len(self._channels)
        for i in layers:
            if not 0 <= int(i) < n:
                raise ValueError("generator layer %r out of range 0..%d" % (i, n - 1))
        return [self._channels[int(i)] for i in layers]

    def feature_sizes(self, layers: Sequence[int], height: int, width: int
                      ) -> List[Tuple[int, int]]:
        """(H, W) of the output of each layer in `layers` for an input of height × width."""
        self.feature_channels(layers)
        h, w = int(height), int(width)
        sizes = []
        for kind in self._geometry:
            if kind[0] == "grow":
                h, w = h + kind[1], w + kind[1]
            elif kind[0] == "down":
                h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            elif kind[0] == "up":
                h, w = 2 * h, 2 * w
            sizes.append((h, w))
        return [sizes[int(i)] for i in layers]

    def encode_layers(self, x, layers: Tuple[int, ...]):
        """The outputs of the layers whose indices are in `layers` (ascending), running the
        net only as far as the last of them (CUT `encode_only=True`)."""
        feats = ()
        last = layers[-1]
        for i, cell in enumerate(self.model):
            if i <= last:
                x = cell(x)
                if i in layers:
                    feats = feats + (x,)
        return feats

    def forward_features(self, x, layers: Tuple[int, ...]):
        """(output, features at `layers`) from one forward pass."""
        feats = ()
        for i, cell in enumerate(self.model):
            x = cell(x)
            if i in layers:
                feats = feats + (x,)
        return x, feats

    def construct(self, x):
        for cell in self.model:
            x = cell(x)
        return x


@NETS.register
class NLayerDiscriminator(nn.Cell):
    """PatchGAN: Conv4 s2 (in→ndf) + LeakyReLU 0.2; (n_layers−1)× Conv4 s2 (×2 channels, max
    8·ndf) + IN + LeakyReLU; Conv4 s1 + IN + LeakyReLU; Conv4 s1 (→1). All zero padding 1.
    n_layers=3 is the 70×70 PatchGAN: 256² → 30×30 logits (no sigmoid: LSGAN)."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1 or ndf < 1:
            raise ValueError("NLayerDiscriminator: need ndf >= 1 and n_layers >= 1")
        layers: List[nn.Cell] = [_conv(in_channels, ndf, 4, stride=2, padding=1),
                                 nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [_conv(ndf * prev, ndf * mult, 4, stride=2, padding=1), InstanceNorm2d(),
                       nn.LeakyReLU(0.2)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [_conv(ndf * prev, ndf * mult, 4, stride=1, padding=1), InstanceNorm2d(),
                   nn.LeakyReLU(0.2), _conv(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.SequentialCell(layers)

    def construct(self, x):
        return self.model(x)


def l2_normalize(x, axis: int = -1):
    """x / (‖x‖₂ + 1e-7) along `axis` (CUT's Normalize: epsilon outside the root).

    The squared norm is floored at 1e-24 before the root: identical values for any vector
    longer than 1e-12, but a zero vector — an MLP output whose hidden ReLUs are all off, which
    happens — gets a finite gradient instead of CUT's 0·∞ = NaN from d√s/ds at s = 0."""
    sq = ops.ReduceSum(keep_dims=True)(x * x, axis)
    norm = ops.sqrt(ops.maximum(sq, SQ_NORM_FLOOR))
    return x / (norm + L2_EPS)


def sample_patches(feat, patch_ids):
    """(B, C, H, W) features, (P,) int32 flat positions → (B, P, C) feature vectors."""
    b, c = feat.shape[0], feat.shape[1]
    flat = feat.reshape(b, c, -1)
    picked = ops.gather(flat, patch_ids, 2)
    return picked.transpose(0, 2, 1)


class _ProjectionMLP(nn.Cell):
    def __init__(self, cin: int, nc: int):
        super().__init__()
        self.fc1 = nn.Dense(cin, nc, weight_init=Normal(INIT_GAIN), bias_init="zeros")
        self.relu = nn.ReLU()
        self.fc2 = nn.Dense(nc, nc, weight_init=Normal(INIT_GAIN), bias_init="zeros")

    def construct(self, x):
        return self.fc2(self.relu(self.fc1(x)))


@NETS.register
class PatchSampleMLP(nn.Cell):
    """CUT's PatchSampleF with use_mlp: for each NCE layer, sample the same P spatial positions
    of a feature map, project each C-vector with Linear(C, nc)–ReLU–Linear(nc, nc) and
    L2-normalise. CUT creates the MLPs lazily on the first forward; here they are created
    eagerly from `in_channels` (ResnetGenerator.feature_channels) so that the parameters exist
    before the optimizer, the checkpoint and graph compilation see the cell.

    construct(feats, patch_ids): feats a tuple of (B, C_l, H_l, W_l), patch_ids (L, P) int32 →
    tuple of (B, P, nc)."""

    def __init__(self, in_channels: Sequence[int] = (3, 128, 256, 256, 256), nc: int = 256):
        super().__init__()
        self.in_channels = tuple(int(c) for c in in_channels)
        self.nc = int(nc)
        self.mlps = nn.CellList([_ProjectionMLP(c, self.nc) for c in self.in_channels])

    def construct(self, feats, patch_ids):
        out = ()
        for i, mlp in enumerate(self.mlps):
            x = sample_patches(feats[i], patch_ids[i])
            b, p = x.shape[0], x.shape[1]
            x = mlp(x.reshape(b * p, -1)).reshape(b, p, -1)
            out = out + (l2_normalize(x),)
        return out


def count_parameters(cell) -> int:
    return int(sum(p.size for p in cell.trainable_params()))
