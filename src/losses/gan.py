"""Adversarial losses on PatchGAN logit maps (CUT's GANLoss, 'lsgan' and 'vanilla').

lsgan (SinGAN-Dehaze): mean((D(x) − label)²), label 1 for real, 0 for fake.
vanilla: binary cross-entropy on logits. The discriminator loss is ½(real + fake), the
generator's the 'real' loss on its fakes."""
from __future__ import annotations

from mindspore import nn, ops

from src.registry import LOSSES

GAN_MODES = ("lsgan", "vanilla")


def gan_loss(pred, target_is_real: bool, mode: str = "lsgan"):
    label = 1.0 if target_is_real else 0.0
    if mode == "lsgan":
        diff = pred - label
        return (diff * diff).mean()
    if mode == "vanilla":
        # log(1 + e^-|x|) + max(x, 0) − x·y: BCE-with-logits without overflow.
        return (ops.relu(pred) - pred * label + ops.log(1.0 + ops.exp(-ops.abs(pred)))).mean()
    raise ValueError("unknown GAN mode %r (known: %s)" % (mode, ", ".join(GAN_MODES)))


@LOSSES.register
class GANLoss(nn.Cell):
    """construct(pred, target_is_real) → scalar. `target_is_real` is a Python bool."""

    def __init__(self, mode: str = "lsgan"):
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError("unknown GAN mode %r (known: %s)" % (mode, ", ".join(GAN_MODES)))
        self.mode = mode

    def construct(self, pred, target_is_real: bool):
        return gan_loss(pred, target_is_real, self.mode)

    def discriminator(self, pred_real, pred_fake):
        """(total, real, fake) with total = ½(real + fake)."""
        real = gan_loss(pred_real, True, self.mode)
        fake = gan_loss(pred_fake, False, self.mode)
        return 0.5 * (real + fake), real, fake
