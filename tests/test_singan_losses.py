"""SinGAN-Dehaze losses against plain numpy references (PatchNCE, MMD, perceptual, LSGAN)."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from src.losses.gan import GANLoss  # noqa: E402
from src.losses.mmd import HighPass, MMDLoss, gaussian_taps, mmd_rbf  # noqa: E402
from src.losses.patchnce import (PatchNCELoss, negative_perturbation,  # noqa: E402
                                 patch_nce_loss, sample_patch_ids)
from src.losses.perceptual import PerceptualLoss  # noqa: E402


def _unit(rng, *shape):
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def nce_reference(q, k, tau, scale=None):
    """CUT's PatchNCELoss written out in numpy: per image, positives on the diagonal of q·kᵀ,
    the diagonal of the negatives filled with −10, cross-entropy with target 0, mean."""
    losses = []
    for b in range(q.shape[0]):
        qb, kb = q[b].astype(np.float64), k[b].astype(np.float64)
        pos = np.sum(qb * kb, axis=1, keepdims=True)
        neg = qb @ kb.T
        if scale is not None:
            neg = neg * scale[b]
        np.fill_diagonal(neg, -10.0)
        logits = np.concatenate([pos, neg], axis=1) / tau
        top = logits.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        losses.append(lse - logits[:, 0])
    return float(np.mean(losses))


def mmd_reference(x, y, kernel_mul=2.0, kernel_num=5):
    x, y = x.astype(np.float64), y.astype(np.float64)
    total = np.concatenate([x, y])
    dist = ((total[:, None, :] - total[None, :, :]) ** 2).sum(-1)
    n = len(total)
    bw = dist.sum() / (n * n - n) / kernel_mul ** (kernel_num // 2)
    k = sum(np.exp(-dist / (bw * kernel_mul ** i)) for i in range(kernel_num))
    m = len(x)
    return k[:m, :m].mean() + k[m:, m:].mean() - k[:m, m:].mean() - k[m:, :m].mean()


def test_patchnce_matches_numpy_reference_without_perturbation():
    rng = np.random.default_rng(0)
    q, k = _unit(rng, 2, 16, 8), _unit(rng, 2, 16, 8)
    got = float(patch_nce_loss(ms.Tensor(q), ms.Tensor(k), 0.07).asnumpy())
    assert got == pytest.approx(nce_reference(q, k, 0.07), rel=1e-5)
    # Aligned keys (q = k) are easy positives: a much lower loss than random keys.
    easy = float(patch_nce_loss(ms.Tensor(q), ms.Tensor(q), 0.07).asnumpy())
    assert easy < got / 4


def test_patchnce_perturbation_scales_only_negatives():
    rng = np.random.default_rng(1)
    q, k = _unit(rng, 1, 12, 4), _unit(rng, 1, 12, 4)
    scale = negative_perturbation(rng, (1, 12, 12), 0.3)
    assert scale.dtype == np.float32 and 0.7 <= scale.min() and scale.max() <= 1.3
    got = float(patch_nce_loss(ms.Tensor(q), ms.Tensor(k), 0.07, ms.Tensor(scale)).asnumpy())
    assert got == pytest.approx(nce_reference(q, k, 0.07, scale), rel=1e-5)
    assert got != pytest.approx(nce_reference(q, k, 0.07), rel=1e-3)


def test_patchnce_cell_averages_layers_and_blocks_key_gradients():
    rng = np.random.default_rng(2)
    qs = [_unit(rng, 1, 8, 4) for _ in range(3)]
    ks = [_unit(rng, 1, 8, 4) for _ in range(3)]
    loss = PatchNCELoss(tau=0.1)
    got = float(loss(tuple(map(ms.Tensor, qs)), tuple(map(ms.Tensor, ks))).asnumpy())
    want = np.mean([nce_reference(q, k, 0.1) for q, k in zip(qs, ks)])
    assert got == pytest.approx(want, rel=1e-5)

    grad_q, grad_k = ms.grad(lambda a, b: patch_nce_loss(a, b, 0.07), grad_position=(0, 1))(
        ms.Tensor(qs[0]), ms.Tensor(ks[0]))
    assert np.abs(grad_q.asnumpy()).max() > 0
    assert np.abs(grad_k.asnumpy()).max() == 0      # keys are detached, as in CUT


def test_sample_patch_ids_share_one_count_across_layers():
    rng = np.random.default_rng(3)
    ids = sample_patch_ids(rng, [70 * 70, 32 * 32, 16 * 16], 256)
    assert ids.shape == (3, 256) and ids.dtype == np.int32
    assert all(len(set(row)) == 256 for row in ids)
    assert ids[2].max() < 256
    small = sample_patch_ids(rng, [100, 64], 256)
    assert small.shape == (2, 64)


def test_mmd_zero_for_identical_sets_positive_otherwise():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    y = (rng.standard_normal((32, 6)) * 2 + 1).astype(np.float32)
    assert float(mmd_rbf(ms.Tensor(x), ms.Tensor(x.copy())).asnumpy()) == pytest.approx(0, abs=1e-6)
    got = float(mmd_rbf(ms.Tensor(x), ms.Tensor(y)).asnumpy())
    assert got > 0.05
    assert got == pytest.approx(mmd_reference(x, y), rel=1e-4)
    # Every point identical: zero distances, still a finite 0 (bandwidth guard).
    same = np.ones((4, 3), np.float32)
    assert float(mmd_rbf(ms.Tensor(same), ms.Tensor(same)).asnumpy()) == 0.0


def test_mmd_loss_on_high_frequency_features():
    rng = np.random.default_rng(5)
    feat = rng.standard_normal((1, 4, 12, 12)).astype(np.float32)
    other = rng.standard_normal((1, 4, 12, 12)).astype(np.float32) * 3
    ids = np.arange(0, 144, 3).astype(np.int32)
    loss = MMDLoss(kernel_mul=2.0, kernel_num=5, blur_sigma=1.0)
    same = loss(ms.Tensor(feat), ms.Tensor(feat), ms.Tensor(ids), ms.Tensor(ids))
    assert float(same.asnumpy()) == pytest.approx(0, abs=1e-6)
    diff = loss(ms.Tensor(feat), ms.Tensor(other), ms.Tensor(ids), ms.Tensor(ids[::-1].copy()))
    assert float(diff.asnumpy()) > 0.01
    # Flat regions have no high frequency: a constant map high-passes to 0 (reflect padding).
    flat = np.full((1, 2, 9, 9), 0.7, np.float32)
    assert np.abs(HighPass(1.0)(ms.Tensor(flat)).asnumpy()).max() < 1e-6
    taps = gaussian_taps(1.0)
    assert len(taps) == 7 and taps.sum() == pytest.approx(1.0)


def test_perceptual_weights_and_criteria():
    rng = np.random.default_rng(6)
    a = [rng.standard_normal((1, 2, 4, 4)).astype(np.float32) for _ in range(2)]
    b = [rng.standard_normal((1, 2, 4, 4)).astype(np.float32) for _ in range(2)]
    ta, tb = tuple(map(ms.Tensor, a)), tuple(map(ms.Tensor, b))
    mse = float(PerceptualLoss((1.0, 0.5), "mse")(ta, tb).asnumpy())
    assert mse == pytest.approx(np.mean((a[0] - b[0]) ** 2) + 0.5 * np.mean((a[1] - b[1]) ** 2),
                                rel=1e-5)
    l1 = float(PerceptualLoss((1.0, 0.5), "l1")(ta, tb).asnumpy())
    assert l1 == pytest.approx(np.mean(np.abs(a[0] - b[0])) + 0.5 * np.mean(np.abs(a[1] - b[1])),
                               rel=1e-5)
    with pytest.raises(ValueError):
        PerceptualLoss((1.0,), "l3")


def test_lsgan_targets():
    pred = np.array([[[[0.2, 0.9], [1.0, -0.5]]]], np.float32)
    gan = GANLoss("lsgan")
    assert float(gan(ms.Tensor(pred), True).asnumpy()) == pytest.approx(np.mean((pred - 1) ** 2))
    assert float(gan(ms.Tensor(pred), False).asnumpy()) == pytest.approx(np.mean(pred ** 2))
    total, real, fake = gan.discriminator(ms.Tensor(pred), ms.Tensor(-pred))
    assert float(total.asnumpy()) == pytest.approx(
        0.5 * (np.mean((pred - 1) ** 2) + np.mean(pred ** 2)))
    vanilla = float(GANLoss("vanilla")(ms.Tensor(pred), True).asnumpy())
    assert vanilla == pytest.approx(np.mean(np.log1p(np.exp(-pred))), rel=1e-5)
