"""SinGAN-Dehaze recipe: unpaired data, schedules, config checks, the two-step GAN update (each
step touches only its own networks), finite loss terms, resume, predict/export/synth."""
from __future__ import annotations

import os

import numpy as np
import pytest

from src.data.unpaired import UnpairedDehaze, random_resized_crop_box
from src.errors import UserError

ms = pytest.importorskip("mindspore")

from src.config import load_config  # noqa: E402
from src.recipes.base import RecipeContext, get_recipe  # noqa: E402
from src.recipes.singan_dehaze import (TERMS, from_net, linear_decay_lr,  # noqa: E402
                                       to_net, validate_config)

TINY = [
    "data.train.crop=32", "data.num_workers=0", "net.generator.ngf=4",
    "net.discriminator.ndf=4", "loss.nce.num_patches=16", "loss.nce.mlp_dim=8",
    "loss.mmd.num_samples=16", "train.max_steps=6", "synth.num_hazy=3", "synth.num_clear=2",
    "synth.num_test=1", "synth.height=40", "synth.width=36", "synth.photos=false",
    "export.height=32", "export.width=32",
]


pytestmark = pytest.mark.usefixtures("pynative_mode")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("singan_data"))
    cfg = load_config("configs/singan_dehaze_demo.yaml", TINY)
    summary = get_recipe("singan_dehaze").synthesize(cfg, root)
    assert summary["trainA"] == 3 and summary["trainB"] == 2 and summary["test"] == 1
    return root


def _recipe(data_dir, tmp_path, *extra, jit=False):
    ms.set_seed(0)
    cfg = load_config("configs/singan_dehaze_demo.yaml", TINY + ["train.jit=%s" % jit]
                      + list(extra))
    recipe = get_recipe("singan_dehaze")(cfg, RecipeContext(data_dir=data_dir,
                                                            output_dir=str(tmp_path)))
    recipe.build()
    return recipe


def _snapshot(cell):
    return {p.name: p.asnumpy().copy() for p in cell.get_parameters()}


def _changed(before, cell):
    return [p.name for p in cell.get_parameters()
            if not np.array_equal(before[p.name], p.asnumpy())]


# -- data ---------------------------------------------------------------------------------

def test_unpaired_source_samples_independently(data_dir):
    src = UnpairedDehaze(data_dir, crop=24, scale=(0.5, 1.0))
    assert len(src) == 3                       # max(#hazy, #clear)
    a = src.load(1, np.random.default_rng(7))
    b = src.load(1, np.random.default_rng(7))
    assert set(a) == {"hazy", "clear"}
    for key in a:
        assert a[key].shape == (3, 24, 24) and a[key].dtype == np.float32
        assert 0.0 <= a[key].min() and a[key].max() <= 1.0
        np.testing.assert_array_equal(a[key], b[key])    # same rng → same sample
    # The hazy image follows the index, the clear one the sample rng: over a few rngs every
    # trainB image turns up for the same index.
    seen = []
    augment = src._augment
    src._augment = lambda path, rng: (seen.append(path), augment(path, rng))[1]
    for seed in range(12):
        src.load(0, np.random.default_rng(seed))
    assert {p for p in seen if "trainA" in p} == {src.hazy[0]}
    assert {p for p in seen if "trainB" in p} == set(src.clear)


def test_unpaired_source_errors(tmp_path, data_dir):
    with pytest.raises(UserError, match="trainA"):
        UnpairedDehaze(str(tmp_path))
    os.makedirs(tmp_path / "trainA")
    os.makedirs(tmp_path / "trainB")
    with pytest.raises(UserError, match="no images"):
        UnpairedDehaze(str(tmp_path))
    with pytest.raises(UserError, match="scale"):
        UnpairedDehaze(data_dir, scale=(0.5, 2.0))
    with pytest.raises(UserError, match="crop"):
        UnpairedDehaze(data_dir, crop=0)


def test_random_resized_crop_box_stays_inside():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(rng, 40, 60, (0.3, 1.0), (0.75, 4 / 3))
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert 0.25 * 2400 <= h * w <= 2400
    # Impossible aspect range: falls back to the largest centred crop within the ratio.
    assert random_resized_crop_box(rng, 10, 100, (0.9, 1.0), (1.0, 1.0)) == (0, 45, 10, 10)


