"""SinGAN-Dehaze ("Farewell to CycleGAN", Neurocomputing 2025): unpaired dehazing with one GAN.

One generator G (CUT ResNet, 9 blocks) maps hazy → clear; one PatchGAN D tells G's outputs
from unpaired clear photos. Instead of CycleGAN's second GAN and cycle loss, G is held to its
input by
  * PatchNCE (local content): G's own encoder features of output and input at layers
    0/4/8/12/16, 256 shared random positions per layer, an MLP head, InfoNCE with τ 0.07 and
    negatives' logits scaled by (1 + U(−0.3, 0.3)); with `loss.nce.identity` also CUT's
    identity term (`--nce_idt`): the same loss between G(clear) and the clear image, the two
    averaged, which keeps G from changing what needs no change;
  * a perceptual loss (global content) between the hazy input and the output on frozen VGG16
    relu1_2 / relu2_2 / relu3_3;
  * optionally (`loss.weights.identity`, 0 in the paper's configs) CycleGAN's identity loss
    mean|G(clear) − clear|: PatchNCE cannot see a colour remap (any one-to-one colour map keeps
    every patch its own best match), so without ImageNet VGG features only the GAN sets
    colours, and on a small clear set it sets them from other photos;
and pushed towards clear-image statistics by
  * LSGAN against D, and
  * MMD (style) between high-frequency VGG features (f − blur(f)) of the output and of the
    unpaired clear image of the same sample.
G loss = w_gan·GAN + w_nce·NCE + w_identity·identity + w_perceptual·perceptual + w_mmd·MMD;
D loss = ½(real + fake).

Which features feed MMD is not pinned down by the paper's text ("high-frequency features").
This port uses the frozen VGG16 (`loss.mmd.layer`, relu1_2 by default): its features mean the
same thing for output and clear image throughout training (G's encoder would be a moving
target, and would let G shrink the loss by changing its own features), relu1_2 is the
shallowest layer — full resolution, where haze's lost edge contrast lives — and the VGG pass on
the output is already paid for by the perceptual term.

One step = the G step then the D step, both from the shared `build_train_step`, each with its
own Adam (lr 2e-4, β 0.5/0.999) and per-step LR array (constant, then linear decay to zero as
CUT's 'linear' policy). The G optimizer holds G and the NCE head (CUT steps them with two Adams
of identical settings — the same update). D trains on the G step's output, which carries no
gradient back into G.

Images: sources give [0, 1]; `to_net` maps batches and prediction inputs to the nets' [−1, 1];
predict maps G's output back to [0, 1]. The exported MindIR is G alone, [−1, 1] in and out.
Random draws (patch positions, NCE perturbation, MMD positions) come from a host rng seeded by
(seed, step, shard), so a run is reproducible and a resumed run continues the same sequence.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from src.errors import UserError
from src.recipes.base import Recipe, register_recipe

log = logging.getLogger(__name__)

VGG_ARCH = "vgg16"
VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_3")
# VGG16 max-pools before blocks 2 and 3: relu<b>_* is at 1 / 2^(b-1) resolution.
VGG_DOWNSCALE = {"relu1_2": 1, "relu2_2": 2, "relu3_3": 4}
TERMS = ("g_total", "g_gan", "nce", "identity", "perceptual", "mmd", "d_total", "d_real",
         "d_fake")


def to_net(x: np.ndarray) -> np.ndarray:
    """[0, 1] images → the generator's [−1, 1]."""
    return (np.asarray(x, dtype=np.float32) * 2.0 - 1.0).astype(np.float32)


def from_net(y: np.ndarray) -> np.ndarray:
    """The generator's [−1, 1] → [0, 1] (clipped)."""
    return np.clip((np.asarray(y, dtype=np.float32) + 1.0) * 0.5, 0.0, 1.0)


