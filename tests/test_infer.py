"""--task infer: tiling and blending, file discovery and naming, and the job end to end on a
folder of awkward photos (odd sizes, gray JPEG, RGBA PNG, 16-bit PNG, a corrupt file) from a
checkpoint and from the exported MindIR, and LSID on a raw DNG."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from src.engine.infer import find_inputs, output_names, restore, tile_starts

# --------------------------------------------------------------------------- tiling


def pixelwise(x: np.ndarray, scale: int = 1) -> np.ndarray:
    """A 'net' whose output pixel depends only on its input pixel: tiled == one pass."""
    rgb = np.stack([x[:, 0] * 0.5 + 0.1, x[:, 1] ** 2, 1.0 - x[:, -1]], axis=1)
    return np.repeat(np.repeat(rgb, scale, axis=2), scale, axis=3)


def test_tiles_cover_and_overlap():
    assert tile_starts(30, 32, 8) == [0]
    starts = tile_starts(100, 32, 8)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 32 - 8 for a, b in zip(starts, starts[1:]))  # each pair shares >= 8


@pytest.mark.parametrize("channels,scale", [(3, 1), (4, 2)])
def test_tiled_restore_equals_one_pass(channels, scale):
    rng = np.random.default_rng(0)
    x = rng.random((channels, 70, 133)).astype(np.float32)
    calls = []

    def predict(batch):
        calls.append(batch.shape)
        return pixelwise(batch, scale)

    one = restore(predict, x, multiple=4, tile=(512, 512), overlap=8, scale=scale)
    assert calls == [(1, channels, 72, 136)] and one.shape == (3, 70 * scale, 133 * scale)
    calls.clear()
    tiled = restore(predict, x, multiple=4, tile=(32, 32), overlap=8, scale=scale)
    assert len(calls) > 1 and set(calls) == {(1, channels, 32, 32)}
    np.testing.assert_allclose(tiled, one, atol=1e-6)
    np.testing.assert_allclose(one, pixelwise(x[None], scale)[0], atol=1e-6)


def test_overlaps_are_blended_not_cut():
    """Tiles that disagree (as a net with global context does) meet in a ramp, no seam."""
    x = np.zeros((3, 8, 100), np.float32)
    level = iter(range(100))

    def predict(batch):  # each tile returns its own constant
        return np.full((1, 3) + batch.shape[2:], float(next(level)), np.float32)

    out = restore(predict, x, multiple=4, tile=(8, 40), overlap=16, scale=1)[0, 0]
    steps = np.diff(out)
    assert steps.min() >= 0 and steps.max() < 0.2  # monotone, in small steps


def test_fixed_size_graph_only_gets_its_size():
    rng = np.random.default_rng(1)

    def predict(batch):
        assert batch.shape[2:] == (32, 32)
        return pixelwise(batch)

    for h, w in ((10, 13), (32, 32), (45, 71)):
        x = rng.random((3, h, w)).astype(np.float32)
        out = restore(predict, x, multiple=4, tile=(32, 32), overlap=8, fixed=True)
        np.testing.assert_allclose(out, pixelwise(x[None])[0], atol=1e-6)


def test_inputs_and_output_names(tmp_path):
    for rel in ("a.jpg", "a.PNG", "sub/b.tif", "notes.txt", ".hidden.png", ".git/c.png"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = find_inputs(str(tmp_path), (".png", ".jpg", ".tif"))
    rels = [rel for _, rel in found]
    assert rels == ["a.PNG", "a.jpg", "sub/b.tif"]
    assert output_names(rels) == {"a.PNG": "a_png.png", "a.jpg": "a_jpg.png",
                                  "sub/b.tif": "sub/b.png"}
    assert find_inputs(str(tmp_path / "sub" / "b.tif"), (".png",)) == [
        (str(tmp_path / "sub" / "b.tif"), "b.tif")]


# --------------------------------------------------------------------------- the job

ms = pytest.importorskip("mindspore")

from tests.e2e_helpers import REPO, clean_env, read_json, start  # noqa: E402

AECR = ["--net.ngf=4", "--net.num_blocks=1", "--net.num_dcn=1", "--loss.cr_weight=0"]


def _awkward_photos(folder: str) -> None:
    import cv2

    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "sub"), exist_ok=True)
    cv2.imwrite(os.path.join(folder, "odd.png"), (rng.random((37, 53, 3)) * 255).astype(np.uint8))
    cv2.imwrite(os.path.join(folder, "sub", "gray.jpg"),
                (rng.random((30, 41)) * 255).astype(np.uint8))
    cv2.imwrite(os.path.join(folder, "rgba.png"), (rng.random((20, 28, 4)) * 255).astype(np.uint8))
    cv2.imwrite(os.path.join(folder, "deep.png"),
                (rng.random((26, 22, 3)) * 65535).astype(np.uint16))
    with open(os.path.join(folder, "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not a photo")


def _recipe(config: str, overrides, tmp_path):
    from src.config import load_config
    from src.recipes.base import RecipeContext, get_recipe

    cfg = load_config(os.path.join(REPO, config), list(overrides))
    ms.set_seed(0)
    recipe = get_recipe(cfg["model"])(cfg, RecipeContext(data_dir="", output_dir=str(tmp_path)))
    recipe.build()
    return cfg, recipe


def _save_checkpoint(recipe, folder: str) -> str:
    from src.engine.checkpoint import CheckpointManager

    # Weights away from their initial values, as after training.
    rng = np.random.default_rng(3)
    for p in recipe.net.trainable_params() if hasattr(recipe, "net") else []:
        p.set_data(ms.Tensor((p.asnumpy() + rng.normal(0, 0.05, p.shape)).astype(np.float32)))
    return CheckpointManager(folder).save(7, recipe.checkpoint_cells())


def _only(pattern: str) -> str:
    found = glob.glob(pattern)
    assert len(found) == 1, found
    return found[0]


def _read_png(path: str) -> np.ndarray:
    import cv2

    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


@pytest.mark.slow
def test_infer_awkward_photos_from_checkpoint_and_mindir(tmp_path):
    cfg, recipe = _recipe("configs/aecrnet_demo.yaml", [a[2:] for a in AECR], tmp_path)
    ckpt = _save_checkpoint(recipe, str(tmp_path / "given"))
    photos = str(tmp_path / "photos")
    _awkward_photos(photos)
    env = clean_env(str(tmp_path / "obs"))
    common = ["--config=configs/aecrnet_demo.yaml", "--data_url=" + photos,
              "--train_url=" + str(tmp_path / "run")] + AECR

    res = start(common + ["--task=infer", "--mode=pynative", "--eval.checkpoint=" + ckpt,
                          "--infer.log_every=2"], env)
    assert res.returncode == 1, res.stdout + res.stderr   # the corrupt file counts
    assert "skipped broken.jpg: corrupt image" in res.stdout
    assert "4/5 images" in res.stdout and "images/s, ETA" in res.stdout
    run = read_json(_only(str(tmp_path / "run" / "infer" / "*" / "run.json")))
    assert run["infer"]["images"] == 4 and run["infer"]["failed"] == ["broken.jpg"]
    out_dir = os.path.dirname(_only(str(tmp_path / "run" / "infer" / "*" / "restored" / "odd.png")))
    assert sorted(os.path.relpath(p, out_dir) for p in glob.glob(out_dir + "/**/*.png",
                                                                 recursive=True)) == \
        ["deep.png", "odd.png", "rgba.png", os.path.join("sub", "gray.png")]

    # Each output is the recipe's predict on that input, at the input's size and depth.
    for rel, src in (("odd.png", "odd.png"), ("sub/gray.png", "sub/gray.jpg"),
                     ("rgba.png", "rgba.png"), ("deep.png", "deep.png")):
        x, info = recipe.infer_input(os.path.join(photos, src))
        want = restore(recipe.predict, x, multiple=4, tile=(512, 512), overlap=32)
        got = _read_png(os.path.join(out_dir, rel))
        top = 65535.0 if info["bits"] == 16 else 255.0
        assert got.shape[:2] == x.shape[1:] and got.dtype == (np.uint16 if top > 255 else np.uint8)
        rgb = got[:, :, 2::-1].astype(np.float32) / top   # BGR(A) → RGB
        assert np.abs(rgb - want.transpose(1, 2, 0)).max() <= 1.5 / top + 1e-4, rel
        if info["alpha"] is not None:
            np.testing.assert_array_equal(got[:, :, 3], np.round(info["alpha"] * 255))

    # The MindIR (AECR-Net exports one size) restores the same photos in tiles of its size.
    res = start(common + ["--task=export", "--eval.checkpoint=" + ckpt, "--export.height=32",
                          "--export.width=32"], env)
    assert res.returncode == 0, res.stdout + res.stderr
    mindir = _only(str(tmp_path / "run" / "export" / "*" / "export" / "aecrnet.mindir"))
    res = start(common + ["--task=infer", "--eval.checkpoint=" + mindir,
                          "--infer.overlap=8"], env)
    assert res.returncode == 1 and "32 x 32, in tiles" in res.stdout, res.stdout + res.stderr
    runs = sorted(glob.glob(str(tmp_path / "run" / "infer" / "*")))
    assert len(runs) == 2  # the second job has its own folder
    for rel, src in (("odd.png", "odd.png"), ("rgba.png", "rgba.png")):
        x, _ = recipe.infer_input(os.path.join(photos, src))
        want = restore(recipe.predict, x, multiple=4, tile=(32, 32), overlap=8, fixed=True)
        got = _read_png(os.path.join(runs[1], "restored", rel))[:, :, 2::-1] / 255.0
        assert np.abs(got - want.transpose(1, 2, 0)).max() <= 1.5 / 255 + 1e-4, rel


@pytest.mark.slow
def test_lsid_infer_on_a_dng_matches_predict(tmp_path):
    from src.data.synth_raw import write_dng

    overrides = ["net.base_channels=4", "export.height=16", "export.width=16"]
    cfg, recipe = _recipe("configs/lsid_demo.yaml", overrides, tmp_path)
    ckpt = _save_checkpoint(recipe, str(tmp_path / "given"))
    raws = tmp_path / "raws"
    raws.mkdir()
    rng = np.random.default_rng(0)
    mosaic = (512 + rng.integers(0, 60, (68, 100))).astype(np.uint16)  # dark, 34x50 packed
    write_dng(str(raws / "night_0.1s.dng"), mosaic, exposure_time=0.1)
    (raws / "broken.dng").write_bytes(b"II*\x00 not a raw")
    env = clean_env(str(tmp_path / "obs"))
    common = ["--config=configs/lsid_demo.yaml", "--data_url=" + str(raws),
              "--train_url=" + str(tmp_path / "run"), "--infer.ratio=100"] + \
        ["--" + o for o in overrides]
    res = start(common + ["--task=infer", "--mode=pynative", "--eval.checkpoint=" + ckpt], env)
    assert res.returncode == 1 and "skipped broken.dng: cannot decode raw" in res.stdout, \
        res.stdout + res.stderr
    x, _ = recipe.infer_input(str(raws / "night_0.1s.dng"))
    assert x.shape == (4, 34, 50) and x.max() <= 1.0
    want = restore(recipe.predict, x, multiple=16, tile=(512, 512), overlap=32, scale=2)
    got = _read_png(_only(str(tmp_path / "run" / "infer" / "*" / "restored" / "night_0.1s.png")))
    assert got.shape == (68, 100, 3)  # the model's output size: twice the packed size
    assert np.abs(got[:, :, ::-1] / 255.0 - want.transpose(1, 2, 0)).max() <= 1.5 / 255 + 1e-4

    # Any-size MindIR: exported once, checked at two sizes, and infer on it gives the same.
    res = start(common + ["--task=export", "--eval.checkpoint=" + ckpt], env)
    assert res.returncode == 0 and "(any height and width)" in res.stdout, res.stdout + res.stderr
    mindir = _only(str(tmp_path / "run" / "export" / "*" / "export" / "lsid.mindir"))
    res = start(common + ["--task=infer", "--eval.checkpoint=" + mindir,
                          "--data_url=" + str(raws / "night_0.1s.dng")], env)
    assert res.returncode == 0 and "any height x width" in res.stdout, res.stdout + res.stderr
    runs = sorted(glob.glob(str(tmp_path / "run" / "infer" / "*")))
    got = _read_png(os.path.join(runs[-1], "restored", "night_0.1s.png"))
    assert np.abs(got[:, :, ::-1] / 255.0 - want.transpose(1, 2, 0)).max() <= 1.5 / 255 + 1e-4


@pytest.mark.slow
def test_singan_generator_exports_for_any_size(tmp_path):
    """SinGAN-Dehaze's generator traces with free height and width; the file runs two sizes."""
    from mindspore import nn

    from src.engine.export import export_mindir
    from src.engine.infer import MindIRNet
    from src.nets.resnet_gan import ResnetGenerator

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)  # loaded graphs run in graph mode (MindSpore 2.0)
    try:
        ms.set_seed(0)
        g = ResnetGenerator(ngf=4, n_blocks=1)
        x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
        path = export_mindir(g, [x], str(tmp_path / "g.mindir"), dynamic=True, multiple=4)
        graph = MindIRNet(path)
        assert graph.dynamic and isinstance(g, nn.Cell)
        y = np.random.default_rng(1).uniform(-1, 1, (1, 3, 20, 28)).astype(np.float32)
        np.testing.assert_allclose(graph(y), g(ms.Tensor(y)).asnumpy(), atol=1e-4)
    finally:
        ms.set_context(mode=previous)