# -- configuration ------------------------------------------------------------------------

def test_linear_decay_schedule():
    lr = linear_decay_lr(2e-4, 10, 4)
    assert len(lr) == 10 and lr[:4] == [2e-4] * 4
    assert all(a > b for a, b in zip(lr[3:], lr[4:]))
    assert lr[-1] == pytest.approx(2e-4 / 7)      # CUT: 1 − k/(decay + 1), never 0
    assert linear_decay_lr(1.0, 3, 10) == [1.0, 1.0, 1.0]


def test_value_range_conversion():
    x = np.array([0.0, 0.5, 1.0], np.float32)
    np.testing.assert_allclose(to_net(x), [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(from_net(np.array([-1.5, 0.0, 1.0])), [0.0, 0.5, 1.0])


@pytest.mark.parametrize("override, key", [
    ("loss.nce.layers=[4,0]", "loss.nce.layers"),
    ("loss.nce.tau=0", "loss.nce.tau"),
    ("loss.perceptual.weights=[1.0]", "loss.perceptual.weights"),
    ("loss.weights.mmd=-1", "loss.weights.mmd"),
    ("eval.pad_multiple=6", "eval.pad_multiple"),
    ("optim.d.beta1=1.5", "optim.d.beta1"),
])
def test_config_errors_name_the_key(override, key):
    cfg = load_config("configs/singan_dehaze_demo.yaml", [override])
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_shipped_configs_load_and_validate():
    for name in ("singan_dehaze_demo", "singan_dehaze_sots", "singan_dehaze_ohaze"):
        cfg = load_config("configs/%s.yaml" % name)
        validate_config(cfg)
    demo = load_config("configs/singan_dehaze_demo.yaml")
    assert demo["data_url"] == "obs://demo/singan/data"
    assert demo["train_url"] == "obs://demo/singan/out"


# -- the GAN step -------------------------------------------------------------------------

def test_graph_gan_step_updates_only_its_own_networks_and_logs_every_term(data_dir, tmp_path):
    recipe = _recipe(data_dir, tmp_path, jit=True)      # compiled steps, as in training
    batches = list(recipe.train_loader())
    hazy, clear = to_net(batches[0]["hazy"]), to_net(batches[0]["clear"])
    draws = recipe.random_draws(np.random.default_rng(0), 1, 32, 32)
    g0, d0, h0 = _snapshot(recipe.g), _snapshot(recipe.d), _snapshot(recipe.head)
    vgg = _snapshot(recipe.vgg)
    out = recipe.step_g(hazy, clear, *draws)
    assert _changed(d0, recipe.d) == []                     # G step: D untouched
    assert len(_changed(g0, recipe.g)) == len(g0)           # every G tensor moved
    assert len(_changed(h0, recipe.head)) == len(h0)        # so did the NCE head
    g1, h1 = _snapshot(recipe.g), _snapshot(recipe.head)
    recipe.step_d(clear, out[-1])
    assert _changed(g1, recipe.g) == [] and _changed(h1, recipe.head) == []   # D step: G untouched
    assert len(_changed(d0, recipe.d)) == len(d0)

    for batch in batches:
        terms = recipe.train_step(batch)
    assert _changed(vgg, recipe.vgg) == []                  # VGG stays frozen
    assert tuple(terms) == TERMS
    values = {k: float(v.asnumpy()) for k, v in terms.items()}
    assert all(np.isfinite(v) for v in values.values()), values
    assert all(values[k] > 0 for k in ("g_gan", "nce", "identity", "perceptual", "mmd",
                                       "d_real")), values
    assert values["g_total"] == pytest.approx(
        values["g_gan"] + values["nce"] + values["identity"] + values["perceptual"]
        + values["mmd"], rel=1e-5)
    assert values["d_total"] == pytest.approx(0.5 * (values["d_real"] + values["d_fake"]),
                                              rel=1e-5)


def _state(recipe):
    return {"%s/%s" % (key, p.name): p.asnumpy().copy()
            for key, cell in recipe.checkpoint_cells().items() for p in cell.get_parameters()
            if "learning_rate" not in p.name}


def test_resume_restores_nets_optimizers_and_step(data_dir, tmp_path):
    from src.engine.checkpoint import CheckpointManager

    a = _recipe(data_dir, tmp_path)
    batches = list(a.train_loader())
    for batch in batches[:2]:
        a.train_step(batch)
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=2)
    path = manager.save(2, a.checkpoint_cells(), {"epoch": 0})
    saved = _state(a)
    assert any(k.startswith("opt_g/") and "moment1" in k for k in saved)
    expected = {k: float(v.asnumpy()) for k, v in a.train_step(batches[2]).items()}

    # Same seed (the frozen VGG is not checkpointed: without weights it is the seeded random
    # init); every checkpointed tensor — nets, Adam moments, global steps — scrambled.
    b = _recipe(data_dir, tmp_path)
    for cell in b.checkpoint_cells().values():
        for p in cell.get_parameters():
            if "learning_rate" not in p.name:
                p.set_data(ms.Tensor(np.full(p.shape, 3, p.asnumpy().dtype)))
    assert manager.load(path, b.checkpoint_cells())["step"] == 2
    restored = _state(b)
    assert restored.keys() == saved.keys()
    for name, value in saved.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)
    assert int(b.opt_g.global_step.asnumpy().reshape(-1)[0]) == 2
    assert int(b.opt_d.global_step.asnumpy().reshape(-1)[0]) == 2
    # The next step continues exactly: same LR, same moments, same random draws.
    got = {k: float(v.asnumpy()) for k, v in b.train_step(batches[2]).items()}
    for key in TERMS:
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key


