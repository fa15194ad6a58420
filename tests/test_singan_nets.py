"""SinGAN-Dehaze networks: shapes, parameter counts, and layer-for-layer parity with a PyTorch
rebuild of CUT's ResnetGenerator / NLayerDiscriminator (instance norm, no antialiasing)."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from src.nets.resnet_gan import (NLayerDiscriminator, PatchSampleMLP,  # noqa: E402
                                 ResnetGenerator, count_parameters)
from src.registry import NETS  # noqa: E402

NCE_LAYERS = (0, 4, 8, 12, 16)


def test_registered():
    for name in ("ResnetGenerator", "NLayerDiscriminator", "PatchSampleMLP"):
        assert name in NETS.names()


def test_parameter_counts_match_cut():
    # CUT prints 11.378 M for resnet_9blocks (ngf 64) and 2.765 M for the basic PatchGAN.
    assert count_parameters(ResnetGenerator(ngf=64, n_blocks=9)) == 11378179
    assert count_parameters(NLayerDiscriminator(ndf=64, n_layers=3)) == 2764737


def test_generator_256_to_256_and_feature_shapes():
    g = ResnetGenerator(ngf=8, n_blocks=9)       # width does not change the geometry
    x = ms.Tensor(np.random.default_rng(0).uniform(-1, 1, (1, 3, 256, 256)).astype(np.float32))
    out, feats = g.forward_features(x, NCE_LAYERS)
    assert out.shape == (1, 3, 256, 256)
    y = out.asnumpy()
    assert np.all(np.abs(y) <= 1.0)             # tanh
    assert [tuple(f.shape) for f in feats] == [(1, 3, 262, 262), (1, 16, 128, 128),
                                               (1, 32, 64, 64), (1, 32, 64, 64),
                                               (1, 32, 64, 64)]
    assert g.feature_channels(NCE_LAYERS) == [3, 16, 32, 32, 32]
    assert g.feature_sizes(NCE_LAYERS, 256, 256) == [tuple(f.shape[2:]) for f in feats]
    assert g.feature_sizes(range(len(g.model)), 256, 256)[-1] == (256, 256)
    enc = g.encode_layers(x, NCE_LAYERS)
    for a, b in zip(enc, feats):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    with pytest.raises(ValueError):
        g.feature_channels((0, 99))


def test_discriminator_256_to_30x30():
    d = NLayerDiscriminator(ndf=64, n_layers=3)
    out = d(ms.Tensor(np.zeros((1, 3, 256, 256), np.float32)))
    assert out.shape == (1, 1, 30, 30)


def test_patch_sample_mlp_shapes_and_unit_norm():
    rng = np.random.default_rng(1)
    head = PatchSampleMLP(in_channels=(3, 8), nc=16)
    feats = (ms.Tensor(rng.standard_normal((2, 3, 10, 10)).astype(np.float32)),
             ms.Tensor(rng.standard_normal((2, 8, 5, 5)).astype(np.float32)))
    ids = ms.Tensor(np.stack([rng.permutation(100)[:6], rng.permutation(25)[:6]]).astype(np.int32))
    out = head(feats, ids)
    assert [tuple(o.shape) for o in out] == [(2, 6, 16), (2, 6, 16)]
    np.testing.assert_allclose(np.linalg.norm(out[1].asnumpy(), axis=-1), 1.0, atol=1e-4)


# ---- parity with the PyTorch reference architecture -------------------------------------------

def _torch_cut(torch):
    """CUT's ResnetGenerator / NLayerDiscriminator with instance norm and no antialiasing,
    written from the paper's code description (CUT models/networks.py)."""
    nn = torch.nn

    def norm(c):
        return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)

    class Block(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.conv_block = nn.Sequential(
                nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), norm(dim), nn.ReLU(),
                nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), norm(dim))

        def forward(self, x):
            return x + self.conv_block(x)

    def generator(ngf, n_blocks):
        m = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=True), norm(ngf), nn.ReLU()]
        for i in range(2):
            c = ngf * 2 ** i
            m += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=True), norm(2 * c), nn.ReLU()]
        m += [Block(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            m += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1,
                                     bias=True), norm(c // 2), nn.ReLU()]
        m += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        return nn.Sequential(*m)

    def discriminator(ndf):
        m = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        m += [nn.Conv2d(ndf, ndf * 2, 4, 2, 1), norm(ndf * 2), nn.LeakyReLU(0.2)]
        m += [nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1), norm(ndf * 4), nn.LeakyReLU(0.2)]
        m += [nn.Conv2d(ndf * 4, ndf * 8, 4, 1, 1), norm(ndf * 8), nn.LeakyReLU(0.2)]
        m += [nn.Conv2d(ndf * 8, 1, 4, 1, 1)]
        return nn.Sequential(*m)

    return generator, discriminator


def _copy_weights(ms_cell, torch_module, prefix_map):
    torch_params = dict(torch_module.named_parameters())
    import torch

    with torch.no_grad():
        for p in ms_cell.get_parameters():
            name = prefix_map(p.name)
            assert name in torch_params, name
            assert tuple(torch_params[name].shape) == tuple(p.shape), name
            torch_params[name].copy_(torch.from_numpy(p.asnumpy()))
    assert len(torch_params) == len(list(ms_cell.get_parameters()))


def test_layer_for_layer_parity_with_pytorch_reference():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    make_g, make_d = _torch_cut(torch)
    g, d = ResnetGenerator(ngf=4, n_blocks=7), NLayerDiscriminator(ndf=4)
    tg, td = make_g(4, 7), make_d(4)
    # ms 'model.N.conv_block.M.weight' ↔ torch 'N.conv_block.M.weight'
    _copy_weights(g, tg, lambda n: n[len("model."):])
    _copy_weights(d, td, lambda n: n[len("model."):])
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 36, 28)).astype(np.float32)

    out, feats = g.forward_features(ms.Tensor(x), NCE_LAYERS)
    t = torch.from_numpy(x)
    want_feats = []
    for i, layer in enumerate(tg):
        t = layer(t)
        if i in NCE_LAYERS:
            want_feats.append(t.detach().numpy())
    np.testing.assert_allclose(out.asnumpy(), t.detach().numpy(), atol=2e-5)
    for got, want in zip(feats, want_feats):
        np.testing.assert_allclose(got.asnumpy(), want, atol=2e-5)
    assert g.feature_sizes(NCE_LAYERS, 36, 28) == [w.shape[2:] for w in want_feats]

    y = np.random.default_rng(3).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(d(ms.Tensor(y)).asnumpy(),
                               td(torch.from_numpy(y)).detach().numpy(), atol=2e-5)


def test_l2_normalize_zero_vector_has_finite_gradient():
    from src.nets.resnet_gan import l2_normalize

    x = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], np.float32)
    y = l2_normalize(ms.Tensor(x)).asnumpy()
    np.testing.assert_allclose(y, [[0, 0, 0], [0.6, 0.8, 0]], atol=1e-6)
    grad = ms.grad(lambda t: l2_normalize(t).sum())(ms.Tensor(x)).asnumpy()
    assert np.all(np.isfinite(grad))     # CUT's x / (√Σx² + ε) gives NaN at x = 0
