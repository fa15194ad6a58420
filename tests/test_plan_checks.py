"""start.py's checks before money is spent, and the spellings users bring from other trainers.

Each test runs start.py as ModelArts would (a subprocess, OBS mocked to a folder) and asserts
the line the user sees. Data sets are laid out by name only (empty files): plan lists
data_url and reads no file."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import start
from tests.e2e_helpers import REPO, clean_env
from tests.e2e_helpers import start as run_start
from tests.test_start import DEMO_DATA, lay_out

AECRNET_DATA = "obs://demo/aecrnet/data"


@pytest.fixture()
def obs(tmp_path):
    root = tmp_path / "obs"
    for folder, files in DEMO_DATA.items():
        lay_out(root, folder, files)
    return root


@pytest.fixture()
def env(obs):
    return clean_env(str(obs))


def plan(args, env):
    res = run_start(["--task=plan"] + list(args), env)
    out = json.loads(res.stdout) if res.stdout.strip() else None
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    return res, out, errors


def checks(out) -> dict:
    return {c["name"]: (c["ok"], c["message"]) for c in out["checks"]}


# ------------------------------------------------------------------ --config from storage

def _upload_config(obs, rel: str, text: str) -> str:
    path = obs / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return "obs://" + rel


def test_config_from_an_obs_url(env, obs):
    base = open(os.path.join(REPO, "configs", "aecrnet_demo.yaml")).read()
    _upload_config(obs, "cfgs/parent.yaml", base)   # based on _base_/aecrnet.yaml
    url = _upload_config(obs, "cfgs/its.yaml", "base: parent.yaml\ntrain:\n  max_steps: 17\n")
    res, out, errors = plan(["--config=" + url], env)
    assert res.returncode == 0, res.stderr
    assert out["config"]["train"]["max_steps"] == 17          # the file's own value
    assert out["config"]["net"]["ngf"] == 16                  # from its base beside it on OBS
    assert out["config_file"] == url
    assert checks(out)["config"] == (True, "fetched from " + url)


def test_config_inside_data_url(env, obs):
    _upload_config(obs, "demo/aecrnet/data/cfg/mine.yaml",
                   "base: aecrnet_demo.yaml\noptim:\n  lr: 2.0e-4\n")
    res, out, _ = plan(["--config=cfg/mine.yaml", "--data_url=" + AECRNET_DATA], env)
    assert res.returncode == 0, res.stderr
    assert out["config"]["optim"]["lr"] == 2e-4
    assert checks(out)["config"][1] == "fetched from data_url: %s/cfg/mine.yaml" % AECRNET_DATA


def test_a_missing_config_url_is_one_line_naming_it(env):
    res = run_start(["--task=plan", "--config=obs://demo/cfgs/nope.yaml"], env)
    assert res.returncode == 2
    assert res.stderr.strip() == ("error: config obs://demo/cfgs/nope.yaml does not exist: "
                                  "upload it there or fix --config")


def test_a_config_nowhere_names_every_place_looked(env):
    res = run_start(["--task=plan", "--config=cfg/none.yaml", "--data_url=" + AECRNET_DATA], env)
    assert res.returncode == 2
    line = res.stderr.strip()
    assert line.startswith("error: config file cfg/none.yaml not found (looked for ")
    assert AECRNET_DATA + "/cfg/none.yaml" in line and "\n" not in line


def test_config_from_an_s3_bucket(s3_bucket, tmp_path):
    """The same through the OBS SDK backend against a real S3 endpoint (moto)."""
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="c/lsid.yaml",
                                Body=b"base: lsid_demo.yaml\ntrain:\n  max_steps: 9\n")
    env = clean_env(str(tmp_path / "unused"))
    del env["OBS_MOCK_ROOT"]
    for name in ("OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY", "S3_ENDPOINT"):
        env[name] = os.environ[name]
    url = "s3://%s/c/lsid.yaml" % s3_bucket.name
    res, out, errors = plan(["--config=" + url], env)
    # The config is read from S3; its data_url (obs://demo/...) is not there: plan says so.
    assert out["config"]["model"] == "lsid" and out["config"]["train"]["max_steps"] == 9
    assert checks(out)["config"] == (True, "fetched from " + url)
    assert res.returncode == 2 and errors and errors[0].startswith("error: data_url: ")
    assert s3_bucket.secret_key not in res.stderr + res.stdout


# ------------------------------------------------------------------ --ckpt_url and did-you-mean

def test_ckpt_url_is_the_weights_to_start_from_in_train(env, obs):
    lay_out(obs, "w", ["aecrnet.ckpt"])
    res, out, _ = plan(["--ckpt_url=obs://w/aecrnet.ckpt"], env)
    assert res.returncode == 0, res.stderr
    assert out["config"]["net_weights"] == "obs://w/aecrnet.ckpt"
    assert checks(out)["net_weights"] == (True, "obs://w/aecrnet.ckpt exists")
    assert "--ckpt_url=obs://w/aecrnet.ckpt sets net_weights" in res.stderr


def test_a_missing_ckpt_url_fails_the_plan_naming_it(env):
    res, _, errors = plan(["--ckpt_url=obs://w/missing.ckpt"], env)
    assert res.returncode == 2
    assert errors == ["error: net_weights: obs://w/missing.ckpt does not exist: upload it or "
                      "fix --net_weights"]


def test_ckpt_url_is_the_checkpoint_to_evaluate_in_eval(env, tmp_path):
    res = run_start(["--task=eval", "--ckpt_url=obs://w/missing.ckpt",
                     "--cache_dir=%s" % (tmp_path / "cache")], env)
    assert res.returncode == 2
    assert "error: eval.checkpoint: obs://w/missing.ckpt does not exist" in res.stderr
    assert not (tmp_path / "cache" / "data").exists(), "checked before staging"


@pytest.mark.parametrize("task, key", [
    ("train", "net_weights"), ("plan", "net_weights"), ("eval", "eval.checkpoint"),
    ("export", "eval.checkpoint"), ("infer", "eval.checkpoint"), ("synth", ""),
])
def test_ckpt_url_routes_by_task(task, key):
    inv = start.Invocation(task, "", ["eval.checkpoint=mine.ckpt"], [], "obs://b/x.ckpt")
    assert inv.ckpt_key == key
    routed = inv.routed_overrides()
    if key:  # first, so that an explicit key given on the command line wins
        assert routed == ["%s=obs://b/x.ckpt" % key, "eval.checkpoint=mine.ckpt"]
    else:
        assert routed == ["eval.checkpoint=mine.ckpt"]


def test_ckpt_url_on_a_model_without_net_weights_says_what_to_use(env):
    res = run_start(["--task=plan", "--config=configs/lsid_demo.yaml",
                     "--ckpt_url=obs://w/x.ckpt"], env)
    assert res.returncode == 2
    assert res.stderr.strip() == ("error: --ckpt_url: model lsid has no net_weights to start "
                                  "from; to continue a run from a checkpoint use "
                                  "--train.resume=obs://w/x.ckpt")


@pytest.mark.parametrize("arg, line", [
    ("--taks=plan", "error: unknown argument --taks (did you mean --task?)"),
    ("--conifg=x.yaml", "error: unknown argument --conifg (did you mean --config?)"),
    ("--ckpturl=obs://b/x", "error: unknown argument --ckpturl (did you mean --ckpt_url?)"),
    ("--trainurl=obs://b/o", "error: command line: no config key named 'trainurl' "
                             "(did you mean 'train_url'?)"),
])
def test_an_argument_resembling_a_known_one_gets_a_did_you_mean(env, arg, line):
    res = run_start(["--task=plan", arg], env)
    assert res.returncode == 2
    assert res.stderr.strip() == line


def test_dashes_are_underscores_in_argument_names(env):
    res, out, _ = plan(["--data-url=" + AECRNET_DATA, "--ckpt-url=", "--config-path",
                        "configs/aecrnet_demo.yaml"], env)
    assert res.returncode == 0, res.stderr
    assert out["data_url"] == AECRNET_DATA and out["config"]["net_weights"] == ""


def test_none_of_start_arguments_shadows_a_config_key():
    """The did-you-mean for start.py's own arguments never catches a real config key."""
    import difflib
    import glob

    from src.config import leaf_paths, load_config

    for path in glob.glob(os.path.join(REPO, "configs", "*.yaml")):
        for key in leaf_paths(load_config(path)):
            leaf = key.rsplit(".", 1)[-1]
            assert leaf in ("data_url", "train_url") or not difflib.get_close_matches(
                leaf, start.OWN_ARGS, n=1, cutoff=0.75), (path, key)


