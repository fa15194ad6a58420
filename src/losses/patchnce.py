"""PatchNCE (CUT, Park et al. 2020) with SinGAN-Dehaze's perturbed negatives.

For each sampled patch i of the output (query q_i) the positive is the patch at the same place
in the input (key k_i) and the negatives are the other P−1 input patches of the same image
(CUT's `nce_includes_all_negatives_from_minibatch=False`):

    loss_i = −log( exp(q_i·k_i/τ) / (exp(q_i·k_i/τ) + Σ_{j≠i} exp(s_ij · q_i·k_j/τ)) )

with s_ij = 1 + u_ij, u_ij ~ U(−a, a) (a = 0.3 in SinGAN-Dehaze; s = 1 is plain CUT). Keys carry
no gradient (CUT detaches them). The "self" negative j = i gets logit −10/τ, as in CUT's
masked_fill. The random factors come from the caller (host rng), so the graph stays static and
a run is reproducible from its seed."""
from __future__ import annotations

from typing import Optional

import numpy as np
from mindspore import nn, ops

from src.registry import LOSSES

SELF_LOGIT = -10.0        # CUT fills the diagonal with -10 before dividing by τ


def patch_nce_loss(feat_q, feat_k, tau: float, neg_scale=None):
    """feat_q, feat_k: (B, P, D), L2-normalised, row i of both at the same location.
    neg_scale: None, or (B, P, P) factors multiplying the negative logits. → scalar mean."""
    feat_k = ops.stop_gradient(feat_k)
    l_pos = (feat_q * feat_k).sum(axis=-1, keepdims=True)                  # (B, P, 1)
    l_neg = ops.BatchMatMul(transpose_b=True)(feat_q, feat_k)              # (B, P, P)
    if neg_scale is not None:
        l_neg = l_neg * neg_scale
    p = feat_q.shape[1]
    eye = ops.eye(p, p, feat_q.dtype)
    l_neg = l_neg * (1.0 - eye) + SELF_LOGIT * eye
    logits = ops.concat((l_pos, l_neg), axis=-1) / tau                    # (B, P, 1+P)
    # Cross-entropy with target class 0, in the max-shifted log-sum-exp form.
    peak = ops.stop_gradient(logits.max(axis=-1, keepdims=True))
    lse = ops.log(ops.exp(logits - peak).sum(axis=-1, keepdims=True)) + peak
    return (lse - logits[:, :, 0:1]).mean()


def negative_perturbation(rng: np.random.Generator, shape, amplitude: float) -> np.ndarray:
    """The (1 + u) factors, u ~ U(−amplitude, amplitude), as float32."""
    return (1.0 + rng.uniform(-amplitude, amplitude, size=shape)).astype(np.float32)


def sample_patch_ids(rng: np.random.Generator, sizes, num_patches: int) -> np.ndarray:
    """(L, P) int32 flat positions, one random subset per layer (CUT: a permutation, first P).
    P = min(num_patches, smallest H·W), so one array holds every layer's ids."""
    p = int(min([int(num_patches)] + [int(s) for s in sizes]))
    return np.stack([rng.permutation(int(s))[:p] for s in sizes]).astype(np.int32)


@LOSSES.register
class PatchNCELoss(nn.Cell):
    """Mean over layers of `patch_nce_loss`. construct(q_feats, k_feats, neg_scale=None):
    tuples of (B, P, D) per layer; neg_scale (L, B, P, P) or None."""

    def __init__(self, tau: float = 0.07):
        super().__init__()
        if not tau > 0:
            raise ValueError("PatchNCE temperature must be > 0, got %r" % (tau,))
        self.tau = float(tau)

    def construct(self, q_feats, k_feats, neg_scale: Optional[object] = None):
        total = 0.0
        for i in range(len(q_feats)):
            scale = None if neg_scale is None else neg_scale[i]
            total = total + patch_nce_loss(q_feats[i], k_feats[i], self.tau, scale)
        return total / len(q_feats)