def test_predict_export_describe(data_dir, tmp_path):
    recipe = _recipe(data_dir, tmp_path)
    sample = next(iter(recipe.val_samples()))
    assert sample["input"].shape == (3, 40, 36)
    out = recipe.predict(sample["input"][None])
    assert out.shape == (1, 3, 40, 36) and 0.0 <= out.min() and out.max() <= 1.0
    cell, examples = recipe.export_cell()
    assert cell is recipe.g and examples[0].shape == (1, 3, 32, 32)
    assert -1.0 <= examples[0].min() and examples[0].max() <= 1.0
    from src.engine.export import export_mindir

    path = export_mindir(cell, examples, str(tmp_path / "export" / "singan_dehaze.mindir"))
    assert os.path.getsize(path) > 0          # export_mindir re-loads it and compares outputs
    info = recipe.describe()
    assert info["generator_parameters"] > 0 and info["vgg_weights"].startswith("NONE")
    assert set(recipe.checkpoint_cells()) == {"g", "d", "head", "opt_g", "opt_d"}


@pytest.mark.parametrize("task", ["eval", "export", "infer"])
def test_tasks_that_only_run_the_generator_build_it_alone(data_dir, tmp_path, task):
    """No D, NCE head, VGG16 or optimizers for eval / export / infer: a training checkpoint's
    generator loads into it and restores the photos exactly as the trained recipe does."""
    from src.engine.checkpoint import CheckpointManager, load_checkpoint

    trained = _recipe(data_dir, tmp_path)
    trained.train_step(next(iter(trained.train_loader())))
    path = CheckpointManager(str(tmp_path / "ckpt")).save(1, trained.checkpoint_cells(), {})
    x = next(iter(trained.val_samples()))["input"][None]

    cfg = load_config("configs/singan_dehaze_demo.yaml", TINY)
    recipe = get_recipe("singan_dehaze")(cfg, RecipeContext(
        data_dir=data_dir, output_dir=str(tmp_path), task=task))
    recipe.build()
    assert set(recipe.checkpoint_cells()) == {"g"}
    assert not hasattr(recipe, "vgg") and recipe.d is None
    assert recipe.describe()["vgg_weights"] == "not built (task %s: no loss)" % task
    assert load_checkpoint(path, recipe.checkpoint_cells())["step"] == 1
    np.testing.assert_allclose(recipe.predict(x), trained.predict(x), rtol=1e-5, atol=1e-6)