# ------------------------------------------------------------------ every plan check

def test_plan_checks_the_demo_layouts_of_every_model(env):
    for config, names in (("aecrnet_demo", ["data.train", "data.val"]),
                          ("lsid_demo", ["data.train", "data.val"]),
                          ("singan_dehaze_demo", ["data.train", "data.val"])):
        res, out, _ = plan(["--config=configs/%s.yaml" % config], env)
        assert res.returncode == 0, (config, res.stderr)
        found = checks(out)
        assert [n for n in names if found[n][0]] == names, (config, found)
    assert "1 train pairs" not in found["data.train"][1]  # singan: images, not pairs
    assert found["data.train"][1].startswith("UnpairedDehaze: 1 hazy, 1 clear images")


def test_an_empty_data_url(env):
    res, out, errors = plan(["--data_url="], env)
    assert res.returncode == 2
    assert errors == ["error: data_url: data_url is empty: set --data_url to the folder holding "
                      "the data set (obs://bucket/path or a local folder)"]
    assert checks(out)["data_url"][0] is False


def test_a_data_url_that_does_not_exist(env):
    res, _, errors = plan(["--data_url=obs://demo/typo"], env)
    assert res.returncode == 2
    assert errors == ["error: data_url: obs://demo/typo does not exist or holds no files: "
                      "upload the data set there or fix --data_url"]


