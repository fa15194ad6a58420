"""AECR-Net's contrastive regularisation (CR) and its total loss L1 + λ·CR.

CR (the authors' models/CR.py): over frozen VGG19 features relu1_1, relu2_1, relu3_1, relu4_1,
relu5_1 with weights 1/32, 1/16, 1/8, 1/4, 1,

    CR = Σ_i w_i · L1(φ_i(a), φ_i(p)) / (mean_n L1(φ_i(a), φ_i(n)) + 1e-7)

anchor a = the restored image, positive p = the clear image, negatives n = the hazy input
(always, sample by sample, as in the official PyTorch release) plus, with `neg_num` > 0, that
many other hazy images of the batch, picked as the authors' MindSpore release does: the batch
reversed along its first axis, first `neg_num` images, each compared with every anchor. L1 is a
mean absolute difference. Positive and negative features carry no gradient.

The official Vgg19 feeds the [0, 1] image to VGG without ImageNet normalisation; `vgg_normalize`
(default False) keeps that.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

from mindspore import nn, ops

from src.errors import UserError
from src.nets.vgg import VGGFeatures
from src.registry import LOSSES

logger = logging.getLogger(__name__)

CR_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CR_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


@LOSSES.register
class ContrastLoss(nn.Cell):
    """construct(anchor, positive, hazy) → scalar CR. `vgg` defaults to a frozen VGG19 over
    CR_LAYERS loaded from `vgg_weights` (None/'' → random init, loudly). ablation=True drops the
    negatives (the paper's "w/o negatives" ablation: CR = Σ w_i L1(a, p))."""

    def __init__(self, vgg: Optional[nn.Cell] = None, weights: Sequence[float] = CR_WEIGHTS,
                 neg_num: int = 0, ablation: bool = False, vgg_weights: Optional[str] = None,
                 vgg_normalize: bool = False):
        super().__init__()
        if vgg is None:
            vgg = VGGFeatures("vgg19", CR_LAYERS, weights=vgg_weights or None,
                              normalize=vgg_normalize)
        self.vgg = vgg
        self.weights = tuple(float(w) for w in weights)
        if int(neg_num) < 0:
            raise UserError("loss.neg_num must be >= 0, got %r" % (neg_num,))
        self.neg_num = int(neg_num)
        self.ablation = bool(ablation)

    def construct(self, anchor, positive, hazy):
        a_feats = self.vgg(anchor)
        p_feats = self.vgg(ops.stop_gradient(positive))
        n_feats = self.vgg(ops.stop_gradient(hazy))
        loss = 0.0
        for i in range(len(self.weights)):
            a = a_feats[i]
            d_ap = ops.abs(a - ops.stop_gradient(p_feats[i])).mean()
            if self.ablation:
                contrastive = d_ap
            else:
                n = ops.stop_gradient(n_feats[i])
                d_an = ops.abs(a - n).mean()
                if self.neg_num > 0:
                    b = n.shape[0]
                    for k in range(self.neg_num):
                        # k-th image of the batch reversed, against every anchor.
                        d_an = d_an + ops.abs(a - n[b - 1 - k:b - k]).mean()
                    d_an = d_an / (1 + self.neg_num)
                contrastive = d_ap / (d_an + 1e-7)
            loss = loss + self.weights[i] * contrastive
        return loss


@LOSSES.register
class AECRLoss(nn.Cell):
    """Total AECR-Net loss: l1_weight · L1(out, clear) + cr_weight · CR(out, clear, hazy).
    construct(out, clear, hazy) → (total, l1, cr). cr_weight 0 builds no VGG at all."""

    def __init__(self, l1_weight: float = 1.0, cr_weight: float = 0.1, neg_num: int = 0,
                 vgg_weights: Optional[str] = None, vgg_normalize: bool = False,
                 ablation: bool = False):
        super().__init__()
        self.l1_weight = float(l1_weight)
        self.cr_weight = float(cr_weight)
        self.cr = (ContrastLoss(neg_num=neg_num, ablation=ablation, vgg_weights=vgg_weights,
                                vgg_normalize=vgg_normalize) if self.cr_weight > 0 else None)

    @property
    def vgg_pretrained(self) -> Optional[bool]:
        """True/False for the CR VGG's weights; None when CR is off."""
        return None if self.cr is None else bool(self.cr.vgg.pretrained)

    def construct(self, out, clear, hazy):
        l1 = ops.abs(out - clear).mean()
        if self.cr is None:
            cr = ops.zeros((), l1.dtype)
        else:
            cr = self.cr(out, clear, hazy)
        total = self.l1_weight * l1 + self.cr_weight * cr
        return total, l1, cr
