"""A PyTorch twin of the SinGAN-Dehaze demo, run side by side with the MindSpore port.

The twin is written from the published method (CUT, Park et al. 2020, as used by SinGAN-Dehaze):
CUT's ResNet generator and 70×70 PatchGAN with instance norm, PatchNCE on the generator's own
encoder features (the same random positions in input and output, one MLP head per layer, L2
normalisation, InfoNCE with τ 0.07, negatives from the other positions of the same image, their
logits × (1 + U(−a, a))), LSGAN, the perceptual distance between input and output on VGG16
relu1_2/2_2/3_3, and the multi-kernel MMD between high-pass VGG features of output and unpaired
clear image. Widths, weights, patch counts and schedule come from the same config file as the
port's run.

Both sides see exactly the same batches (the package's UnpairedDehaze reader, one seeded rng per
step) and the same random draws (patch positions, negative factors, MMD positions); with
`--same-init` the port's networks start from the twin's initial weights, so the two runs can be
compared step for step. At each probe step both sides report every loss term (mean over the
steps since the last probe), the PatchNCE accuracy (the fraction of sampled output patches whose
positive, the input patch at the same place, scores highest among all input patches) on the test
images, and PSNR / SSIM of the test predictions against the clear images; sample grids (hazy |
twin | port | clear) are written per probe.

Run (a data set from the demo's synth task first):
  OBS_MOCK_ROOT=/tmp/obs python start.py --config configs/singan_dehaze_demo.yaml --task synth
  python benchmarks/twin_singan.py --data /tmp/obs/demo/singan/data --out /tmp/twin \\
      --steps 400 --probe 0,50,100,200,400 --same-init
Options: --side twin|port|both, --order g_first (the port's update order) | d_first (CUT's),
and any number of config overrides (`loss.weights.nce=1`). The table goes to stdout and
<out>/table.md.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn as tnn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from src.config import load_config  # noqa: E402
from src.data.images import make_grid, save_png, to_hwc  # noqa: E402
from src.data.paired import PairedDehaze  # noqa: E402
from src.data.unpaired import UnpairedDehaze  # noqa: E402
from src.metrics import psnr, ssim  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256)
VGG_INDEX = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15}
VGG_DOWNSCALE = {"relu1_2": 1, "relu2_2": 2, "relu3_3": 4}
TERMS = ("g_gan", "nce", "identity", "perceptual", "mmd", "d_real", "d_fake")


# -- networks (CUT, --normG/--normD instance, --no_antialias(_up), --no_dropout) ----------

class ResnetBlock(tnn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv_block = tnn.Sequential(
            tnn.ReflectionPad2d(1), tnn.Conv2d(dim, dim, 3), tnn.InstanceNorm2d(dim), tnn.ReLU(),
            tnn.ReflectionPad2d(1), tnn.Conv2d(dim, dim, 3), tnn.InstanceNorm2d(dim))

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(tnn.Module):
    def __init__(self, ngf=64, n_blocks=9):
        super().__init__()
        layers = [tnn.ReflectionPad2d(3), tnn.Conv2d(3, ngf, 7), tnn.InstanceNorm2d(ngf),
                  tnn.ReLU()]
        ch = ngf
        for _ in range(2):
            layers += [tnn.Conv2d(ch, ch * 2, 3, stride=2, padding=1),
                       tnn.InstanceNorm2d(ch * 2), tnn.ReLU()]
            ch *= 2
        layers += [ResnetBlock(ch) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [tnn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1,
                                           output_padding=1),
                       tnn.InstanceNorm2d(ch // 2), tnn.ReLU()]
            ch //= 2
        layers += [tnn.ReflectionPad2d(3), tnn.Conv2d(ch, 3, 7), tnn.Tanh()]
        self.model = tnn.Sequential(*layers)

    def forward(self, x, layers=(), encode_only=False):
        """CUT's forward: the output, or with encode_only the features at `layers` only."""
        feats = []
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in layers:
                feats.append(x)
                if encode_only and i == layers[-1]:
                    return feats
        return x, feats

    def channels(self, layers):
        x = torch.zeros(1, 3, 16, 16)
        with torch.no_grad():
            return [f.shape[1] for f in self(x, layers, encode_only=True)]