def test_a_missing_clear_folder(env, obs):
    shutil.rmtree(obs / "demo/aecrnet/data/val/clear")
    res, out, errors = plan(["--data.val.layout=reside"], env)
    assert res.returncode == 2
    assert checks(out)["data.train"][0] is True
    assert errors == ["error: data.val: PairedDehaze: no clear image folder "
                      "%s/val/clear (layout reside expects hazy/ and clear/)" % AECRNET_DATA]


def test_a_hazy_image_without_a_partner(env, obs):
    lay_out(obs, "demo/aecrnet/data", ["train/hazy/5_1.png"])
    res, _, errors = plan([], env)
    assert res.returncode == 2
    assert errors == ["error: data.train: PairedDehaze: hazy image %s/train/hazy/5_1.png has no "
                      "clear partner: expected 5.* in %s/train/clear" % (AECRNET_DATA, AECRNET_DATA)]


def test_a_wrong_validation_path(env):
    res, _, errors = plan(["--data.val.path=SOTS/indoor"], env)
    assert res.returncode == 2
    assert errors == ["error: data.val: PairedDehaze: data folder %s/SOTS/indoor does not exist "
                      "(check data_url and the data set's path)" % AECRNET_DATA]


def test_a_missing_sid_list_file(env):
    res, _, errors = plan(["--config=configs/lsid_demo.yaml",
                           "--data.val.list_file=Sony_test_list.txt"], env)
    assert res.returncode == 2
    assert errors == ["error: data.val: SID list file not found: obs://demo/lsid/hdf5/"
                      "Sony_test_list.txt (check data.*.list_file and data_url)"]


