"""The SinGAN-Dehaze demo config stays runnable: its own widths, crops, loss weights and
identity term, on its own synthetic data, train and the content (PatchNCE) loss falls."""
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
        "train.max_steps=%d" % STEPS, "train.jit=false", "data.num_workers=0",
        "synth.num_hazy=4", "synth.num_clear=4", "synth.num_test=1"])
    assert cfg["loss"]["nce"]["identity"] is True      # the demo's content lever is on
    data = str(tmp_path / "data")
    recipe_cls = get_recipe("singan_dehaze")
    recipe_cls.synthesize(cfg, data)
    ms.set_seed(0)
    recipe = recipe_cls(cfg, RecipeContext(data_dir=data, output_dir=str(tmp_path / "out")))
    recipe.build()
    tr = cfg["data"]["train"]
    source = UnpairedDehaze(data, crop=tr["crop"], scale=tr["scale"], ratio=tr["ratio"],
                            hflip=tr["hflip"])
    nce = []
    for step in range(STEPS):
        sample = source.load(step, np.random.default_rng(step))
        batch = {k: v[None] for k, v in sample.items()}
        terms = {k: float(v.asnumpy()) for k, v in recipe.train_step(batch).items()}
        assert all(np.isfinite(v) for v in terms.values()), terms
        nce.append(terms["nce"])
    first, last = np.mean(nce[:6]), np.mean(nce[-6:])
    assert last < 0.85 * first, "PatchNCE %.2f → %.2f over %d steps" % (first, last, STEPS)
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