def linear_decay_lr(base: float, total_steps: int, constant_steps: int) -> List[float]:
    """Per-step learning rates: `base` for `constant_steps`, then linear decay over the rest,
    as CUT's 'linear' policy per epoch: lr·(1 − k/(decay + 1)) at the k-th decayed step."""
    total = int(total_steps)
    constant = min(max(int(constant_steps), 0), total)
    decay = total - constant
    return [float(base) * (1.0 - max(0, t - constant + 1) / float(decay + 1))
            for t in range(total)]


def discriminator_output_side(side: int, n_layers: int) -> int:
    """Side of the PatchGAN's logit map for an input side (n_layers 4x4 stride-2 convs with
    padding 1, then two 4x4 stride-1 ones): 256 → 30 at n_layers 3."""
    for _ in range(int(n_layers)):
        side = (side + 2 - 4) // 2 + 1
    return side - 2


def min_discriminator_side(n_layers: int) -> int:
    """Smallest multiple of 4 the discriminator maps to at least one logit (24 at n_layers 3)."""
    side = 4
    while discriminator_output_side(side, n_layers) < 1:
        side += 4
    return side


#: The generator's two stride-2 convs need sides divisible by 4 (else its output has another
#: size than its input); its residual blocks reflect-pad by 1 at a quarter of the side, which
#: needs at least 2 pixels there.
G_MULTIPLE, G_MIN_SIDE = 4, 8


def check_model(checks) -> None:
    """Everything the recipe reads, as ranges and relations (types are the config schema's
    job), recorded on a `src.checks.Checks`."""
    from src.checks import is_int, is_number

    c = checks
    why = "the generator downsamples twice"
    if c.for_tasks("train", "eval", "export", "infer"):
        for name in ("gan", "nce", "perceptual", "mmd", "identity"):
            c.number("loss.weights.%s" % name, ge=0, note="0 turns the term off")
        layers = c.get("loss.nce.layers")
        c.require("loss.nce.layers",
                  isinstance(layers, list) and bool(layers)
                  and all(is_int(i) and i >= 0 for i in layers) and layers == sorted(set(layers)),
                  "strictly increasing generator layer indices >= 0, e.g. [0, 4, 8, 12, 16]")
        c.number("loss.nce.num_patches", ge=1, integer=True)
        c.number("loss.nce.tau", gt=0)
        c.number("loss.nce.perturb", ge=0, lt=1, note="0 = plain CUT negatives")
        c.number("loss.nce.mlp_dim", ge=1, integer=True)
        c.require("loss.nce.identity", isinstance(c.get("loss.nce.identity"), bool),
                  "true or false")
        per_layers = c.get("loss.perceptual.layers")
        if c.require("loss.perceptual.layers",
                     isinstance(per_layers, list) and bool(per_layers)
                     and all(name in VGG_LAYERS for name in per_layers),
                     "a list from %s" % ", ".join(VGG_LAYERS)):
            weights = c.get("loss.perceptual.weights")
            c.require("loss.perceptual.weights",
                      isinstance(weights, list) and len(weights) == len(per_layers)
                      and all(is_number(w) and w >= 0 for w in weights),
                      "one weight >= 0 per layer of loss.perceptual.layers")
        c.require("loss.perceptual.criterion", c.get("loss.perceptual.criterion")
                  in ("mse", "l1"), "mse or l1")
        c.require("loss.gan_mode", c.get("loss.gan_mode") in ("lsgan", "vanilla"),
                  "lsgan (SinGAN-Dehaze) or vanilla")
        c.require("loss.mmd.layer", c.get("loss.mmd.layer") in VGG_LAYERS,
                  "one of %s" % ", ".join(VGG_LAYERS))
        c.number("loss.mmd.num_samples", ge=2, integer=True)
        c.number("loss.mmd.kernel_mul", gt=1)
        c.number("loss.mmd.kernel_num", ge=1, integer=True)
        c.number("loss.mmd.blur_sigma", gt=0)
        c.number("schedule.constant_steps", ge=-1, integer=True,
                 note="-1 = half of train.max_steps")
        c.multiple("eval.pad_multiple", G_MULTIPLE, why)
        if c.get("net.generator.type") == "ResnetGenerator":
            c.number("net.generator.ngf", ge=1, integer=True)
            c.number("net.generator.n_blocks", ge=0, integer=True)
        if c.get("net.discriminator.type") == "NLayerDiscriminator":
            c.number("net.discriminator.ndf", ge=1, integer=True)
            c.number("net.discriminator.n_layers", ge=1, integer=True)
    if c.for_tasks("train"):
        n_layers = c.get("net.discriminator.n_layers")
        n_layers = n_layers if is_int(n_layers) and n_layers >= 1 else 3
        c.multiple("data.train.crop", G_MULTIPLE, "%s, and the %d-layer PatchGAN needs >= %d"
                   % (why, n_layers, min_discriminator_side(n_layers)),
                   minimum=max(G_MIN_SIDE, min_discriminator_side(n_layers)))
    if c.exporting:
        c.multiple("export.height", G_MULTIPLE, why, minimum=G_MIN_SIDE)
        c.multiple("export.width", G_MULTIPLE, why, minimum=G_MIN_SIDE)
    if c.for_tasks("synth"):
        c.number("synth.num_hazy", ge=1, integer=True)
        c.number("synth.num_clear", ge=1, integer=True)
        c.number("synth.num_test", ge=0, integer=True)
        c.number("synth.height", ge=8, integer=True)
        c.number("synth.width", ge=8, integer=True)


