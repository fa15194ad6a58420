"""The SinGAN-Dehaze demo config stays runnable: its own widths, crops, loss weights and
identity terms, on its own synthetic data, train and the content (PatchNCE) and identity
losses fall."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from src.config import load_config  # noqa: E402
from src.data.unpaired import UnpairedDehaze  # noqa: E402
from src.recipes.base import RecipeContext, get_recipe  # noqa: E402

STEPS = 24

pytestmark = pytest.mark.usefixtures("pynative_mode")


@pytest.mark.slow
def test_demo_config_trains_and_its_content_loss_falls(tmp_path):
    cfg = load_config("configs/singan_dehaze_demo.yaml", [
        "train.max_steps=%d" % STEPS, "data.num_workers=0",
        "synth.num_hazy=4", "synth.num_clear=4", "synth.num_test=1"])
    assert cfg["loss"]["nce"]["identity"] is True      # the demo's content levers are on
    assert cfg["loss"]["weights"]["identity"] > 0
    data = str(tmp_path / "data")
    recipe_cls = get_recipe("singan_dehaze")
    recipe_cls.synthesize(cfg, data)
    ms.set_seed(0)
    recipe = recipe_cls(cfg, RecipeContext(data_dir=data, output_dir=str(tmp_path / "out")))
    recipe.build()
    tr = cfg["data"]["train"]
    source = UnpairedDehaze(data, crop=tr["crop"], scale=tr["scale"], ratio=tr["ratio"],
                            hflip=tr["hflip"])
    nce, identity = [], []
    for step in range(STEPS):
        sample = source.load(step, np.random.default_rng(step))
        batch = {k: v[None] for k, v in sample.items()}
        terms = {k: float(v.asnumpy()) for k, v in recipe.train_step(batch).items()}
        assert all(np.isfinite(v) for v in terms.values()), terms
        nce.append(terms["nce"])
        identity.append(terms["identity"])
    for name, values in (("PatchNCE", nce), ("identity", identity)):
        first, last = np.mean(values[:6]), np.mean(values[-6:])
        assert last < 0.85 * first, "%s %.3f → %.3f over %d steps" % (name, first, last, STEPS)
    out = recipe.predict(source.load(0, np.random.default_rng(0))["hazy"][None])
    assert out.shape == (1, 3, tr["crop"], tr["crop"]) and np.isfinite(out).all()


TINY = ["data.train.crop=32", "net.generator.ngf=4", "net.discriminator.ndf=4",
        "loss.nce.num_patches=16", "loss.nce.mlp_dim=8", "loss.mmd.num_samples=16",
        "train.jit=false"]


def test_identity_nce_averages_the_clear_images_own_term(tmp_path):
    """loss.nce.identity adds CUT's NCE(clear, G(clear)) and averages: with clear = hazy the
    two halves are the same loss (the term is unchanged); with another clear image it is not."""
    rng = np.random.default_rng(0)
    hazy = rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    other = rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    nce = {}
    for identity in (False, True):
        ms.set_seed(0)
        cfg = load_config("configs/singan_dehaze_demo.yaml",
                          TINY + ["loss.nce.identity=%s" % str(identity).lower()])
        recipe = get_recipe("singan_dehaze")(cfg, RecipeContext(data_dir=str(tmp_path),
                                                                output_dir=str(tmp_path)))
        recipe.build()
        draws = recipe.random_draws(np.random.default_rng(1), 1, 32, 32)
        obj = recipe.g_objective
        nce[identity] = [float(obj(ms.Tensor(hazy), ms.Tensor(clear),
                                   *[ms.Tensor(d) for d in draws])[2].asnumpy())
                         for clear in (hazy, other)]
    assert nce[True][0] == pytest.approx(nce[False][0], rel=1e-5)
    assert nce[False][1] == pytest.approx(nce[False][0], rel=1e-6)   # no identity: clear unused
    assert abs(nce[True][1] - nce[False][1]) > 1e-3 * nce[False][1]


def test_identity_l1_is_the_clear_images_reconstruction_error(tmp_path):
    """loss.weights.identity adds w·mean|G(clear) − clear| to the G loss (and nothing at 0)."""
    rng = np.random.default_rng(0)
    hazy = rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    clear = rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    out = {}
    for weight in (0.0, 2.5):
        ms.set_seed(0)
        cfg = load_config("configs/singan_dehaze_demo.yaml",
                          TINY + ["loss.weights.identity=%s" % weight])
        recipe = get_recipe("singan_dehaze")(cfg, RecipeContext(data_dir=str(tmp_path),
                                                                output_dir=str(tmp_path)))
        recipe.build()
        draws = recipe.random_draws(np.random.default_rng(1), 1, 32, 32)
        terms = [float(t.asnumpy()) for t in recipe.g_objective(
            ms.Tensor(hazy), ms.Tensor(clear), *[ms.Tensor(d) for d in draws])[:6]]
        g_clear = recipe.g(ms.Tensor(clear)).asnumpy()
        out[weight] = (terms, float(np.abs(g_clear - clear).mean()))
    (terms0, _), (terms, l1) = out[0.0], out[2.5]
    assert terms0[3] == 0.0
    assert terms[3] == pytest.approx(2.5 * l1, rel=1e-5)
    assert terms[0] == pytest.approx(sum(terms[1:6]), rel=1e-5)      # g_total includes it
    assert terms[0] == pytest.approx(terms0[0] + terms[3], rel=1e-4)  # the rest is unchanged
