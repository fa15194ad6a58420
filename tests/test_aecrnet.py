"""AECR-Net port: shapes, FastDeconv / DCN / ConvTranspose / CR against independent float64
numpy references, and a short recipe run that must lower the loss."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import nn, ops  # noqa: E402

from src.nets.aecrnet import (  # noqa: E402
    AECRNet, ConvTranspose2d, FastDeconv, ModulatedDeformConv2d, count_parameters)


pytestmark = pytest.mark.usefixtures("pynative_mode")


DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "aecrnet_demo.yaml")


def T(a):
    return ms.Tensor(np.ascontiguousarray(a, dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# float64 references written from the authors' PyTorch code (unfold / DCNv2 CUDA kernel)


def np_conv2d(x, w, b, pad):
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i:i + ho, j:j + wo]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + b.reshape(1, -1, 1, 1)


def np_unfold(x, k, pad, stride):
    """torch.nn.functional.unfold(...).transpose(1, 2).reshape(-1, C*k*k), by loops."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    lh = (h + 2 * pad - k) // stride + 1
    lw = (w + 2 * pad - k) // stride + 1
    rows = []
    for b in range(n):
        for r in range(lh):
            for q in range(lw):
                rows.append(xp[b, :, r * stride:r * stride + k, q * stride:q * stride + k].reshape(-1))
    return np.array(rows)


def np_isqrt(a, iters):
    norm = np.linalg.norm(a)
    y = a / norm
    eye = np.eye(a.shape[0])
    z = np.eye(a.shape[0])
    for _ in range(iters):
        t = 0.5 * (3.0 * eye - z @ y)
        y = y @ t
        z = t @ z
    return z / np.sqrt(norm)


def np_fastdeconv(x, weight, bias, mean=None, deconv=None, eps=1e-5):
    """→ (output, batch mean, batch whitening). mean/deconv given: eval mode."""
    x = x.astype(np.float64)
    if mean is None:
        cols = np_unfold(x, 3, 1, 3)
        mean = cols.mean(0)
        xc = cols - mean
        cov = eps * np.eye(cols.shape[1]) + xc.T @ xc / cols.shape[0]
        deconv = np_isqrt(cov, 5)
    w = weight.reshape(weight.shape[0], -1).astype(np.float64) @ deconv
    b = bias - w @ mean
    return np_conv2d(x, w.reshape(weight.shape), b, 1), mean, deconv


def np_bilinear_zero(img, y, x):
    """DCNv2's dmcn_im2col_bilinear: zero outside, partial corners inside (-1, H)."""
    h, w = img.shape
    if not (-1 < y < h and -1 < x < w):
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    val = 0.0
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= yy < h and 0 <= xx < w:
                val += wy * wx * img[yy, xx]
    return val


def np_dcnv2(x, weight, bias, om):
    """DCNv2 (3x3, stride 1, pad 1) from the conv_offset_mask output `om` in DCNv2's layout:
    channels 2k, 2k+1 = (dy, dx) of tap k = i*3+j, channels 18+k = mask logits."""
    n, c, h, w = x.shape
    out = np.zeros((n, weight.shape[0], h, w))
    mask = 1.0 / (1.0 + np.exp(-om[:, 18:]))
    for b in range(n):
        for r in range(h):
            for q in range(w):
                col = np.zeros((c, 3, 3))
                for i in range(3):
                    for j in range(3):
                        k = i * 3 + j
                        py = r - 1 + i + om[b, 2 * k, r, q]
                        px = q - 1 + j + om[b, 2 * k + 1, r, q]
                        for ch in range(c):
                            col[ch, i, j] = np_bilinear_zero(x[b, ch], py, px) * mask[b, k, r, q]
                out[b, :, r, q] = np.tensordot(weight, col, axes=([1, 2, 3], [0, 1, 2]))
    return out + bias.reshape(1, -1, 1, 1)


def np_conv_transpose(x, w, b, stride, pad, out_pad):
    """torch.nn.functional.conv_transpose2d by scatter-add; w is (in, out, k, k)."""
    n, c, h, wd = x.shape
    _, o, k, _ = w.shape
    full = np.zeros((n, o, (h - 1) * stride + k, (wd - 1) * stride + k))
    for r in range(h):
        for q in range(wd):
            full[:, :, r * stride:r * stride + k, q * stride:q * stride + k] += np.einsum(
                "nc,cokl->nokl", x[:, :, r, q], w)
    ho = (h - 1) * stride - 2 * pad + k + out_pad
    wo = (wd - 1) * stride - 2 * pad + k + out_pad
    return full[:, :, pad:pad + ho, pad:pad + wo] + b.reshape(1, -1, 1, 1)