class NLayerDiscriminator(tnn.Module):
    def __init__(self, ndf=64, n_layers=3):
        super().__init__()
        seq = [tnn.Conv2d(3, ndf, 4, 2, 1), tnn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += [tnn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1), tnn.InstanceNorm2d(ndf * mult),
                    tnn.LeakyReLU(0.2)]
        prev, mult = mult, min(2 ** n_layers, 8)
        seq += [tnn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), tnn.InstanceNorm2d(ndf * mult),
                tnn.LeakyReLU(0.2), tnn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = tnn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class Projection(tnn.Module):
    def __init__(self, cin, nc):
        super().__init__()
        self.fc1 = tnn.Linear(cin, nc)
        self.fc2 = tnn.Linear(nc, nc)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class PatchSampleF(tnn.Module):
    """CUT's PatchSampleF(use_mlp=True): per layer, gather positions, MLP, L2-normalise."""

    def __init__(self, channels, nc=256):
        super().__init__()
        self.mlps = tnn.ModuleList([Projection(c, nc) for c in channels])

    def forward(self, feats, patch_ids):
        out = []
        for feat, mlp, ids in zip(feats, self.mlps, patch_ids):
            b, c = feat.shape[:2]
            # index_select on the contiguous (B, C, H·W) view, not CUT's permute-then-index:
            # on PyTorch 2.13 CPU the latter hands InstanceNorm's backward a permuted gradient
            # and its weight gradients disagree with finite differences (checked).
            x = torch.index_select(feat.flatten(2), 2, ids).transpose(1, 2)   # (B, P, C)
            x = mlp(x.reshape(-1, c)).reshape(b, len(ids), -1)
            norm = x.pow(2).sum(-1, keepdim=True).pow(0.5)
            out.append(x / (norm + 1e-7))
        return out


def init_normal(module, gain=0.02):
    """CUT init_type='normal': conv / linear weights N(0, gain), biases 0."""
    for m in module.modules():
        if isinstance(m, (tnn.Conv2d, tnn.ConvTranspose2d, tnn.Linear)):
            tnn.init.normal_(m.weight, 0.0, gain)
            tnn.init.zeros_(m.bias)


class VGGFeatures(tnn.Module):
    """VGG16 features up to the deepest requested relu; ImageNet-normalised [0, 1] input. Left
    at PyTorch's default conv init when no weights are given, as the port's random VGG."""

    def __init__(self, layers):
        super().__init__()
        seq, cin = [], 3
        for v in VGG16:
            if v == "M":
                seq.append(tnn.MaxPool2d(2, 2))
            else:
                seq += [tnn.Conv2d(cin, v, 3, padding=1), tnn.ReLU()]
                cin = v
        last = max(VGG_INDEX[name] for name in layers)
        self.features = tnn.Sequential(*seq[:last + 1])
        self.taps = [VGG_INDEX[name] for name in layers]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        x = (x - self.mean) / self.std
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out[i] = x
        return [out[i] for i in self.taps]


# -- losses --------------------------------------------------------------------------------

def patch_nce(q, k, tau, neg_scale=None):
    """CUT's PatchNCELoss (negatives from the same image), negatives' logits × neg_scale."""
    k = k.detach()
    l_pos = (q * k).sum(-1, keepdim=True)                       # (B, P, 1)
    l_neg = torch.bmm(q, k.transpose(1, 2))                     # (B, P, P)
    if neg_scale is not None:
        l_neg = l_neg * neg_scale
    eye = torch.eye(q.shape[1], dtype=torch.bool)[None]
    l_neg = l_neg.masked_fill(eye, -10.0)
    logits = torch.cat([l_pos, l_neg], -1).flatten(0, 1) / tau
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))


def gaussian_taps(sigma):
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    t = np.exp(-0.5 * (x / sigma) ** 2)
    return torch.tensor(t / t.sum(), dtype=torch.float32)


def high_pass(feat, sigma):
    b, c, h, w = feat.shape
    taps = gaussian_taps(sigma)
    r = (len(taps) - 1) // 2
    planes = feat.reshape(b * c, 1, h, w)
    blurred = F.conv2d(F.pad(planes, (r, r, r, r), mode="reflect"), taps.view(1, 1, -1, 1))
    blurred = F.conv2d(blurred, taps.view(1, 1, 1, -1))
    return (planes - blurred).reshape(b, c, h, w)


