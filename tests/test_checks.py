"""Config values are checked before anything is staged: one `error:` line naming each bad key."""
from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import start
from src.checks import Checks, check_values
from src.config import load_config
from src.errors import UserError
from tests.e2e_helpers import REPO, clean_env

AECRNET = "configs/aecrnet_demo.yaml"
SINGAN = "configs/singan_dehaze_demo.yaml"
LSID = "configs/lsid_demo.yaml"


@pytest.fixture()
def run_main(capsys, tmp_path, monkeypatch):
    """start.main in-process (no MindSpore is imported on the way to the error); the root
    logger's handlers are restored afterwards."""
    for key in list(os.environ):
        if key.startswith(("MA_", "VC_", "MS_", "RANK", "OBS_", "S3_")) or key in (
                "DEVICE_ID", "ASCEND_DEVICE_ID", "RANK_TABLE_FILE"):
            monkeypatch.delenv(key, raising=False)
    # If a check were missing, the task would go on to stage: let it find nothing to touch.
    monkeypatch.setenv("OBS_MOCK_ROOT", str(tmp_path / "obs"))
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def run(args):
        capsys.readouterr()
        rc = start.main(args + ["--cache_dir=%s" % (tmp_path / "cache")])
        out, err = capsys.readouterr()
        return rc, out, err

    yield run
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


BAD = [
    # (config, override, key named in the error)
    (AECRNET, "optim.lr=0", "optim.lr"),
    (LSID, "optim.lr=-1e-4", "optim.lr"),
    (SINGAN, "optim.g.lr=0", "optim.g.lr"),
    (SINGAN, "optim.d.lr=-2e-4", "optim.d.lr"),
    (AECRNET, "optim.beta1=1.0", "optim.beta1"),
    (LSID, "schedule.decay_lr=0", "schedule.decay_lr"),
    (AECRNET, "data.batch_size=-1", "data.batch_size"),
    (LSID, "data.batch_size=0", "data.batch_size"),
    (AECRNET, "data.num_workers=-1", "data.num_workers"),
    (AECRNET, "data.prefetch=0", "data.prefetch"),
    (AECRNET, "sync.threads=0", "sync.threads"),
    (AECRNET, "sync.retries=-1", "sync.retries"),
    (AECRNET, "train.max_steps=0", "train.max_steps"),
    (AECRNET, "train.log_every=-1", "train.log_every"),
    (SINGAN, "train.eval_every=-5", "train.eval_every"),
    (LSID, "train.ckpt_every=-1", "train.ckpt_every"),
    (AECRNET, "train.keep_last=-1", "train.keep_last"),
    (AECRNET, "train.loss_scale=0", "train.loss_scale"),
    (AECRNET, "rank_table_timeout=0", "rank_table_timeout"),
    (AECRNET, "export.height=0", "export.height"),
    (AECRNET, "export.height=30", "export.height"),
    (LSID, "export.width=100", "export.width"),
    (SINGAN, "export.width=6", "export.width"),
    (SINGAN, "export.height=4", "export.height"),
    (AECRNET, "eval.pad_multiple=0", "eval.pad_multiple"),
    (AECRNET, "eval.pad_multiple=6", "eval.pad_multiple"),
    (LSID, "eval.pad_multiple=8", "eval.pad_multiple"),
    (AECRNET, "eval.max_images=-1", "eval.max_images"),
    (AECRNET, "data.train.crop=50", "data.train.crop"),
    (LSID, "data.train.crop=100", "data.train.crop"),
    (SINGAN, "data.train.crop=20", "data.train.crop"),
    (AECRNET, "loss.neg_num=5", "loss.neg_num"),          # the demo's batch is 4
    (AECRNET, "schedule.warmup_steps=2000", "schedule.warmup_steps"),  # = max_steps
    (SINGAN, "loss.nce.tau=0", "loss.nce.tau"),
    (AECRNET, "seed=-1", "seed"),
]


@pytest.mark.parametrize("config, override, key", BAD)
@pytest.mark.parametrize("task", ["plan", "train"])
def test_bad_value_is_one_error_line_naming_the_key(run_main, config, override, key, task):
    rc, out, err = run_main(["--task=%s" % task, "--config=%s" % config, "--" + override])
    assert rc == 2, err
    lines = err.strip().splitlines()
    if task == "plan":  # the key's line among the plan's other failed checks (no data here)
        assert json.loads(out)["checks"][0]["name"] == key
        lines = [line for line in lines if line.startswith("error: %s=" % key)]
        out = ""
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert " %s=" % key in lines[0], lines[0]
    shown = lines[0].split(" %s=" % key, 1)[1].split(" ", 1)[0]
    assert float(shown) == float(override.split("=", 1)[1])  # the value as given
    assert "must be" in lines[0]
    assert out == ""