# ---------------------------------------------------------------------------------------------


def test_default_width_has_the_papers_parameter_count():
    net = AECRNet()
    assert count_parameters(net) == 2_614_229  # the paper: 2.61 M
    names = {n for n, _ in net.parameters_and_names()}
    assert {"deconv.running_mean", "deconv.running_deconv", "dcn_block.dcn.weight",
            "dcn_block.dcn.conv_offset_mask.weight", "mix1.w", "up1.0.weight",
            "block.calayer.ca.2.weight"} <= names
    assert float(net.mix1.w.asnumpy()[0]) == -1.0 and net.mix2.w.asnumpy()[0] == pytest.approx(-0.6)
    assert not np.any(net.dcn_block.dcn.conv_offset_mask.weight.asnumpy())


@pytest.mark.parametrize("hw", [(16, 16), (12, 20)])
def test_output_shape_for_sizes_divisible_by_4(hw):
    net = AECRNet(ngf=4)
    net.set_train(False)
    x = np.random.default_rng(0).random((2, 3) + hw, dtype=np.float32)
    y = net(T(x)).asnumpy()
    assert y.shape == (2, 3) + hw
    assert np.all(np.abs(y) <= 1.0)  # tanh output


def test_size_not_divisible_by_4_is_a_clear_error():
    net = AECRNet(ngf=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(T(np.zeros((1, 3, 18, 16))))


def test_fastdeconv_training_mode_matches_float64_reference():
    rng = np.random.default_rng(1)
    layer = FastDeconv(3, 3, 3, 1, 1)
    layer.set_train(True)
    x = (rng.random((2, 3, 11, 13)) * rng.random((1, 3, 1, 1)) + 0.2).astype(np.float32)
    x[:, 1] = 0.7 * x[:, 0] + 0.3 * x[:, 1]   # correlated channels: whitening matters
    w, b = layer.weight.asnumpy(), layer.bias.asnumpy()
    out = layer(T(x)).asnumpy()
    ref, mean, deconv = np_fastdeconv(x, w, b)
    np.testing.assert_allclose(out, ref, rtol=2e-3, atol=2e-4)
    # Running statistics: momentum 0.1 from zeros / identity.
    np.testing.assert_allclose(layer.running_mean.asnumpy(), 0.1 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer.running_deconv.asnumpy(),
                               0.9 * np.eye(27) + 0.1 * deconv, rtol=2e-3, atol=2e-4)


def test_newton_schulz_inverse_square_root():
    from src.nets.aecrnet import isqrt_newton_schulz

    rng = np.random.default_rng(9)
    a = rng.normal(size=(6, 6))
    spd = np.eye(6) + 0.1 * a @ a.T        # well conditioned: 5 iterations converge
    vals, vecs = np.linalg.eigh(spd)
    exact = vecs @ np.diag(vals ** -0.5) @ vecs.T
    got = isqrt_newton_schulz(T(spd), 5).asnumpy()
    np.testing.assert_allclose(got, np_isqrt(spd, 5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, exact, atol=1e-3)


def test_fastdeconv_eval_mode_uses_running_statistics():
    rng = np.random.default_rng(2)
    layer = FastDeconv(3, 3, 3, 1, 1)
    mean = rng.normal(0.4, 0.1, 27)
    a = rng.normal(0, 0.3, (27, 27))
    deconv = np.eye(27) + a @ a.T * 0.1
    layer.running_mean.set_data(T(mean))
    layer.running_deconv.set_data(T(deconv))
    layer.set_train(False)
    x = rng.random((1, 3, 9, 10)).astype(np.float32)
    out = layer(T(x)).asnumpy()
    ref, _, _ = np_fastdeconv(x, layer.weight.asnumpy(), layer.bias.asnumpy(), mean, deconv)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.running_mean.asnumpy(), mean, rtol=1e-6)  # untouched


def test_dcn_with_zero_offsets_and_unit_masks_is_a_plain_conv():
    rng = np.random.default_rng(3)
    dcn = ModulatedDeformConv2d(5, 4, offset_nudge=0.0)
    # Offsets 0 (zero-initialised conv); mask logits +30 → sigmoid == 1.0 in float32.
    dcn.conv_offset_mask.bias.set_data(T(np.r_[np.zeros(18), np.full(9, 30.0)]))
    dcn.bias.set_data(T(rng.normal(size=4)))
    x = T(rng.normal(size=(2, 5, 7, 6)))
    got = dcn(x).asnumpy()
    want = (ops.conv2d(x, dcn.weight, pad_mode="pad", padding=1).asnumpy()
            + dcn.bias.asnumpy().reshape(1, -1, 1, 1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dcn_offsets_follow_dcnv2_channel_layout():
    """Non-trivial offsets and masks: the (dy, dx)-interleaved DCNv2 order must be converted to
    MindSpore's [dx | dy | mask] exactly (a swapped x/y gives errors of order 1)."""
    rng = np.random.default_rng(4)
    dcn = ModulatedDeformConv2d(3, 2, offset_nudge=0.0)
    dcn.conv_offset_mask.weight.set_data(T(rng.normal(0, 0.4, (27, 3, 3, 3))))
    dcn.conv_offset_mask.bias.set_data(T(rng.normal(0, 0.5, 27)))
    dcn.bias.set_data(T(rng.normal(size=2)))
    x = rng.normal(size=(1, 3, 5, 6)).astype(np.float32)
    om = dcn.conv_offset_mask(T(x)).asnumpy().astype(np.float64)
    assert np.abs(om[:, :18]).max() > 1.0  # offsets reach beyond the neighbouring pixel
    got = dcn(T(x)).asnumpy()
    want = np_dcnv2(x.astype(np.float64), dcn.weight.asnumpy().astype(np.float64),
                    dcn.bias.asnumpy(), om)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_offset_nudge_makes_integral_offsets_fractional():
    dcn = ModulatedDeformConv2d(3, 2, offset_nudge=1e-3)
    x = np.random.default_rng(5).normal(size=(1, 3, 4, 4)).astype(np.float32)
    packed = dcn.dcn_offsets(T(x)).asnumpy()
    offsets = packed[:, :18]
    assert np.all(offsets != np.floor(offsets))      # step 0: all were exactly 0.0
    np.testing.assert_allclose(offsets, 1e-3, rtol=1e-6)
    np.testing.assert_allclose(packed[:, 18:], 0.5)  # sigmoid(0)
    plain = ModulatedDeformConv2d(3, 2, offset_nudge=0.0)
    plain.weight.set_data(dcn.weight.data)
    np.testing.assert_allclose(dcn(T(x)).asnumpy(), plain(T(x)).asnumpy(), atol=5e-3)


def test_conv_transpose_matches_torch_semantics():
    rng = np.random.default_rng(6)
    layer = ConvTranspose2d(4, 3, 3, 2, 1, 1)
    x = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    got = layer(T(x)).asnumpy()
    want = np_conv_transpose(x.astype(np.float64), layer.weight.asnumpy().astype(np.float64),
                             layer.bias.asnumpy(), 2, 1, 1)
    assert got.shape == (2, 3, 6, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Contrastive regularisation


class _FixedFeatures(nn.Cell):
    """Five deterministic 'feature maps' numpy can reproduce: stands in for VGG19."""

    def __init__(self):
        super().__init__()
        self.pretrained = True

    def construct(self, x):
        p2 = ops.avg_pool2d(x, 2, 2)
        return (x, x * x, p2, ops.relu(p2 - 0.5), ops.avg_pool2d(p2, 2, 2) * 3.0)


def _np_feats(x):
    p2 = x.reshape(x.shape[0], x.shape[1], x.shape[2] // 2, 2, x.shape[3] // 2, 2).mean((3, 5))
    p4 = p2.reshape(p2.shape[0], p2.shape[1], p2.shape[2] // 2, 2, p2.shape[3] // 2, 2).mean((3, 5))
    return [x, x * x, p2, np.maximum(p2 - 0.5, 0), p4 * 3.0]


def _np_cr(a, p, n, neg_num, weights=(1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)):
    fa, fp, fn = _np_feats(a), _np_feats(p), _np_feats(n)
    total = 0.0
    for i, w in enumerate(weights):
        d_ap = np.abs(fa[i] - fp[i]).mean()
        negs = [np.abs(fa[i] - fn[i]).mean()]
        reversed_batch = fn[i][::-1]
        for k in range(neg_num):
            negs.append(np.abs(fa[i] - reversed_batch[k:k + 1]).mean())
        total += w * d_ap / (np.mean(negs) + 1e-7)
    return total


@pytest.mark.parametrize("neg_num", [0, 2])
def test_contrast_loss_matches_numpy_reference(neg_num):
    from src.losses.contrastive import ContrastLoss

    rng = np.random.default_rng(7)
    a, p, n = (rng.random((3, 2, 8, 8)) for _ in range(3))
    loss = ContrastLoss(vgg=_FixedFeatures(), neg_num=neg_num)
    got = float(loss(T(a), T(p), T(n)).asnumpy())
    assert got == pytest.approx(_np_cr(a, p, n, neg_num), rel=1e-5)


def test_contrast_loss_gradient_flows_to_the_anchor_only():
    from src.losses.contrastive import ContrastLoss

    rng = np.random.default_rng(8)
    a, p, n = (T(rng.random((2, 2, 8, 8))) for _ in range(3))
    loss = ContrastLoss(vgg=_FixedFeatures(), neg_num=1)
    ga, gp, gn = ms.grad(loss, grad_position=(0, 1, 2))(a, p, n)
    assert np.abs(ga.asnumpy()).sum() > 0
    assert not np.any(gp.asnumpy()) and not np.any(gn.asnumpy())


def test_aecr_loss_without_cr_builds_no_vgg():
    from src.losses.contrastive import AECRLoss

    loss = AECRLoss(cr_weight=0.0)
    assert loss.cr is None and loss.vgg_pretrained is None
    out, clear = T(np.full((1, 3, 4, 4), 0.25)), T(np.full((1, 3, 4, 4), 0.75))
    total, l1, cr = loss(out, clear, clear)
    assert float(total.asnumpy()) == pytest.approx(0.5)
    assert float(cr.asnumpy()) == 0.0


# ---------------------------------------------------------------------------------------------
# The recipe


def _tiny_cfg(tmp_path, **over):
    from src.config import load_config

    args = ["net.ngf=4", "net.num_blocks=2", "net.num_dcn=1", "data.batch_size=2",
            "data.num_workers=0", "data.train.crop=16", "train.max_steps=10",
            "optim.lr=3e-3", "loss.cr_weight=0.0", "train.jit=false", "mode=pynative",
            "synth.num_scenes=3", "synth.hazy_per_scene=2", "synth.num_val=2",
            "synth.height=24", "synth.width=24", "synth.photos=false",
            "export.height=16", "export.width=16"]
    args += ["%s=%s" % kv for kv in over.items()]
    return load_config(DEMO_CONFIG, args)


def test_recipe_rejects_crops_not_divisible_by_4(tmp_path):
    from src.errors import UserError
    from src.recipes.aecrnet import AECRNetRecipe
    from src.recipes.base import RecipeContext

    cfg = _tiny_cfg(tmp_path, **{"data.train.crop": 18})
    with pytest.raises(UserError, match="divisible by 4"):
        AECRNetRecipe(cfg, RecipeContext(data_dir=str(tmp_path), output_dir=str(tmp_path)))


def test_recipe_rejects_bad_loss_and_schedule_settings(tmp_path):
    from src.errors import UserError
    from src.recipes.aecrnet import AECRNetRecipe
    from src.recipes.base import RecipeContext

    ctx = RecipeContext(data_dir=str(tmp_path), output_dir=str(tmp_path))
    with pytest.raises(UserError, match="neg_num=3 exceeds data.batch_size=2"):
        AECRNetRecipe(_tiny_cfg(tmp_path, **{"loss.neg_num": 3}), ctx)
    with pytest.raises(UserError, match="schedule: unknown key 'warmup'"):
        AECRNetRecipe(_tiny_cfg(tmp_path, **{"schedule": "{type: cosine, warmup: 3}"}), ctx)


def test_run_without_vgg_weights_is_labelled(tmp_path, caplog):
    import logging

    from src.recipes.aecrnet import NO_VGG, AECRNetRecipe
    from src.recipes.base import RecipeContext

    cfg = _tiny_cfg(tmp_path, **{"loss.cr_weight": 0.1})
    recipe = AECRNetRecipe(cfg, RecipeContext(data_dir=str(tmp_path), output_dir=str(tmp_path)))
    with caplog.at_level(logging.WARNING):
        recipe.build()
    assert recipe.describe()["vgg_weights"] == NO_VGG
    assert any("NO VGG19 weights" in r.message for r in caplog.records)


def test_eval_and_export_build_no_vgg_and_read_only_the_net(tmp_path, caplog):
    """The contrastive loss's VGG (and its random-weights banner) is a training matter: an
    evaluation or export builds the net alone and reads a training checkpoint's net.*."""
    import logging

    from src.engine.checkpoint import CheckpointManager
    from src.recipes.aecrnet import AECRNetRecipe
    from src.recipes.base import RecipeContext

    cfg = _tiny_cfg(tmp_path, **{"loss.cr_weight": 0.1})
    trained = AECRNetRecipe(cfg, RecipeContext(data_dir="", output_dir=str(tmp_path)))
    with caplog.at_level(logging.WARNING):
        trained.build()
    assert any("NO PRETRAINED WEIGHTS" in r.getMessage() for r in caplog.records)
    path = CheckpointManager(str(tmp_path / "ckpt")).save(3, trained.checkpoint_cells())
    caplog.clear()
    for task in ("eval", "export"):
        recipe = AECRNetRecipe(cfg, RecipeContext(data_dir="", output_dir=str(tmp_path),
                                                  task=task))
        with caplog.at_level(logging.INFO):
            recipe.build()
        assert set(recipe.checkpoint_cells()) == {"net"}
        assert recipe.describe()["vgg_weights"].startswith("not built")
        assert CheckpointManager(str(tmp_path / "ckpt")).load(path, recipe.checkpoint_cells()
                                                              )["step"] == 3
    assert not any("VGG" in r.getMessage() for r in caplog.records), caplog.records


def test_lr_schedule_is_the_authors_cosine():
    from src.recipes.aecrnet import lr_schedule

    lrs = lr_schedule(1e-4, 10)
    t = np.arange(1, 11)
    np.testing.assert_allclose(lrs, 0.5 * (1 + np.cos(t * np.pi / 10)) * 1e-4, rtol=1e-6)
    warm = lr_schedule(1e-3, 10, warmup_steps=4, min_lr=1e-5)
    np.testing.assert_allclose(warm[:4], [2.5e-4, 5e-4, 7.5e-4, 1e-3], rtol=1e-6)
    assert warm[-1] == pytest.approx(1e-5)


def test_recipe_trains_predicts_and_exports(tmp_path):
    """Overfit one batch for a few steps: the loss must drop; FastDeconv's running statistics
    keep updating across an evaluation (train/eval phase switch); predict is in [0, 1]."""
    from src.recipes.aecrnet import AECRNetRecipe
    from src.recipes.base import RecipeContext

    cfg = _tiny_cfg(tmp_path)
    data = tmp_path / "data"
    summary = AECRNetRecipe.synthesize(cfg, str(data))
    assert summary["train"]["hazy"] == 6 and summary["val"]["hazy"] == 2
    ms.set_seed(0)
    recipe = AECRNetRecipe(cfg, RecipeContext(data_dir=str(data), output_dir=str(tmp_path)))
    recipe.build()
    info = recipe.describe()
    assert info["vgg_weights"].startswith("unused")
    loader = recipe.train_loader()
    batch = next(iter(loader))
    assert batch["input"].shape == (2, 3, 16, 16)
    losses = [float(recipe.train_step(batch)["loss"].asnumpy()) for _ in range(5)]
    mean_before = recipe.net.deconv.running_mean.asnumpy().copy()
    sample = next(iter(recipe.val_samples()))
    pred = recipe.predict(sample["input"][None])
    assert pred.shape == (1, 3, 24, 24) and pred.min() >= 0.0 and pred.max() <= 1.0
    losses += [float(recipe.train_step(batch)["loss"].asnumpy()) for _ in range(5)]
    assert not np.allclose(recipe.net.deconv.running_mean.asnumpy(), mean_before)
    # Every step lowers the loss on the one batch. (How much 10 steps gain depends on the random
    # init, whose samples differ between MindSpore versions: 7 % on 2.0, 24 % on 2.8.)
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.95 * losses[0], \
        losses
    # The schedule's step counter advanced once per step (resuming counts steps by it).
    assert recipe.optimizer.dynamic_lr
    assert int(recipe.optimizer.global_step.asnumpy()[0]) == 10
    cell, examples = recipe.export_cell()
    assert examples[0].shape == (1, 3, 16, 16)
    assert cell(T(examples[0])).shape == (1, 3, 16, 16)
    assert set(recipe.checkpoint_cells()) == {"net", "opt"}


def test_fine_tuning_starts_from_the_packages_own_best_ckpt(tmp_path, caplog):
    """net_weights=<an earlier run>/ckpt/best.ckpt: the net starts from its weights, the
    optimizer starts afresh (step 0, zero moments), one line says what was left out."""
    import logging

    from src.engine.checkpoint import CheckpointManager
    from src.engine.loop import train
    from src.recipes.aecrnet import AECRNetRecipe
    from src.recipes.base import RecipeContext

    data = tmp_path / "data"
    over = {"train.max_steps": 2, "train.eval_every": 2, "train.log_every": 1}
    AECRNetRecipe.synthesize(_tiny_cfg(tmp_path, **over), str(data))
    ctx = RecipeContext(data_dir=str(data), output_dir=str(tmp_path / "first"))
    first = AECRNetRecipe(_tiny_cfg(tmp_path, **over), ctx)
    first.build()
    manager = CheckpointManager(str(tmp_path / "first" / "ckpt"))
    train(first, first.cfg, output_dir=ctx.output_dir, ckpt=manager, is_main=True)
    best = tmp_path / "first" / "ckpt" / "best.ckpt"
    assert best.is_file()

    cfg = _tiny_cfg(tmp_path, net_weights=str(best), **over)
    tuned = AECRNetRecipe(cfg, RecipeContext(data_dir=str(data),
                                             output_dir=str(tmp_path / "second")))
    with caplog.at_level(logging.INFO):
        tuned.build()
    lines = [r.getMessage() for r in caplog.records if "training checkpoint" in r.getMessage()]
    assert len(lines) == 1 and "step 2" in lines[0] and "opt.*" in lines[0], lines
    for (name, want), (_, got) in zip(first.net.parameters_and_names(),
                                      tuned.net.parameters_and_names()):
        np.testing.assert_array_equal(got.asnumpy(), want.asnumpy(), err_msg=name)
    assert int(tuned.optimizer.global_step.asnumpy().reshape(-1)[0]) == 0
    assert all(not m.asnumpy().any() for m in tuned.optimizer.moment1)
    batch = next(iter(tuned.train_loader()))
    assert np.isfinite(float(tuned.train_step(batch)["loss"].asnumpy()))


# ---------------------------------------------------------------------------------------------
# VGG features


def test_vgg_layer_numbering_is_torchvisions():
    from src.nets.vgg import layer_indices

    v19 = layer_indices("vgg19")
    assert [v19[n] for n in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")] == [
        1, 6, 11, 20, 29]
    v16 = layer_indices("vgg16")
    assert [v16[n] for n in ("relu1_2", "relu2_2", "relu3_3")] == [3, 8, 15]


def test_vgg_weights_load_by_name_and_random_init_is_loud(tmp_path, caplog):
    import logging

    from src.errors import UserError
    from src.nets.vgg import VGGFeatures

    with caplog.at_level(logging.WARNING):
        rand = VGGFeatures("vgg16", ["relu2_2", "relu1_2"], weights=None)
    assert not rand.pretrained
    assert sum("NO PRETRAINED WEIGHTS" in r.message for r in caplog.records) == 1
    assert [n for n, _ in rand.parameters_and_names()] == [
        "features.%d.%s" % (i, k) for i in (0, 2, 5, 7) for k in ("weight", "bias")]
    assert all(not p.requires_grad for p in rand.get_parameters())
    # A checkpoint whose names carry a prefix (saved from inside a loss cell) loads too.
    path = str(tmp_path / "v.ckpt")
    ms.save_checkpoint([{"name": "vgg." + n, "data": p.data}
                        for n, p in rand.parameters_and_names()], path)
    loaded = VGGFeatures("vgg16", ["relu2_2", "relu1_2"], weights=path)
    x = T(np.random.default_rng(0).random((1, 3, 8, 8)))
    for a, b in zip(rand(x), loaded(x)):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    assert rand(x)[0].shape == (1, 128, 4, 4) and rand(x)[1].shape == (1, 64, 8, 8)
    with pytest.raises(UserError, match="lacks features.10.weight"):
        VGGFeatures("vgg16", ["relu3_1"], weights=path)
    with pytest.raises(UserError, match="not found"):
        VGGFeatures("vgg16", ["relu1_2"], weights=str(tmp_path / "none.ckpt"))
    with pytest.raises(UserError, match="no layer 'relu6_1'"):
        VGGFeatures("vgg19", ["relu6_1"])
