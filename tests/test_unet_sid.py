"""The SID U-Net against the authors' TensorFlow network: depth-to-space order, parameter
shapes, a numpy forward pass, shapes at 512; and the recipe: training lowers the loss, the
MindIR export round-trips."""
from __future__ import annotations

import os

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "lsid_demo.yaml")

from src.nets.unet_sid import (DepthToSpace, UNetSID, count_parameters,  # noqa: E402
                               depth_to_space_reference)


def test_depth_to_space_is_tensorflows_order():
    c = 3
    x = np.arange(12, dtype=np.float32).reshape(1, 12, 1, 1)  # channel k holds k
    ref = depth_to_space_reference(x)
    # tf.nn.depth_to_space: out[2h+i, 2w+j, c] = in[h, w, (2i+j)·C + c]
    for i in range(2):
        for j in range(2):
            for ch in range(c):
                assert ref[0, ch, i, j] == (2 * i + j) * c + ch
    rng = np.random.default_rng(0)
    for shape in [(2, 12, 3, 5), (1, 48, 4, 2)]:
        a = rng.random(shape, dtype=np.float32)
        np.testing.assert_array_equal(DepthToSpace(2)(ms.Tensor(a)).asnumpy(),
                                      depth_to_space_reference(a))
    # PyTorch's pixel_shuffle order (c·4 + 2i + j) is a different layout: must not match.
    torch_order = x.reshape(1, c, 2, 2, 1, 1).transpose(0, 1, 4, 2, 5, 3).reshape(1, c, 2, 2)
    assert not np.array_equal(torch_order, ref)


def test_parameters_match_the_authors_network():
    net = UNetSID()
    widths = [32, 64, 128, 256, 512]
    expected = []
    cin = 4
    for level, w in enumerate(widths, 1):           # g_conv1 .. g_conv5 (slim: weights+biases)
        expected += [("conv%d_1.weight" % level, (w, cin, 3, 3)), ("conv%d_1.bias" % level, (w,)),
                     ("conv%d_2.weight" % level, (w, w, 3, 3)), ("conv%d_2.bias" % level, (w,))]
        cin = w
    for level, w in zip(range(6, 10), reversed(widths[:4])):
        # upsample_and_concat: tf.Variable [2, 2, out, in], no bias; then g_conv6..9
        expected += [("up%d.weight" % level, (2 * w, w, 2, 2)),
                     ("conv%d_1.weight" % level, (w, 2 * w, 3, 3)), ("conv%d_1.bias" % level, (w,)),
                     ("conv%d_2.weight" % level, (w, w, 3, 3)), ("conv%d_2.bias" % level, (w,))]
    expected += [("conv10.weight", (12, 32, 1, 1)), ("conv10.bias", (12,))]
    got = {p.name: tuple(p.shape) for p in net.trainable_params()}
    assert got == dict(expected)
    assert count_parameters(net) == 7760268  # the released Sony model
    # Initialisation as TF-slim / the release: zero biases, truncated normal(0.02) deconvs.
    assert not np.any(net.conv3_1.bias.asnumpy())
    up = net.up6.weight.asnumpy()
    assert np.abs(up).max() <= 0.04 and 0.015 < up.std() < 0.02


def _conv(x, w, b):
    k = w.shape[-1]
    p = k // 2
    h, wd = x.shape[1:]
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    out = np.zeros((w.shape[0], h, wd))
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("oc,chw->ohw", w[:, :, dy, dx], xp[:, dy:dy + h, dx:dx + wd])
    return out + b[:, None, None]


def _lrelu(x):
    return np.maximum(0.2 * x, x)


def _numpy_unet(params, x):
    """train_Sony.py's `network`, NCHW, in numpy."""
    def level(name, t):
        t = _lrelu(_conv(t, params[name + "_1.weight"], params[name + "_1.bias"]))
        return _lrelu(_conv(t, params[name + "_2.weight"], params[name + "_2.bias"]))

    def pool(t):
        c, h, w = t.shape
        return t.reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))

    def up_concat(name, t, skip):
        w = params[name + ".weight"]  # (in, out, 2, 2): out[o, 2h+i, 2w+j] = Σ_c t[c,h,w] w[c,o,i,j]
        up = np.einsum("chw,coij->ohiwj", t, w).reshape(w.shape[1], 2 * t.shape[1], 2 * t.shape[2])
        return np.concatenate([up, skip])

    c1 = level("conv1", x)
    c2 = level("conv2", pool(c1))
    c3 = level("conv3", pool(c2))
    c4 = level("conv4", pool(c3))
    c5 = level("conv5", pool(c4))
    c6 = level("conv6", up_concat("up6", c5, c4))
    c7 = level("conv7", up_concat("up7", c6, c3))
    c8 = level("conv8", up_concat("up8", c7, c2))
    c9 = level("conv9", up_concat("up9", c8, c1))
    c10 = _conv(c9, params["conv10.weight"], params["conv10.bias"])
    return depth_to_space_reference(c10[None])[0]