def test_sid_lists_without_converted_files(env, obs):
    for name in ("Sony/short/00001_00_0.1s.h5", "Sony/long/00001_00_10s.h5"):
        os.remove(obs / "demo/lsid/hdf5" / name)
    res, _, errors = plan(["--config=configs/lsid_demo.yaml"], env)
    assert res.returncode == 2
    assert "error: data.train: no .h5 files in obs://demo/lsid/hdf5: run --task=preprocess" \
        in errors[0]


def test_a_missing_unpaired_folder(env, obs):
    shutil.rmtree(obs / "demo/singan/data/trainB")
    res, _, errors = plan(["--config=configs/singan_dehaze_demo.yaml"], env)
    assert res.returncode == 2
    assert len(errors) == 1 and errors[0].startswith(
        "error: data.train: UnpairedDehaze: clear image folder obs://demo/singan/data/trainB "
        "does not exist")


def test_a_missing_weights_url_names_its_key(env):
    res, _, errors = plan(["--loss.vgg_weights=obs://w/vgg19.ckpt"], env)
    assert res.returncode == 2
    assert errors == ["error: loss.vgg_weights: obs://w/vgg19.ckpt does not exist: upload it or "
                      "fix --loss.vgg_weights"]


def test_weights_inside_data_url_are_found_by_name(env, obs):
    lay_out(obs, "demo/aecrnet/data", ["weights/vgg19.ckpt"])
    res, out, _ = plan(["--loss.vgg_weights=weights/vgg19.ckpt"], env)
    assert res.returncode == 0, res.stderr
    assert checks(out)["loss.vgg_weights"] == (
        True, "weights/vgg19.ckpt found in data_url %s" % AECRNET_DATA)
    res, _, errors = plan(["--loss.vgg_weights=weights/vgg16.ckpt"], env)
    assert errors == ["error: loss.vgg_weights=weights/vgg16.ckpt: file not found (give a local "
                      "path, a path inside data_url, or an obs:// URL)"]


def test_a_bad_value_is_a_failed_check_named_by_its_key(env):
    res, out, errors = plan(["--optim.lr=0"], env)
    assert res.returncode == 2
    assert checks(out)["optim.lr"][0] is False and "values" not in checks(out)
    assert errors == ["error: optim.lr=0.0 (must be a number > 0; a learning rate); fix it in "
                      "the config file or with --optim.lr=..."]


def test_every_failure_is_one_line(env):
    res, out, errors = plan(["--optim.lr=0", "--data.batch_size=0", "--data.val.path=nowhere",
                             "--loss.vgg_weights=obs://w/none.ckpt"], env)
    assert res.returncode == 2
    names = ["optim.lr", "data.batch_size", "data.val", "loss.vgg_weights"]
    assert [c["name"] for c in out["checks"] if not c["ok"]] == names
    assert len(errors) == 4
    for name, line in zip(names, errors):
        assert line.startswith("error: %s" % name), line


def test_train_runs_the_same_checks_before_staging(env, tmp_path):
    res = run_start(["--task=train", "--data.val.path=nowhere",
                     "--cache_dir=%s" % (tmp_path / "cache")], env)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "error: data.val: PairedDehaze: data folder %s/nowhere does not exist (check data_url "
        "and the data set's path)" % AECRNET_DATA)
    assert not (tmp_path / "cache").exists(), "nothing staged"
    assert not (tmp_path / "obs" / "demo" / "aecrnet" / "out").exists(), "nothing written"


def test_config_inside_a_local_data_url(env, tmp_path):
    data = tmp_path / "data"
    lay_out(data, "", DEMO_DATA["demo/aecrnet/data"])
    (data / "my.yaml").write_text("base: aecrnet_demo.yaml\ntrain:\n  max_steps: 5\n")
    res, out, _ = plan(["--config=my.yaml", "--data_url=%s" % data], env)
    assert res.returncode == 0, res.stderr
    assert out["config"]["train"]["max_steps"] == 5
    assert checks(out)["config"] == (True, "fetched from data_url: %s/my.yaml" % data)
    assert out["config_file"] == "%s/my.yaml" % data
