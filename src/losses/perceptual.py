"""Perceptual (feature) distance: Σ_l w_l · d(φ_l(a), φ_l(b)) over frozen VGG feature maps.

SinGAN-Dehaze's global content term compares the dehazed output with its own hazy input on
VGG16 relu1_2 / relu2_2 / relu3_3. The thesis weights the layers 1, ½, ¼; the code it comes
from (the dehazing `LossNetwork`) averages per-layer MSEs, i.e. weights ⅓ each — both are a
`weights` setting. The features are computed by the caller (the recipe runs VGG once on the
output and reuses those features for the MMD term); the second argument is the reference and
carries no gradient."""
from __future__ import annotations

from typing import Sequence

from mindspore import nn, ops

from src.registry import LOSSES

CRITERIA = ("mse", "l1")


@LOSSES.register
class PerceptualLoss(nn.Cell):
    """construct(feats, ref_feats): tuples of feature maps, one per layer, same order as
    `weights` → scalar."""

    def __init__(self, weights: Sequence[float] = (1.0 / 3, 1.0 / 3, 1.0 / 3),
                 criterion: str = "mse"):
        super().__init__()
        if criterion not in CRITERIA:
            raise ValueError("perceptual criterion must be one of %s, got %r"
                             % (", ".join(CRITERIA), criterion))
        self.weights = tuple(float(w) for w in weights)
        if not self.weights:
            raise ValueError("perceptual loss needs at least one layer weight")
        self.criterion = criterion

    def construct(self, feats, ref_feats):
        total = 0.0
        for i in range(len(self.weights)):
            diff = feats[i] - ops.stop_gradient(ref_feats[i])
            if self.criterion == "mse":
                dist = (diff * diff).mean()
            else:
                dist = ops.abs(diff).mean()
            total = total + self.weights[i] * dist
        return total