def test_forward_matches_a_numpy_reference():
    net = UNetSID(base_channels=4, seed=3)
    rng = np.random.default_rng(0)
    for p in net.trainable_params():  # non-zero biases too, so every term is exercised
        p.set_data(ms.Tensor(rng.normal(0, 0.3, p.shape).astype(np.float32)))
    x = rng.random((1, 4, 16, 32), dtype=np.float32)
    params = {p.name: p.asnumpy().astype(np.float64) for p in net.trainable_params()}
    net.set_train(False)
    got = net(ms.Tensor(x)).asnumpy()
    want = _numpy_unet(params, x[0].astype(np.float64))
    assert got.shape == (1, 3, 32, 64)
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_shape_at_the_authors_crop():
    net = UNetSID()
    net.set_train(False)
    out = net(ms.Tensor(np.zeros((1, 4, 512, 512), np.float32)))
    assert out.shape == (1, 3, 1024, 1024)


@pytest.fixture(scope="module")
def lsid_data(tmp_path_factory):
    from src.data.raw_preprocess import preprocess_raws
    from src.data.synth_raw import synthesize_sid

    root = tmp_path_factory.mktemp("lsid")
    synthesize_sid(str(root / "raw"), num_scenes=2, num_test_scenes=0, num_val_scenes=1,
                   height=64, width=96)
    assert preprocess_raws(str(root / "raw"), str(root / "h5"), workers=0)["failed"] == []
    return root


def test_recipe_training_lowers_the_loss_and_exports(lsid_data):
    from src.config import load_config
    from src.engine.export import export_mindir, run_mindir
    from src.recipes.base import RecipeContext, get_recipe

    cfg = load_config(DEMO, [
        "data.train.crop=32", "data.num_workers=0", "optim.lr=1e-3", "train.max_steps=40",
        "export.height=32", "export.width=48"])
    recipe_cls = get_recipe("lsid")
    ms.set_seed(0)
    recipe = recipe_cls(cfg, RecipeContext(data_dir=str(lsid_data / "h5"),
                                           output_dir=str(lsid_data / "out")))
    recipe.build()
    assert recipe.output_scale() == 2
    batch = next(iter(recipe.train_loader()))
    assert batch["input"].shape == (1, 4, 32, 32) and batch["target"].shape == (1, 3, 64, 64)
    losses = [float(recipe.train_step(batch)["loss"].asnumpy()) for _ in range(25)]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses

    sample = next(iter(recipe.val_samples()))
    pred = recipe.predict(sample["input"][None])
    assert pred.shape == (1, 3, 64, 96) and 0 <= pred.min() and pred.max() <= 1

    cell, examples = recipe.export_cell()
    assert examples[0].shape == (1, 4, 32, 48)
    path = export_mindir(cell, examples, str(lsid_data / "out" / "lsid.mindir"), check=True)
    (out,) = run_mindir(path, examples[0])
    assert out.shape == (1, 3, 64, 96)


def test_recipe_rejects_sizes_the_unet_cannot_take():
    from src.config import load_config
    from src.errors import UserError
    from src.recipes.base import RecipeContext, get_recipe

    cfg = load_config(DEMO, ["data.train.crop=40"])
    with pytest.raises(UserError, match="divisible by 16"):
        get_recipe("lsid")(cfg, RecipeContext(data_dir="", output_dir=""))


@pytest.mark.usefixtures("pynative_mode")
def test_eval_reads_only_its_own_list(lsid_data, tmp_path):
    """An evaluation set with only its list file and its files (no training list): the eval
    job describes and evaluates it; an empty data.train is no error for it either."""
    import shutil

    from src.config import load_config
    from src.engine.runner import evaluate_recipe
    from src.recipes.base import RecipeContext, get_recipe

    h5 = lsid_data / "h5"
    data = tmp_path / "val_only"
    shutil.copy(str(h5 / "Sony_val_list.txt"), str(data.mkdir() or data))
    for sub in ("short", "long"):
        (data / "Sony" / sub).mkdir(parents=True)
        for f in (h5 / "Sony" / sub).glob("2*.h5"):
            shutil.copy(str(f), str(data / "Sony" / sub / f.name))
    assert not (data / "Sony_train_list.txt").exists()

    for over in ([], ["data.train.type="]):
        cfg = load_config(DEMO, ["data.num_workers=0", "eval.max_images=1"] + over)
        recipe = get_recipe("lsid")(cfg, RecipeContext(data_dir=str(data),
                                                       output_dir=str(tmp_path / "out"),
                                                       task="eval"))
        recipe.build()
        info = recipe.describe()
        assert "train_data" not in info and info["val_data"], info
        metrics = evaluate_recipe(recipe, cfg, str(tmp_path / "out"))
        assert metrics["count"] == 1 and metrics["reference_psnr"] is not None

    export = get_recipe("lsid")(cfg, RecipeContext(data_dir="", output_dir=str(tmp_path),
                                                   task="export"))
    export.build()
    assert "val_data" not in export.describe()