def test_a_negative_batch_size_is_not_blamed_on_neg_num(run_main):
    rc, _, err = run_main(["--task=train", "--config=%s" % AECRNET, "--data.batch_size=-1"])
    assert rc == 2 and "data.batch_size=-1" in err and "neg_num" not in err
    # The recipe itself (built by tests and tools without start.py) says the same.
    from src.recipes.aecrnet import AECRNetRecipe
    from src.recipes.base import RecipeContext

    cfg = load_config(AECRNET, ["data.batch_size=-1"])
    with pytest.raises(UserError, match=r"data\.batch_size=-1") as err_info:
        AECRNetRecipe(cfg, RecipeContext(data_dir="", output_dir=""))
    assert "neg_num" not in str(err_info.value)


def test_every_problem_is_listed_in_one_line():
    cfg = load_config(SINGAN, ["optim.g.lr=0", "data.batch_size=0", "export.width=6",
                               "sync.retries=-1"])
    with pytest.raises(UserError) as info:
        check_values(cfg, "train")
    text = str(info.value)
    assert "4 bad values" in text and "\n" not in text
    for key in ("optim.g.lr=0", "data.batch_size=0", "export.width=6", "sync.retries=-1"):
        assert key in text


def test_nothing_is_staged_or_written(run_main, tmp_path):
    rc, _, _ = run_main(["--task=train", "--config=%s" % AECRNET, "--optim.lr=0",
                         "--data_url=%s" % (tmp_path / "data"),
                         "--train_url=%s" % (tmp_path / "out")])
    assert rc == 2
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("config", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
@pytest.mark.parametrize("task", start.TASKS)
def test_shipped_configs_pass(config, task):
    check_values(load_config(config), task)


def test_keys_a_task_does_not_use_are_not_checked():
    cfg = load_config(AECRNET, ["optim.lr=0", "data.batch_size=0", "export.height=3"])
    check_values(cfg, "synth")
    check_values(cfg, "preprocess")
    with pytest.raises(UserError, match="optim.lr"):
        check_values(cfg, "eval")       # eval builds the model, optimizers included
    cfg = load_config(AECRNET, ["synth.height=4", "export.enabled=false", "export.height=3"])
    check_values(cfg, "train")          # no export after this training
    with pytest.raises(UserError, match="export.height=3"):
        check_values(cfg, "export")
    with pytest.raises(UserError, match="synth.height=4"):
        check_values(cfg, "synth")
    lsid = load_config(LSID, ["preprocess.workers=-2"])
    check_values(lsid, "train")
    with pytest.raises(UserError, match="preprocess.workers=-2"):
        check_values(lsid, "preprocess")


def test_num_workers_zero_is_meaningful():
    check_values(load_config(AECRNET, ["data.num_workers=0"]), "train")


def test_checks_helpers():
    c = Checks({"a": 6, "b": "x", "c": {"d": 0}}, "train")
    assert c.multiple("a", 4, "why") is False
    assert c.number("b", ge=0) is False
    assert c.multiple("c.d", 4, "why", zero_ok=True)
    assert c.number("missing", ge=1)          # a key the config lacks is not this check's job
    assert c.number("a", ge=100) is False      # reported once per key
    assert len(c.problems) == 2
    assert c.problems[0] == "a=6 (must be a multiple of 4, >= 4: why; e.g. 4)"


def test_check_runs_without_mindspore(tmp_path):
    data = tmp_path / "data"  # the demo's layout, by name: plan lists it and reads nothing
    for rel in ("train/hazy/1_1.png", "train/clear/1.png", "val/hazy/2_1.png", "val/clear/2.png"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(b"")
    code = ("import sys, start\n"
            "rc = start.main(['--task=plan', '--optim.lr=0'])\n"
            "assert rc == 2, rc\n"
            "assert start.main(['--task=plan', '--data_url=%s']) == 0\n"
            "assert 'mindspore' not in sys.modules, 'check_values imported MindSpore'\n"
            % data)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env=clean_env(os.path.join(REPO, "nonexistent-obs")), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "optim.lr=0" in res.stderr


def test_size_rules_match_the_networks(pynative_mode):
    """The sizes the checks allow are the ones the nets take (found by exporting bad sizes:
    SinGAN's generator returns 8x8 for 6x6 and fails at 4x4, the SID U-Net fails at 24)."""
    ms = pytest.importorskip("mindspore")
    from src.nets.resnet_gan import NLayerDiscriminator, ResnetGenerator
    from src.nets.unet_sid import UNetSID
    from src.recipes.singan_dehaze import discriminator_output_side, min_discriminator_side

    assert discriminator_output_side(256, 3) == 30 and min_discriminator_side(3) == 24
    d = NLayerDiscriminator(ndf=2, n_layers=3)
    assert d(ms.Tensor(np.zeros((1, 3, 24, 24), np.float32))).shape[-1] == 1
    with pytest.raises((ValueError, RuntimeError)):
        d(ms.Tensor(np.zeros((1, 3, 20, 20), np.float32)))
    g = ResnetGenerator(ngf=2, n_blocks=1)
    assert g(ms.Tensor(np.zeros((1, 3, 8, 8), np.float32))).shape[-1] == 8
    assert g(ms.Tensor(np.zeros((1, 3, 6, 6), np.float32))).shape[-1] != 6
    with pytest.raises((ValueError, RuntimeError)):
        g(ms.Tensor(np.zeros((1, 3, 4, 4), np.float32)))
    u = UNetSID(base_channels=2)
    assert u(ms.Tensor(np.zeros((1, 4, 16, 32), np.float32))).shape[-2:] == (32, 64)
    with pytest.raises((ValueError, RuntimeError)):
        u(ms.Tensor(np.zeros((1, 4, 24, 24), np.float32)))


# A paid run whose VGG-based loss would run on a random VGG is refused, with the converter
# command in the message; demo configs and an explicit loss.allow_random_vgg pass.
RANDOM_VGG = [
    ("configs/aecrnet_its.yaml", "vgg19", "loss.cr_weight=0.1"),
    ("configs/aecrnet_dense.yaml", "vgg19", "loss.cr_weight=0.1"),
    ("configs/singan_dehaze_sots.yaml", "vgg16", "loss.weights.perceptual=1"),
    ("configs/singan_dehaze_ohaze.yaml", "vgg16", "loss.weights.mmd=1"),
]


@pytest.mark.parametrize("config,arch,term", RANDOM_VGG)
def test_plan_refuses_a_random_vgg(run_main, config, arch, term):
    rc, out, err = run_main(["--task=plan", "--config=%s" % config, "--loss.vgg_weights=''"])
    text = out + err
    assert rc != 0
    assert "loss.vgg_weights=''" in text and term in text
    assert "python -m src.tools.convert_torch %s " % arch in text
    assert "--loss.allow_random_vgg=true" in text


@pytest.mark.parametrize("config,arch,term", RANDOM_VGG)
def test_a_random_vgg_is_refused_at_job_start_unless_allowed(config, arch, term):
    cfg = load_config(config, ["loss.vgg_weights=''"])
    with pytest.raises(UserError, match=r"convert_torch %s" % arch):
        check_values(cfg, "train")
    check_values(cfg, "eval")    # evaluation and export never run the loss
    check_values(cfg, "export")
    check_values(load_config(config, ["loss.vgg_weights=''", "loss.allow_random_vgg=true"]),
                 "train")


def test_the_vgg_terms_off_need_no_weights():
    check_values(load_config("configs/aecrnet_its.yaml",
                             ["loss.vgg_weights=''", "loss.cr_weight=0"]), "train")
    check_values(load_config("configs/singan_dehaze_sots.yaml",
                             ["loss.vgg_weights=''", "loss.weights.perceptual=0",
                              "loss.weights.mmd=0"]), "train")
    with pytest.raises(UserError, match="loss.weights.mmd=1"):
        check_values(load_config("configs/singan_dehaze_sots.yaml",
                                 ["loss.vgg_weights=''", "loss.weights.perceptual=0"]), "train")


def test_a_random_vgg_refusal_stops_the_job_before_staging(run_main, tmp_path):
    rc, _, err = run_main(["--task=train", "--config=configs/aecrnet_its.yaml",
                           "--loss.vgg_weights=''", "--data_url=%s" % (tmp_path / "data"),
                           "--train_url=%s" % (tmp_path / "out")])
    assert rc == 2 and "convert_torch vgg19" in err and err.count("\n") == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