def validate_config(cfg: dict) -> None:
    """check_model for a training run, raising one UserError that lists every problem."""
    from src.checks import Checks, check_optimizers

    checks = Checks(cfg, "train")
    check_model(checks)
    check_optimizers(checks)
    checks.raise_if_any()


def _build_objectives():
    """The G and D loss cells (defined on first use: this module imports without MindSpore)."""
    from mindspore import nn, ops

    class GeneratorObjective(nn.Cell):
        """construct(hazy, clear, patch_ids, neg_scale, mmd_ids) →
        (g_total, g_gan, nce, identity, perceptual, mmd, fake); the terms are weighted (they
        sum to g_total). Images in [−1, 1]."""

        def __init__(self, g, d, head, vgg, gan, nce, perceptual, mmd, nce_layers,
                     n_perceptual, mmd_index, weights, identity=False):
            super().__init__(auto_prefix=False)   # keep the nets' own parameter names
            self.g, self.d, self.head, self.vgg = g, d, head, vgg
            self.gan, self.nce, self.perceptual, self.mmd = gan, nce, perceptual, mmd
            self.nce_layers = tuple(nce_layers)
            self.n_perceptual = int(n_perceptual)
            self.mmd_index = int(mmd_index)
            self.w_gan = float(weights["gan"])
            self.w_nce = float(weights["nce"])
            self.w_perceptual = float(weights["perceptual"])
            self.w_mmd = float(weights["mmd"])
            self.w_identity = float(weights["identity"])
            self.identity = bool(identity)

        def construct(self, hazy, clear, patch_ids, neg_scale, mmd_ids):
            zero = ops.zeros((), hazy.dtype)
            # One pass gives the output and the input's NCE features (CUT runs the encoder on
            # the input separately; the features are the same, and the keys carry no gradient).
            fake, feats_k = self.g.forward_features(hazy, self.nce_layers)
            g_gan = zero
            if self.w_gan > 0:
                g_gan = self.w_gan * self.gan(self.d(fake), True)
            nce = zero
            nce_identity = self.w_nce > 0 and self.identity
            # G(clear) feeds both identity terms; unused placeholders when neither is on (graph
            # mode wants one type per variable).
            idt, feats_ck = fake, feats_k
            if nce_identity or self.w_identity > 0:
                idt, feats_ck = self.g.forward_features(clear, self.nce_layers)
            if self.w_nce > 0:
                feats_q = self.g.encode_layers(fake, self.nce_layers)
                nce = self.nce(self.head(feats_q, patch_ids), self.head(feats_k, patch_ids),
                               neg_scale)
                if nce_identity:
                    # CUT's loss_NCE_both: ½(NCE(hazy, G(hazy)) + NCE(clear, G(clear))), at the
                    # same positions.
                    feats_iq = self.g.encode_layers(idt, self.nce_layers)
                    nce = 0.5 * (nce + self.nce(self.head(feats_iq, patch_ids),
                                                self.head(feats_ck, patch_ids), neg_scale))
                nce = self.w_nce * nce
            identity = zero
            if self.w_identity > 0:
                # CycleGAN's identity loss: a clear image needs no change. It pins colours and
                # brightness, which PatchNCE (blind to a colour remap) leaves to the GAN.
                identity = self.w_identity * ops.mean(ops.abs(idt - clear))
            perceptual = zero
            mmd = zero
            if self.w_perceptual > 0 or self.w_mmd > 0:
                # VGG takes [0, 1]; the references (hazy input, clear image) carry no gradient.
                out_feats = self.vgg((fake + 1.0) * 0.5)
                refs = ops.stop_gradient((ops.concat((hazy, clear), axis=0) + 1.0) * 0.5)
                ref_feats = self.vgg(refs)
                b = hazy.shape[0]
                if self.w_perceptual > 0:
                    hazy_feats = ()
                    for i in range(self.n_perceptual):
                        hazy_feats = hazy_feats + (ref_feats[i][:b],)
                    perceptual = self.w_perceptual * self.perceptual(out_feats, hazy_feats)
                if self.w_mmd > 0:
                    clear_feat = ref_feats[self.mmd_index][b:]
                    mmd = self.w_mmd * self.mmd(out_feats[self.mmd_index], clear_feat,
                                                mmd_ids[0], mmd_ids[1])
            total = g_gan + nce + identity + perceptual + mmd
            return total, g_gan, nce, identity, perceptual, mmd, fake

    class DiscriminatorObjective(nn.Cell):
        """construct(clear, fake) → (d_total, d_real, d_fake), d_total = ½(real + fake)."""

        def __init__(self, d, gan):
            super().__init__(auto_prefix=False)
            self.d, self.gan = d, gan

        def construct(self, clear, fake):
            return self.gan.discriminator(self.d(clear), self.d(ops.stop_gradient(fake)))

    return GeneratorObjective, DiscriminatorObjective


