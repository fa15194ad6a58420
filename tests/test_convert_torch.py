"""PyTorch → MindSpore conversion, and the real proof of a faithful port: the authors' network,
re-declared here in PyTorch with the official module names (models/AECRNet.py, models/deconv.py,
DCNv2's DCN), gives the same outputs as src/nets/aecrnet.py loaded with converted weights."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from src.errors import UserError  # noqa: E402
from src.tools import convert_torch  # noqa: E402


pytestmark = pytest.mark.usefixtures("pynative_mode")


# ---------------------------------------------------------------------------------------------
# Torch-free: the name/shape contract


def test_convert_aecrnet_is_a_checked_one_to_one_rename():
    expected = convert_torch.aecrnet_expected(ngf=4)
    state = {n: np.full(s, 0.5, np.float32) for n, s in expected.items()}
    out = convert_torch.convert_aecrnet(dict(state, **{"x.num_batches_tracked": np.zeros(())}))
    assert set(out) == set(expected)
    with pytest.raises(UserError, match="missing mix1.w"):
        convert_torch.convert_aecrnet({n: v for n, v in state.items() if n != "mix1.w"})
    with pytest.raises(UserError, match="unexpected extra.weight"):
        convert_torch.convert_aecrnet(dict(state, **{"extra.weight": np.zeros(1)}))
    bad = dict(state)
    bad["up1.0.weight"] = np.zeros((8, 16, 3, 3), np.float32)  # (out, in) instead of (in, out)
    with pytest.raises(UserError, match="shape mismatch up1.0.weight"):
        convert_torch.convert_aecrnet(bad)
    with pytest.raises(UserError, match="not an AECR-Net"):
        convert_torch.convert_aecrnet({"features.0.weight": np.zeros(1)})


def test_convert_vgg_keeps_features_only():
    from src.nets.vgg import CFGS

    state, i, cin = {}, 0, 3
    for v in CFGS["vgg16"]:
        if v == "M":
            i += 1
            continue
        state["features.%d.weight" % i] = np.zeros((v, cin, 3, 3), np.float32)
        state["features.%d.bias" % i] = np.zeros(v, np.float32)
        cin, i = v, i + 2
    state["classifier.0.weight"] = np.zeros((4, 4), np.float32)
    out = convert_torch.convert_vgg(state, "vgg16")
    assert len(out) == 26 and "classifier.0.weight" not in out
    with pytest.raises(UserError, match="not a torchvision vgg19"):
        convert_torch.convert_vgg(state, "vgg19")


# ---------------------------------------------------------------------------------------------
# Against PyTorch


def _official_modules(torch):
    """The authors' Dehaze network in PyTorch, same module names as the released code. DCNv2's
    CUDA op is re-expressed with grid_sample (bilinear, zeros outside: the same sampling rule)."""
    nn, F = torch.nn, torch.nn.functional

    def isqrt_newton_schulz_autograd(A, num_iters):
        dim = A.shape[0]
        norm_a = A.norm()
        Y = A.div(norm_a)
        eye = torch.eye(dim, dtype=A.dtype)
        Z = torch.eye(dim, dtype=A.dtype)
        for _ in range(num_iters):
            T = 0.5 * (3.0 * eye - Z @ Y)
            Y = Y @ T
            Z = T @ Z
        return Z / torch.sqrt(norm_a)

    class FastDeconv(nn.Conv2d):
        def __init__(self, cin, cout, kernel_size, stride=1, padding=0, eps=1e-5, n_iter=5,
                     momentum=0.1, block=64, sampling_stride=3):
            super().__init__(cin, cout, kernel_size, stride, padding)
            self.momentum, self.n_iter, self.eps = momentum, n_iter, eps
            self.block = min(block, cin)
            self.num_features = kernel_size ** 2 * self.block
            self.register_buffer("running_mean", torch.zeros(self.num_features))
            self.register_buffer("running_deconv", torch.eye(self.num_features))
            self.sampling_stride = sampling_stride * stride

        def forward(self, x):
            N, C, H, W = x.shape
            B = self.block
            if self.training:
                X = F.unfold(x, self.kernel_size, self.dilation, self.padding,
                             self.sampling_stride).transpose(1, 2).contiguous()
                X = X.view(-1, self.num_features, C // B).transpose(1, 2).contiguous().view(
                    -1, self.num_features)
                X_mean = X.mean(0)
                X = X - X_mean.unsqueeze(0)
                Id = torch.eye(X.shape[1], dtype=X.dtype)
                Cov = torch.addmm(Id, X.t(), X, beta=self.eps, alpha=1.0 / X.shape[0])
                deconv = isqrt_newton_schulz_autograd(Cov, self.n_iter)
                self.running_mean.mul_(1 - self.momentum)
                self.running_mean.add_(X_mean.detach() * self.momentum)
                self.running_deconv.mul_(1 - self.momentum)
                self.running_deconv.add_(deconv.detach() * self.momentum)
            else:
                X_mean = self.running_mean
                deconv = self.running_deconv
            w = self.weight.view(-1, self.num_features, C // B).transpose(1, 2).contiguous().view(
                -1, self.num_features) @ deconv
            b = self.bias - (w @ (X_mean.unsqueeze(1))).view(self.weight.shape[0], -1).sum(1)
            w = w.view(-1, C // B, self.num_features).transpose(1, 2).contiguous()
            return F.conv2d(x, w.view(self.weight.shape), b, self.stride, self.padding)

    class DCN(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(cout, cin, 3, 3).uniform_(-0.05, 0.05))
            self.bias = nn.Parameter(torch.zeros(cout))
            self.conv_offset_mask = nn.Conv2d(cin, 27, 3, 1, 1, bias=True)

        def forward(self, x):
            out = self.conv_offset_mask(x)
            o1, o2, mask = torch.chunk(out, 3, dim=1)
            offset = torch.cat((o1, o2), dim=1)
            mask = torch.sigmoid(mask)
            N, C, H, W = x.shape
            ys, xs = torch.meshgrid(torch.arange(H, dtype=x.dtype), torch.arange(W, dtype=x.dtype),
                                    indexing="ij")
            result = 0
            for i in range(3):
                for j in range(3):
                    k = i * 3 + j
                    py = ys + (i - 1) + offset[:, 2 * k]
                    px = xs + (j - 1) + offset[:, 2 * k + 1]
                    grid = torch.stack((2 * px / (W - 1) - 1, 2 * py / (H - 1) - 1), dim=-1)
                    col = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                                        align_corners=True) * mask[:, k:k + 1]
                    result = result + torch.einsum("nchw,oc->nohw", col, self.weight[:, :, i, j])
            return result + self.bias.view(1, -1, 1, 1)

    class PALayer(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.pa = nn.Sequential(nn.Conv2d(c, c // 8, 1), nn.ReLU(inplace=True),
                                    nn.Conv2d(c // 8, 1, 1), nn.Sigmoid())

        def forward(self, x):
            return x * self.pa(x)

    class CALayer(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
            self.ca = nn.Sequential(nn.Conv2d(c, c // 8, 1), nn.ReLU(inplace=True),
                                    nn.Conv2d(c // 8, c, 1), nn.Sigmoid())

        def forward(self, x):
            return x * self.ca(self.avg_pool(x))

    class DehazeBlock(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
            self.act1 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
            self.calayer = CALayer(dim)
            self.palayer = PALayer(dim)

        def forward(self, x):
            res = self.act1(self.conv1(x)) + x
            res = self.palayer(self.calayer(self.conv2(res)))
            res += x
            return res

    class DCNBlock(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.dcn = DCN(cin, cout)

        def forward(self, x):
            return self.dcn(x)

    class Mix(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.w = nn.Parameter(torch.FloatTensor([m]))
            self.mix_block = nn.Sigmoid()

        def forward(self, f1, f2):
            f = self.mix_block(self.w)
            return f1 * f.expand_as(f1) + f2 * (1 - f.expand_as(f2))

    class Dehaze(nn.Module):
        def __init__(self, ngf):
            super().__init__()
            self.down1 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.ReLU(True))
            self.down2 = nn.Sequential(nn.Conv2d(ngf, ngf * 2, 3, 2, 1), nn.ReLU(True))
            self.down3 = nn.Sequential(nn.Conv2d(ngf * 2, ngf * 4, 3, 2, 1), nn.ReLU(True))
            self.block = DehazeBlock(ngf * 4)
            self.up1 = nn.Sequential(nn.ConvTranspose2d(ngf * 4, ngf * 2, 3, 2, 1, 1), nn.ReLU(True))
            self.up2 = nn.Sequential(nn.ConvTranspose2d(ngf * 2, ngf, 3, 2, 1, 1), nn.ReLU(True))
            self.up3 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh())
            self.dcn_block = DCNBlock(ngf * 4, ngf * 4)
            self.deconv = FastDeconv(3, 3, kernel_size=3, stride=1, padding=1)
            self.mix1 = Mix(-1)
            self.mix2 = Mix(-0.6)

        def forward(self, x):
            d1 = self.down1(self.deconv(x))
            d2 = self.down2(d1)
            d3 = self.down3(d2)
            f = d3
            for _ in range(6):
                f = self.block(f)
            f = self.dcn_block(self.dcn_block(f))
            up1 = self.up1(self.mix1(d3, f))
            return self.up3(self.up2(self.mix2(d2, up1)))

    return Dehaze


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A trained-looking official net (nonzero offsets, moved running statistics), saved the way
    train_aecrnet.py saves it (DataParallel 'module.' names, numpy scalars in the pickle)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = _official_modules(torch)(ngf=8)
    with torch.no_grad():
        # Offsets of a pixel or so and a DCN branch that matters, so that a wrong offset
        # layout shows in the network output.
        net.dcn_block.dcn.weight.normal_(0, 0.1)
        net.dcn_block.dcn.conv_offset_mask.weight.normal_(0, 0.05)
        net.dcn_block.dcn.conv_offset_mask.bias.normal_(0, 1.0)
        net.mix1.w.fill_(-1.5)
    net.train()
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        with torch.no_grad():
            net(torch.rand(2, 3, 16, 20, generator=gen))
    path = tmp_path_factory.mktemp("official") / "its_train_cdnet.pk"
    torch.save({"step": 10, "max_psnr": np.float64(30.0), "psnrs": [np.float64(30.0)],
                "model": {"module." + k: v for k, v in net.state_dict().items()}}, str(path))
    return torch, net, str(path)


def _ms_net_from(ckpt: str, ngf: int = 8):
    from src.nets.aecrnet import AECRNet

    net = AECRNet(ngf=ngf, offset_nudge=0.0)
    values = ms.load_checkpoint(ckpt)
    names = {n for n, _ in net.parameters_and_names()}
    assert set(values) == names  # no missing, no unexpected parameters
    ms.load_param_into_net(net, values, strict_load=True)
    return net


def test_official_checkpoint_converts_and_loads_by_name(official, tmp_path):
    torch, tnet, path = official
    with pytest.raises(UserError, match="--trust-pickle"):
        convert_torch.convert_file("aecrnet", path, str(tmp_path / "x.ckpt"))
    dst = str(tmp_path / "aecrnet.ckpt")
    assert convert_torch.main(["aecrnet", path, dst, "--trust-pickle"]) == 0
    net = _ms_net_from(dst)
    for name, p in net.parameters_and_names():
        np.testing.assert_array_equal(p.asnumpy(), tnet.state_dict()[name].numpy(), err_msg=name)


def test_port_matches_the_official_network(official, tmp_path):
    """Eval mode (running statistics) and train mode (batch whitening + running-stat update)
    give the PyTorch outputs, deformable offsets included."""
    torch, tnet, path = official
    dst = str(tmp_path / "aecrnet.ckpt")
    convert_torch.convert_file("aecrnet", path, dst, trust_pickle=True)
    net = _ms_net_from(dst)
    x = np.random.default_rng(2).random((2, 3, 16, 20), dtype=np.float32)
    offsets = tnet.dcn_block.dcn.conv_offset_mask(
        tnet.down3(tnet.down2(tnet.down1(torch.zeros(1, 3, 16, 20)))))[:, :18]
    assert float(offsets.detach().abs().max()) > 1.0

    tnet.eval()
    net.set_train(False)
    with torch.no_grad():
        want = tnet(torch.from_numpy(x)).numpy()
    got = net(ms.Tensor(x)).asnumpy()
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)

    tnet.train()
    net.set_train(True)
    with torch.no_grad():
        want = tnet(torch.from_numpy(x)).numpy()
    got = net(ms.Tensor(x)).asnumpy()
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-3)
    np.testing.assert_allclose(net.deconv.running_mean.asnumpy(),
                               tnet.deconv.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(net.deconv.running_deconv.asnumpy(),
                               tnet.deconv.running_deconv.numpy(), atol=1e-4)


def test_torchvision_vgg_converts_and_matches(tmp_path):
    torch = pytest.importorskip("torch")
    from src.nets.vgg import CFGS, VGGFeatures

    torch.manual_seed(0)
    layers, cin = [], 3
    for v in CFGS["vgg16"]:
        if v == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            layers += [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.ReLU(inplace=True)]
            cin = v
    features = torch.nn.Sequential(*layers)
    model = torch.nn.Module()
    model.features = features
    model.classifier = torch.nn.Sequential(torch.nn.Linear(4, 2))
    src = tmp_path / "vgg16.pth"
    torch.save(model.state_dict(), str(src))
    dst = str(tmp_path / "vgg16.ckpt")
    convert_torch.convert_file("vgg16", str(src), dst)
    vgg = VGGFeatures("vgg16", ["relu1_2", "relu2_2", "relu3_3"], weights=dst, normalize=True)
    assert vgg.pretrained
    x = np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32)
    outs = vgg(ms.Tensor(x))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = (torch.from_numpy(x) - mean) / std
    want = []
    with torch.no_grad():
        for i, layer in enumerate(features[:16]):
            h = layer(h)
            if i in (3, 8, 15):
                want.append(h.clone().numpy())
    for got, ref in zip(outs, want):
        np.testing.assert_allclose(got.asnumpy(), ref, rtol=1e-4, atol=1e-4)


def test_released_checkpoint_names_convert_and_reproduce_pytorch(official, tmp_path, capsys):
    """The authors' released file: a training dict, `module.` names, and the two mixups
    called mix4 / mix5; it converts and gives the PyTorch network's output. The refusal
    without --trust-pickle is one plain line (no terminal escape codes)."""
    torch, tnet, _ = official
    state = {}
    for name, value in tnet.state_dict().items():
        name = {"mix1.w": "mix4.w", "mix2.w": "mix5.w"}.get(name, name)
        state["module." + name] = value
    path = str(tmp_path / "ITS_3_19_pretrain.pk")
    torch.save({"step": 5, "max_psnr": np.float64(37.0), "max_ssim": np.float64(0.99),
                "optimizer": {}, "model": state}, path)

    dst = str(tmp_path / "released.ckpt")
    assert convert_torch.main(["aecrnet", path, dst]) == 2
    err = capsys.readouterr().err
    assert "--trust-pickle" in err and "\x1b" not in err and len(err.strip().splitlines()) == 1

    assert convert_torch.main(["aecrnet", path, dst, "--trust-pickle"]) == 0
    net = _ms_net_from(dst)
    np.testing.assert_array_equal(net.mix1.w.asnumpy(), tnet.mix1.w.detach().numpy())
    x = np.random.default_rng(3).random((1, 3, 20, 24), dtype=np.float32)
    tnet.eval()
    net.set_train(False)
    with torch.no_grad():
        want = tnet(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net(ms.Tensor(x)).asnumpy(), want, atol=2e-5, rtol=1e-4)