def mmd_rbf(x, y, kernel_mul=2.0, kernel_num=5):
    """DAN's multi-kernel MMD² (biased), bandwidth from the pooled mean distance."""
    n = x.shape[0]
    total = torch.cat([x, y], 0)
    dist = ((total[:, None, :] - total[None, :, :]) ** 2).sum(-1)
    m = total.shape[0]
    bandwidth = dist.detach().sum() / (m * m - m)
    bandwidth = bandwidth / (kernel_mul ** (kernel_num // 2)) + 1e-12
    kernels = sum(torch.exp(-dist / (bandwidth * kernel_mul ** i)) for i in range(kernel_num))
    return (kernels[:n, :n].mean() + kernels[n:, n:].mean() - kernels[:n, n:].mean()
            - kernels[n:, :n].mean())


def mmd_samples(feat, ids, sigma):
    b, c = feat.shape[:2]
    return high_pass(feat, sigma).flatten(2)[:, :, ids].permute(0, 2, 1).reshape(-1, c)


def lsgan(pred, real):
    return ((pred - (1.0 if real else 0.0)) ** 2).mean()


# -- shared inputs -------------------------------------------------------------------------

class Stream:
    """The batches and random draws of every step, identical for both sides."""

    def __init__(self, cfg, data_dir):
        tr = cfg["data"]["train"]
        self.source = UnpairedDehaze(data_dir, tr.get("path", ""), tr["hazy_dir"],
                                     tr["clear_dir"], int(tr["crop"]), tr["scale"], tr["ratio"],
                                     bool(tr["hflip"]))
        self.batch = int(cfg["data"]["batch_size"])
        self.seed = int(cfg["seed"])
        self.nce, self.mmd = cfg["loss"]["nce"], cfg["loss"]["mmd"]
        self.crop = int(tr["crop"])

    def batch_at(self, step):
        rng = np.random.default_rng([self.seed, step, 11])
        order = np.random.default_rng([self.seed, step // len(self.source), 12]).permutation(
            len(self.source))
        samples = [self.source.load(int(order[(step * self.batch + j) % len(order)]), rng)
                   for j in range(self.batch)]
        return {k: np.stack([s[k] for s in samples]) for k in ("hazy", "clear")}

    def draws(self, step, sizes):
        rng = np.random.default_rng([self.seed, step, 13])
        p = int(min([int(self.nce["num_patches"])] + list(sizes)))
        patch_ids = np.stack([rng.permutation(s)[:p] for s in sizes]).astype(np.int32)
        a = float(self.nce["perturb"])
        shape = (len(sizes), self.batch, p, p)
        neg = (1.0 + rng.uniform(-a, a, size=shape)).astype(np.float32) if a > 0 \
            else np.ones(shape, np.float32)
        s = VGG_DOWNSCALE[self.mmd["layer"]]
        positions = (self.crop // s) ** 2
        n = min(int(self.mmd["num_samples"]), positions)
        mmd_ids = np.stack([rng.permutation(positions)[:n],
                            rng.permutation(positions)[:n]]).astype(np.int32)
        return patch_ids, neg, mmd_ids


def to_net(x):
    return (np.asarray(x, np.float32) * 2.0 - 1.0).astype(np.float32)


def from_net(y):
    return np.clip((np.asarray(y, np.float32) + 1.0) * 0.5, 0.0, 1.0)


def nce_accuracy(q, k):
    """(B, P, D) output/input patch embeddings → fraction of rows whose argmax is the diagonal."""
    logits = np.einsum("bpd,bqd->bpq", q, k)
    return float((logits.argmax(-1) == np.arange(q.shape[1])[None]).mean())


# -- the twin ------------------------------------------------------------------------------

class Twin:
    def __init__(self, cfg, seed, order="d_first"):
        torch.manual_seed(seed)
        net, loss = cfg["net"], cfg["loss"]
        self.cfg, self.loss, self.order = cfg, loss, order
        self.layers = tuple(int(i) for i in loss["nce"]["layers"])
        self.g = ResnetGenerator(int(net["generator"]["ngf"]), int(net["generator"]["n_blocks"]))
        self.d = NLayerDiscriminator(int(net["discriminator"]["ndf"]),
                                     int(net["discriminator"]["n_layers"]))
        self.head = PatchSampleF(self.g.channels(self.layers), int(loss["nce"]["mlp_dim"]))
        for m in (self.g, self.d, self.head):
            init_normal(m)
        per = loss["perceptual"]
        self.vgg_layers = list(per["layers"])
        if loss["mmd"]["layer"] not in self.vgg_layers:
            self.vgg_layers.append(loss["mmd"]["layer"])
        self.mmd_index = self.vgg_layers.index(loss["mmd"]["layer"])
        self.vgg = VGGFeatures(self.vgg_layers)
        self.w = {k: float(v) for k, v in loss["weights"].items()}
        steps = int(cfg["train"]["max_steps"])
        constant = int(cfg["schedule"]["constant_steps"])
        constant = steps // 2 if constant < 0 else constant

        def lr_at(t):   # the port's linear_decay_lr, as a multiplier of the base rate
            return 1.0 - max(0, t - constant + 1) / float(steps - constant + 1)

        def adam(params, o):
            opt = torch.optim.Adam(params, lr=float(o["lr"]),
                                   betas=(float(o["beta1"]), float(o["beta2"])))
            return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

        self.opt_g, self.sched_g = adam(list(self.g.parameters()) + list(self.head.parameters()),
                                        cfg["optim"]["g"])
        self.opt_d, self.sched_d = adam(self.d.parameters(), cfg["optim"]["d"])

    def feature_sizes(self, h, w):
        with torch.no_grad():
            feats = self.g(torch.zeros(1, 3, h, w), self.layers, encode_only=True)
        return [f.shape[2] * f.shape[3] for f in feats]

    def nce_loss(self, src, out, ids, neg):
        feat_k = self.g(src, self.layers, encode_only=True)
        feat_q = self.g(out, self.layers, encode_only=True)
        qs, ks = self.head(feat_q, ids), self.head(feat_k, ids)
        return sum(patch_nce(q, k, float(self.loss["nce"]["tau"]), neg[i])
                   for i, (q, k) in enumerate(zip(qs, ks))) / len(qs)

    def g_loss(self, hazy, clear, fake, ids, neg, mmd_ids):
        terms = {}
        terms["g_gan"] = self.w["gan"] * lsgan(self.d(fake), True)
        nce = self.nce_loss(hazy, fake, ids, neg)
        idt = None
        if self.loss["nce"].get("identity"):      # CUT's loss_NCE_both
            idt, _ = self.g(clear)
            nce = 0.5 * (nce + self.nce_loss(clear, idt, ids, neg))
        terms["nce"] = self.w["nce"] * nce
        if self.w.get("identity", 0.0) > 0:       # CycleGAN's identity: |G(clear) - clear|
            if idt is None:
                idt, _ = self.g(clear)
            terms["identity"] = self.w["identity"] * (idt - clear).abs().mean()
        out_f = self.vgg((fake + 1) * 0.5)
        with torch.no_grad():
            hazy_f = self.vgg((hazy + 1) * 0.5)
            clear_f = self.vgg((clear + 1) * 0.5)
        per = self.loss["perceptual"]
        terms["perceptual"] = self.w["perceptual"] * sum(
            float(wl) * ((out_f[i] - hazy_f[i]) ** 2).mean()
            for i, wl in enumerate(per["weights"]))
        m = self.loss["mmd"]
        sig = float(m["blur_sigma"])
        terms["mmd"] = self.w["mmd"] * mmd_rbf(
            mmd_samples(out_f[self.mmd_index], mmd_ids[0], sig),
            mmd_samples(clear_f[self.mmd_index], mmd_ids[1], sig),
            float(m["kernel_mul"]), int(m["kernel_num"]))
        return terms

    def d_step(self, clear, fake):
        self.opt_d.zero_grad()
        real_l, fake_l = lsgan(self.d(clear), True), lsgan(self.d(fake.detach()), False)
        (0.5 * (real_l + fake_l)).backward()
        self.opt_d.step()
        return {"d_real": float(real_l.detach()), "d_fake": float(fake_l.detach())}

    def train_step(self, batch, ids, neg, mmd_ids):
        hazy, clear = torch.from_numpy(to_net(batch["hazy"])), torch.from_numpy(
            to_net(batch["clear"]))
        ids = [torch.from_numpy(i.astype(np.int64)) for i in ids]
        neg = torch.from_numpy(neg)
        mmd_ids = torch.from_numpy(mmd_ids.astype(np.int64))
        fake, _ = self.g(hazy)
        out = {}
        if self.order == "d_first":      # CUT: D on this step's fake, then G against the new D
            out.update(self.d_step(clear, fake))
        for p in self.d.parameters():
            p.requires_grad_(False)
        self.opt_g.zero_grad()
        terms = self.g_loss(hazy, clear, fake, ids, neg, mmd_ids)
        sum(terms.values()).backward()
        self.opt_g.step()
        for p in self.d.parameters():
            p.requires_grad_(True)
        if self.order == "g_first":      # the port: G, then D on the G step's output
            out.update(self.d_step(clear, fake))
        self.sched_g.step()
        self.sched_d.step()
        out.update({k: float(v) for k, v in terms.items()})
        return out

    def predict(self, x):
        with torch.no_grad():
            return from_net(self.g(torch.from_numpy(to_net(x)))[0].numpy())

    def probe_nce(self, x, ids):
        with torch.no_grad():
            src = torch.from_numpy(to_net(x))
            out, feat_k = self.g(src, self.layers)
            feat_q = self.g(out, self.layers, encode_only=True)
            ids = [torch.from_numpy(i.astype(np.int64)) for i in ids]
            return [nce_accuracy(q.numpy(), k.numpy())
                    for q, k in zip(self.head(feat_q, ids), self.head(feat_k, ids))]

    def state(self):
        """name → array for G, D, head and VGG, under the port's cell names."""
        out = {}
        for prefix, m in (("g", self.g), ("d", self.d), ("head", self.head), ("vgg", self.vgg)):
            for name, t in m.state_dict().items():
                if name not in ("mean", "std"):
                    out[(prefix, name)] = t.detach().numpy().copy()
        return out


# -- the port, driven step by step ---------------------------------------------------------

class Port:
    def __init__(self, cfg, data_dir, out_dir, init_state=None):
        import mindspore as ms

        from src.recipes.base import RecipeContext, get_recipe

        ms.set_seed(int(cfg["seed"]))
        self.ms = ms
        self.recipe = get_recipe("singan_dehaze")(cfg, RecipeContext(data_dir=data_dir,
                                                                     output_dir=out_dir))
        self.recipe.build()
        self.layers = self.recipe.nce_layers
        if init_state is not None:
            self.load(init_state)

    def cells(self):
        r = self.recipe
        return {"g": r.g, "d": r.d, "head": r.head, "vgg": r.vgg}

    def load(self, state):
        """Copy the twin's initial weights in (same layer names; ConvTranspose and Dense
        weights have the same layouts in both frameworks)."""
        missing = []
        for prefix, cell in self.cells().items():
            for name, p in cell.parameters_and_names():
                key = (prefix, name)
                if key not in state:
                    missing.append("%s.%s" % key)
                    continue
                value = state[key]
                if tuple(value.shape) != tuple(p.shape):
                    raise SystemExit("shape mismatch %s: %s vs %s" % (key, value.shape, p.shape))
                p.set_data(self.ms.Tensor(value))
        if missing:
            raise SystemExit("port parameters the twin lacks: %s" % ", ".join(missing[:8]))

    def feature_sizes(self, h, w):
        return [a * b for a, b in self.recipe.g.feature_sizes(self.layers, h, w)]

    def train_step(self, batch, ids, neg, mmd_ids):
        r = self.recipe
        hazy, clear = to_net(batch["hazy"]), to_net(batch["clear"])
        g_total, g_gan, nce, idt, per, mmd, fake = r.step_g(hazy, clear, ids, neg, mmd_ids)
        d_total, d_real, d_fake = r.step_d(clear, fake)
        out = {"g_gan": g_gan, "nce": nce, "identity": idt, "perceptual": per, "mmd": mmd,
               "d_real": d_real, "d_fake": d_fake}
        out = {k: float(v.asnumpy()) for k, v in out.items()}
        return out

    def predict(self, x):
        return self.recipe.predict(x)

    def probe_nce(self, x, ids):
        ms, r = self.ms, self.recipe
        src = ms.Tensor(to_net(x))
        out, feat_k = r.g.forward_features(src, self.layers)
        feat_q = r.g.encode_layers(out, self.layers)
        idt = ms.Tensor(ids)
        qs, ks = r.head(feat_q, idt), r.head(feat_k, idt)
        return [nce_accuracy(q.asnumpy(), k.asnumpy()) for q, k in zip(qs, ks)]


# -- the comparison ------------------------------------------------------------------------

def test_set(cfg, data_dir):
    val = cfg["data"]["val"]
    pairs = PairedDehaze(data_dir, val["path"], layout=val.get("layout", "auto"), mode="eval")
    hazy, clear = [], []
    for i in range(len(pairs)):
        s = pairs.load(i, np.random.default_rng(0))
        hazy.append(s["input"])
        clear.append(s["target"])
    return np.stack(hazy), np.stack(clear)


def scores(pred, clear):
    """(mean PSNR, mean SSIM, SSIM per image)."""
    pairs = [(to_hwc(p), to_hwc(c)) for p, c in zip(pred, clear)]
    each = [ssim(p, c) for p, c in pairs]
    return float(np.mean([psnr(p, c) for p, c in pairs])), float(np.mean(each)), each


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/singan_dehaze_demo.yaml")
    ap.add_argument("--data", required=True, help="folder with trainA/ trainB/ test/")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=0, help="0: the config's train.max_steps")
    ap.add_argument("--probe", default="0,50,100,200,400")
    ap.add_argument("--side", choices=("twin", "port", "both"), default="both")
    ap.add_argument("--order", choices=("d_first", "g_first"), default="d_first")
    ap.add_argument("--same-init", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args(argv)

    cfg = load_config(os.path.join(ROOT, args.config) if not os.path.isabs(args.config)
                      else args.config, list(args.overrides))
    if args.steps:
        cfg["train"]["max_steps"] = args.steps
    steps = int(cfg["train"]["max_steps"])
    probes = sorted({int(p) for p in args.probe.split(",") if int(p) <= steps})
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1)))
    stream = Stream(cfg, args.data)
    hazy_t, clear_t = test_set(cfg, args.data)

    sides = {}
    if args.side in ("twin", "both"):
        sides["twin"] = Twin(cfg, int(cfg["seed"]), args.order)
    if args.side in ("port", "both"):
        init = sides["twin"].state() if args.same_init and "twin" in sides else None
        sides["port"] = Port(cfg, args.data, os.path.join(args.out, "port"), init)
    first = next(iter(sides.values()))
    crop = stream.crop
    sizes = first.feature_sizes(crop, crop)
    probe_ids, _, _ = stream.draws(10 ** 6, first.feature_sizes(*hazy_t.shape[2:]))

    hp, hs, h_each = scores(hazy_t, clear_t)
    print("hazy input: PSNR %.2f SSIM %.3f (%s)" % (hp, hs, "/".join("%.3f" % v for v in h_each)),
          flush=True)
    rows = []
    sums = {name: {k: 0.0 for k in TERMS} for name in sides}
    count, times = 0, {name: 0.0 for name in sides}
    for step in range(steps + 1):
        if step in probes:
            preds = {}
            for name, side in sides.items():
                preds[name] = side.predict(hazy_t)
                acc = side.probe_nce(hazy_t, probe_ids)
                p, s, each = scores(preds[name], clear_t)
                mean = {k: v / max(count, 1) for k, v in sums[name].items()}
                rows.append((step, name, mean, acc, p, s, times[name] / max(count, 1)))
                print("step %4d %-4s %s | nce_acc %s | psnr %.2f ssim %.3f (%s) | %.2f s/step"
                      % (step, name, " ".join("%s %.4g" % kv for kv in mean.items()),
                         "/".join("%.2f" % a for a in acc), p, s, "/".join("%.3f" % v for v in each),
                         times[name] / max(count, 1)), flush=True)
                sums[name] = {k: 0.0 for k in TERMS}
                times[name] = 0.0
            count = 0
            cols = [hazy_t] + [preds[n] for n in sides] + [clear_t]
            grid = make_grid([make_grid([to_hwc(c[i]) for c in cols], gap=2)
                              for i in range(len(hazy_t))], gap=4)
            save_png(os.path.join(args.out, "grid_step%04d.png" % step), grid)
        if step == steps:
            break
        batch = stream.batch_at(step)
        ids, neg, mmd_ids = stream.draws(step, sizes)
        for name, side in sides.items():
            t0 = time.time()
            terms = side.train_step(batch, ids, neg, mmd_ids)
            times[name] += time.time() - t0
            for k in TERMS:
                sums[name][k] += terms.get(k, 0.0)
        count += 1

    lines = ["hazy input: PSNR %.2f SSIM %.3f (test set, %d images)" % (hp, hs, len(hazy_t)),
             "", "| step | side | " + " | ".join(TERMS) + " | NCE acc (per layer) | PSNR | SSIM |",
             "|" + "---|" * (len(TERMS) + 5)]
    for step, name, mean, acc, p, s, _ in rows:
        lines.append("| %d | %s | %s | %s | %.2f | %.3f |" % (
            step, name, " | ".join("%.4g" % mean[k] for k in TERMS),
            "/".join("%.2f" % a for a in acc), p, s))
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