@register_recipe
class SinGANDehazeRecipe(Recipe):
    name = "singan_dehaze"
    WEIGHT_KEYS = ("loss.vgg_weights",)  # read by build() below

    def __init__(self, cfg: dict, ctx):
        super().__init__(cfg, ctx)
        validate_config(cfg)
        self.nce_layers = tuple(int(i) for i in cfg["loss"]["nce"]["layers"])
        per = cfg["loss"]["perceptual"]
        self.vgg_layers = list(per["layers"])
        mmd_layer = cfg["loss"]["mmd"]["layer"]
        if mmd_layer not in self.vgg_layers:
            self.vgg_layers.append(mmd_layer)
        self.mmd_index = self.vgg_layers.index(mmd_layer)
        self._host_step: Optional[int] = None
        self._ones: Dict[tuple, np.ndarray] = {}
        self.g = self.d = None
        self.built = False

    # -- model ----------------------------------------------------------------------------

    def build(self) -> None:

        from src.engine.step import adam as adam_optimizer
        from src.engine.step import build_train_step, prefix_parameter_names
        from src.losses.gan import GANLoss
        from src.losses.mmd import MMDLoss
        from src.losses.patchnce import PatchNCELoss
        from src.losses.perceptual import PerceptualLoss
        from src.nets.resnet_gan import PatchSampleMLP
        from src.nets.vgg import VGGFeatures
        from src.registry import NETS

        cfg, loss = self.cfg, self.cfg["loss"]
        self.g = NETS.build(cfg["net"]["generator"], "net.generator")
        if self.ctx.task != "train":
            # Evaluating, exporting and restoring photos run the generator only: no D, NCE
            # head, VGG16 (nor its weights file) or optimizers. A checkpoint's other cells
            # are left unread.
            prefix_parameter_names({"g": self.g})
            self.built = True
            return
        self.d = NETS.build(cfg["net"]["discriminator"], "net.discriminator")
        try:
            channels = self.g.feature_channels(self.nce_layers)
        except ValueError as exc:
            raise UserError("config loss.nce.layers = %r: %s" % (list(self.nce_layers), exc)) \
                from None
        self.head = PatchSampleMLP(channels, nc=int(loss["nce"]["mlp_dim"]))
        self.vgg_weights = loss["vgg_weights"] or ""
        self.vgg = VGGFeatures(VGG_ARCH, self.vgg_layers, weights=self.vgg_weights or None,
                               normalize=True)
        # One graph runs G, D, the head and VGG: their parameter names must be unique.
        prefix_parameter_names({"g": self.g, "d": self.d, "head": self.head, "vgg": self.vgg})

        max_steps = int(cfg["train"]["max_steps"])
        constant = int(cfg["schedule"]["constant_steps"])
        if constant < 0:
            constant = max_steps // 2
        self.constant_steps = constant

        def adam(params, o):
            return adam_optimizer(params, learning_rate=linear_decay_lr(float(o["lr"]),
                                                                        max_steps, constant),
                                  beta1=float(o["beta1"]), beta2=float(o["beta2"]))

        self.opt_g = adam(self.g.trainable_params() + self.head.trainable_params(),
                          cfg["optim"]["g"])
        self.opt_d = adam(self.d.trainable_params(), cfg["optim"]["d"])

        gan = GANLoss(loss["gan_mode"])
        per = loss["perceptual"]
        mmd = loss["mmd"]
        GeneratorObjective, DiscriminatorObjective = _build_objectives()
        self.g_objective = GeneratorObjective(
            self.g, self.d, self.head, self.vgg, gan, PatchNCELoss(float(loss["nce"]["tau"])),
            PerceptualLoss(per["weights"], per["criterion"]),
            MMDLoss(float(mmd["kernel_mul"]), int(mmd["kernel_num"]), float(mmd["blur_sigma"])),
            self.nce_layers, len(per["layers"]), self.mmd_index, loss["weights"],
            identity=bool(loss["nce"]["identity"]))
        self.d_objective = DiscriminatorObjective(self.d, gan)
        train = cfg["train"]
        common = dict(distributed=self.ctx.distributed, loss_scale=train["loss_scale"],
                      jit=bool(train["jit"]))
        # The same builder twice: G (+ head) first, then D on the G step's (detached) output.
        self.step_g = build_train_step(self.g_objective, self.opt_g, **common)
        self.step_d = build_train_step(self.d_objective, self.opt_d, **common)
        self.built = True

    # -- training -------------------------------------------------------------------------

    def _rng(self) -> np.random.Generator:
        if self._host_step is None:
            # After a resume the optimizer's restored step says where the sequence continues.
            self._host_step = int(self.opt_g.global_step.asnumpy().reshape(-1)[0])
        seq = np.random.SeedSequence([int(self.cfg["seed"]), self._host_step,
                                      int(self.ctx.shard_id), 0x5174])
        self._host_step += 1
        return np.random.default_rng(seq)

    def random_draws(self, rng: np.random.Generator, batch: int, height: int, width: int
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(patch_ids (L, P), neg_scale (L, B, P, P), mmd_ids (2, N)) for one step."""
        from src.losses.patchnce import negative_perturbation, sample_patch_ids

        nce, mmd = self.cfg["loss"]["nce"], self.cfg["loss"]["mmd"]
        sizes = [h * w for h, w in self.g.feature_sizes(self.nce_layers, height, width)]
        patch_ids = sample_patch_ids(rng, sizes, int(nce["num_patches"]))
        shape = (len(self.nce_layers), batch, patch_ids.shape[1], patch_ids.shape[1])
        amplitude = float(nce["perturb"])
        if amplitude > 0:
            neg_scale = negative_perturbation(rng, shape, amplitude)
        else:
            if shape not in self._ones:
                self._ones[shape] = np.ones(shape, np.float32)
            neg_scale = self._ones[shape]
        s = VGG_DOWNSCALE[mmd["layer"]]
        positions = (height // s) * (width // s)
        n = min(int(mmd["num_samples"]), positions)
        mmd_ids = np.stack([rng.permutation(positions)[:n],
                            rng.permutation(positions)[:n]]).astype(np.int32)
        return patch_ids, neg_scale, mmd_ids

    def train_step(self, batch: Dict[str, np.ndarray]) -> dict:
        hazy, clear = to_net(batch["hazy"]), to_net(batch["clear"])
        b, _, h, w = hazy.shape
        patch_ids, neg_scale, mmd_ids = self.random_draws(self._rng(), b, h, w)
        g_total, g_gan, nce, identity, perceptual, mmd, fake = self.step_g(
            hazy, clear, patch_ids, neg_scale, mmd_ids)
        d_total, d_real, d_fake = self.step_d(clear, fake)
        return {"g_total": g_total, "g_gan": g_gan, "nce": nce, "identity": identity,
                "perceptual": perceptual, "mmd": mmd, "d_total": d_total, "d_real": d_real,
                "d_fake": d_fake}

    # -- inference, checkpoints, export ----------------------------------------------------

    def predict(self, x: np.ndarray) -> np.ndarray:
        return from_net(self.infer(self.g, to_net(x)))

    def net_input(self, x: np.ndarray) -> np.ndarray:
        return to_net(x)

    def net_output(self, y: np.ndarray) -> np.ndarray:
        return from_net(y)

    def checkpoint_cells(self) -> dict:
        if self.d is None:  # built for eval / export / infer: the generator alone
            return {"g": self.g}
        return {"g": self.g, "d": self.d, "head": self.head, "opt_g": self.opt_g,
                "opt_d": self.opt_d}

    def export_cell(self):
        exp = self.cfg["export"]
        rng = np.random.default_rng(int(self.cfg["seed"]))
        example = rng.uniform(-1.0, 1.0, (1, 3, int(exp["height"]), int(exp["width"])))
        return self.g, [example.astype(np.float32)]

    def describe(self) -> dict:
        from src.nets.resnet_gan import count_parameters

        info = {"model": self.name, "nce_layers": list(self.nce_layers),
                "vgg_layers": self.vgg_layers,
                "value_range": "nets see [-1, 1]; predict maps [0, 1] -> [-1, 1] -> [0, 1]; "
                               "the exported generator takes and returns [-1, 1]"}
        if not self.built:
            return info
        info["generator_parameters"] = count_parameters(self.g)
        if self.d is None:
            info["vgg_weights"] = "not built (task %s: no loss)" % self.ctx.task
        else:
            info.update({
                "discriminator_parameters": count_parameters(self.d),
                "nce_head_parameters": count_parameters(self.head),
                "lr_constant_steps": self.constant_steps,
                "vgg_weights": (self.vgg_weights if self.vgg.pretrained
                                else "NONE: random init (perceptual and MMD terms are not the "
                                     "paper's)"),
            })
        return info

    # -- synthetic data -------------------------------------------------------------------

    @classmethod
    def check_config(cls, checks) -> None:
        check_model(checks)

    @classmethod
    def synthesize(cls, cfg: dict, out_dir: str) -> dict:
        from src.data.synth_haze import write_unpaired

        s = cfg["synth"]
        started = time.time()
        os.makedirs(out_dir, exist_ok=True)
        summary = write_unpaired(out_dir, num_hazy=int(s["num_hazy"]),
                                 num_clear=int(s["num_clear"]), num_test=int(s["num_test"]),
                                 height=int(s["height"]), width=int(s["width"]),
                                 seed=int(s["seed"]), photos=bool(s["photos"]),
                                 procedural=bool(s["procedural"]),
                                 test_split=str(s["test_split"]))
        summary["seconds"] = round(time.time() - started, 2)
        return summary

