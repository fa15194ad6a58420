"""src/config.py: base chains, overrides, schema checks, YAML parsing, dump round trip."""
from __future__ import annotations

import os
import textwrap

import pytest
import yaml

from src.config import (DEFAULT_CONFIGS_ROOT, available_models, deep_merge, dump_config,
                        get_path, leaf_paths, load_config)
from src.errors import UserError

COMMON = """
model: null
seed: 0
platform: auto
sync: {threads: 8, retries: 3}
train:
  max_steps: 1000
  jit: true
  resume: ''
  loss_scale: 1.0
  ratio: null
_choices:
  platform: [auto, local]
  train.loss_scale: [dynamic]
"""

TOY = """
base: common.yaml
net: {type: Toy, width: 8, depth: 2}
optim: {lr: 1.0e-4, betas: [0.9, 0.999]}
optim_d: {lr: 2.0e-4}
data:
  batch_size: 1
  train: {type: Folder, root: '', crop: 64}
"""

OTHER = """
base: common.yaml
unet: {levels: 5}
"""


def write(path, text: str) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text))
    return path


@pytest.fixture
def root(tmp_path):
    """A configs root with its own tiny schemas: common + models 'toy' and 'other'."""
    write(tmp_path / "_base_" / "common.yaml", COMMON)
    write(tmp_path / "_base_" / "toy.yaml", TOY)
    write(tmp_path / "_base_" / "other.yaml", OTHER)
    return tmp_path


def load(root, text, overrides=(), name="run.yaml"):
    return load_config(write(root / name, text), overrides, configs_root=str(root))


def error(root, text, overrides=(), name="run.yaml") -> str:
    with pytest.raises(UserError) as info:
        load(root, text, overrides, name)
    message = str(info.value)
    assert "\n" not in message
    return message


TOY_RUN = "base: _base_/toy.yaml\nmodel: toy\n"


# ---------------------------------------------------------------------------------------------
# base: chains


def test_schema_defaults_fill_everything_and_no_meta_keys_remain(root):
    cfg = load(root, "model: toy\n")  # not based on the schema: defaults still apply
    assert cfg["net"] == {"type": "Toy", "width": 8, "depth": 2}
    assert cfg["train"]["max_steps"] == 1000 and cfg["sync"] == {"threads": 8, "retries": 3}
    assert "base" not in cfg and "_choices" not in cfg
    assert list(cfg)[:3] == ["model", "seed", "platform"]  # schema order, for dumps


def test_base_chain_order_later_bases_win_and_the_file_wins(root):
    write(root / "parts" / "a.yaml", "base: ../_base_/toy.yaml\nseed: 1\ntrain: {max_steps: 10}\n")
    write(root / "parts" / "b.yaml", "seed: 2\ntrain: {jit: false}\n")
    cfg = load(root, "base: [parts/a.yaml, parts/b.yaml]\nmodel: toy\ntrain: {max_steps: 20}\n")
    assert cfg["seed"] == 2                      # b (later) over a
    assert cfg["train"]["jit"] is False          # from b, merged with a's train
    assert cfg["train"]["max_steps"] == 20       # the file over its bases
    assert cfg["net"]["width"] == 8              # from the schema reached through a


def test_base_paths_are_relative_to_the_file_naming_them(root):
    write(root / "deep" / "er" / "x.yaml", "base: ../../_base_/toy.yaml\nseed: 7\n")
    write(root / "deep" / "y.yaml", "base: er/x.yaml\nmodel: toy\n")
    cfg = load_config(str(root / "deep" / "y.yaml"), configs_root=str(root))
    assert cfg["seed"] == 7


def test_diamond_bases_are_not_a_cycle(root):
    write(root / "l.yaml", "base: _base_/toy.yaml\nseed: 3\n")
    write(root / "r.yaml", "base: _base_/toy.yaml\n")
    assert load(root, "base: [l.yaml, r.yaml]\nmodel: toy\n")["seed"] == 3


def test_base_cycle_is_reported_with_the_files(root):
    write(root / "a.yaml", "base: b.yaml\nmodel: toy\n")
    write(root / "b.yaml", "base: a.yaml\n")
    with pytest.raises(UserError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(str(root / "a.yaml"), configs_root=str(root))
    assert "cycle" in error(root, "base: run.yaml\nmodel: toy\n")


def test_missing_base_names_the_file_that_names_it(root):
    message = error(root, "base: nope.yaml\nmodel: toy\n")
    assert "run.yaml" in message and "'nope.yaml' not found" in message


def test_bad_base_value(root):
    assert "base: must be a file name or a list" in error(root, "base: 3\nmodel: toy\n")


def test_missing_file():
    with pytest.raises(UserError, match="config file not found: /no/such.yaml"):
        load_config("/no/such.yaml")


# ---------------------------------------------------------------------------------------------
# Model and schema


def test_missing_model_lists_available_models(root):
    message = error(root, "seed: 1\n")
    assert "no model: key" in message and "other, toy" in message
    assert "common" not in message


def test_unknown_model_lists_available_models_with_a_suggestion(root):
    message = error(root, "model: tyo\n")
    assert "unknown model 'tyo'" in message and "'toy'" in message and "other, toy" in message
    assert available_models(str(root)) == ["other", "toy"]


def test_model_override_picks_the_schema(root):
    cfg = load(root, "model: toy\n", ["model=other"])
    assert cfg["unet"] == {"levels": 5} and "net" not in cfg


def test_keys_of_another_model_are_rejected_naming_their_file(root):
    message = error(root, TOY_RUN, ["model=other"])
    assert "unknown key 'net'" in message and "toy.yaml" in message


# ---------------------------------------------------------------------------------------------
# Unknown keys, did you mean


def test_unknown_key_in_file_names_file_key_and_suggestion(root):
    message = error(root, TOY_RUN + "train: {max_step: 5}\n")
    assert message.startswith(str(root / "run.yaml"))
    assert "unknown key 'train.max_step'" in message
    assert "did you mean 'train.max_steps'?" in message


def test_unknown_key_from_a_base_file_names_that_file(root):
    write(root / "mid.yaml", "base: _base_/toy.yaml\nsyncc: {threads: 2}\n")
    message = error(root, "base: mid.yaml\nmodel: toy\n")
    assert message.startswith(str(root / "mid.yaml")) and "'syncc'" in message
    assert "did you mean 'sync'?" in message


def test_misplaced_key_suggests_where_it_lives(root):
    message = error(root, TOY_RUN + "betas: [0.5, 0.9]\n")
    assert "unknown key 'betas'" in message and "'optim.betas'" in message


def test_unknown_key_on_command_line(root):
    message = error(root, TOY_RUN, ["train.max_step=3"])
    assert message.startswith("command line: unknown key 'train.max_step'")
    assert "did you mean 'train.max_steps'?" in message


def test_choices_key_belongs_in_schema_files_only(root):
    assert "belongs in schema files" in error(root, TOY_RUN + "_choices: {seed: [1]}\n")


def test_non_string_keys_are_rejected(root):
    assert "bad key True" in error(root, TOY_RUN + "on: 1\n")


# ---------------------------------------------------------------------------------------------
# Overrides


def test_dotted_flat_and_top_level_overrides(root):
    cfg = load(root, TOY_RUN, ["--train.max_steps=5", "depth=4", "seed=9", "optim_d.lr=1e-3"])
    assert cfg["train"]["max_steps"] == 5
    assert cfg["net"]["depth"] == 4
    assert cfg["seed"] == 9
    assert cfg["optim_d"]["lr"] == 1e-3 and cfg["optim"]["lr"] == 1e-4


def test_later_overrides_win_and_overrides_beat_files(root):
    cfg = load(root, TOY_RUN + "seed: 1\n", ["seed=2", "seed=3"])
    assert cfg["seed"] == 3


def test_ambiguous_flat_override_lists_every_match(root):
    message = error(root, TOY_RUN, ["lr=1e-4"])
    assert "'lr' is ambiguous" in message and "optim.lr, optim_d.lr" in message


def test_flat_override_without_match_suggests_full_paths(root):
    message = error(root, TOY_RUN, ["lrr=1e-4"])
    assert "no config key named 'lrr'" in message
    assert "did you mean 'optim.lr' or 'optim_d.lr'?" in message
    assert "did you mean 'train.max_steps'?" in error(root, TOY_RUN, ["max_step=1"])


def test_override_must_be_key_value(root):
    assert "is not key=value" in error(root, TOY_RUN, ["max_steps"])
    assert "is not key=value" in error(root, TOY_RUN, ["=3"])
    assert "bad key" in error(root, TOY_RUN, ["train..max_steps=3"])


def test_override_values_are_yaml(root):
    cfg = load(root, TOY_RUN, ["optim.betas=[0.5, 0.999]", "train.jit=false", "ratio=null",
                               "sync={threads: 2}"])
    assert cfg["optim"]["betas"] == [0.5, 0.999]
    assert cfg["train"]["jit"] is False and cfg["train"]["ratio"] is None
    assert cfg["sync"] == {"threads": 2, "retries": 3}


@pytest.mark.parametrize("text, value", [
    ("1e-4", 1e-4), ("1E5", 1e5), ("1.0e4", 1e4), ("-2.5e-3", -2.5e-3), ("+1e2", 100.0),
    (".5e3", 500.0), ("-.5", -0.5), ("0.0001", 1e-4), ("3", 3.0)])
def test_yaml_floats_from_command_line_and_files(root, text, value):
    cfg = load(root, TOY_RUN, ["optim.lr=" + text])
    assert type(cfg["optim"]["lr"]) is float and cfg["optim"]["lr"] == value
    cfg = load(root, TOY_RUN + "optim: {lr: %s}\n" % text)
    assert type(cfg["optim"]["lr"]) is float and cfg["optim"]["lr"] == value


def test_plain_pyyaml_is_left_alone():
    # Our float rule lives on our own loader: PyYAML's SafeLoader stays YAML 1.1.
    assert yaml.safe_load("1e-4") == "1e-4"


def test_integral_floats_are_accepted_for_integer_keys(root):
    cfg = load(root, TOY_RUN, ["max_steps=1e5"])
    assert cfg["train"]["max_steps"] == 100000 and type(cfg["train"]["max_steps"]) is int
    message = error(root, TOY_RUN, ["max_steps=1.5"])
    assert "train.max_steps=1.5: expected an integer, got a number" in message


@pytest.mark.parametrize("override, expected", [
    ("max_steps=abc", "train.max_steps='abc': expected an integer, got a string"),
    ("jit=3", "train.jit=3: expected true or false, got an integer"),
    ("max_steps=true", "train.max_steps=True: expected an integer, got true or false"),
    ("optim.lr=fast", "optim.lr='fast': expected a number, got a string"),
    ("optim.lr=true", "optim.lr=True: expected a number, got true or false"),
    ("optim.betas=0.5", "optim.betas=0.5: expected a list, got a number"),
    ("sync=3", "sync=3: expected a mapping, got an integer"),
    ("seed=null", "seed=None: expected an integer, got null"),
    ("resume=[a, b]", "train.resume=['a', 'b']: expected a string, got a list"),
])
def test_type_errors_name_key_value_and_expected_type(root, override, expected):
    message = error(root, TOY_RUN, [override])
    assert message == "command line: " + expected


def test_type_errors_in_files_name_the_file(root):
    message = error(root, TOY_RUN + "train: {max_steps: lots}\n")
    assert message.startswith(str(root / "run.yaml") + ": train.max_steps='lots'")


def test_string_keys_keep_the_text_typed(root):
    cfg = load(root, TOY_RUN + "train: {resume: auto}\n", ["resume="])
    assert cfg["train"]["resume"] == ""
    assert load(root, TOY_RUN, ["resume=2024"])["train"]["resume"] == "2024"
    assert load(root, TOY_RUN, ["resume=obs://b/run 1/x.ckpt"])["train"]["resume"] == \
        "obs://b/run 1/x.ckpt"


def test_null_default_accepts_anything(root):
    assert load(root, TOY_RUN, ["ratio=0.5"])["train"]["ratio"] == 0.5
    assert load(root, TOY_RUN, ["ratio={a: 1}"])["train"]["ratio"] == {"a": 1}


def test_ints_become_floats_for_float_keys(root):
    cfg = load(root, TOY_RUN, ["optim.lr=0"])
    assert type(cfg["optim"]["lr"]) is float and cfg["optim"]["lr"] == 0.0


def test_choices(root):
    assert load(root, TOY_RUN, ["platform=local"])["platform"] == "local"
    message = error(root, TOY_RUN, ["platform=locl"])
    assert "platform='locl': expected one of: auto, local" in message
    assert "did you mean 'local'?" in message
    # default not among the choices: its type is accepted as well
    assert load(root, TOY_RUN, ["loss_scale=dynamic"])["train"]["loss_scale"] == "dynamic"
    assert load(root, TOY_RUN, ["loss_scale=1024"])["train"]["loss_scale"] == 1024.0
    message = error(root, TOY_RUN, ["loss_scale=auto"])
    assert "expected a number or one of: dynamic, got a string" in message


# ---------------------------------------------------------------------------------------------
# Registry specs


def test_spec_keys_are_left_to_the_registry(root):
    cfg = load(root, TOY_RUN + "net: {dropout: 0.1}\n", ["data.train.extra=[1, 2]"])
    assert cfg["net"] == {"type": "Toy", "width": 8, "depth": 2, "dropout": 0.1}
    assert cfg["data"]["train"]["extra"] == [1, 2]


def test_spec_keys_the_schema_declares_are_type_checked_while_the_type_stays(root):
    assert "net.width='wide': expected an integer" in error(root, TOY_RUN, ["width=wide"])


def test_changing_type_starts_from_the_new_keys_only(root):
    cfg = load(root, TOY_RUN + "net: {type: Big, blocks: 3}\n")
    assert cfg["net"] == {"type": "Big", "blocks": 3}
    cfg = load(root, TOY_RUN, ["net.type=Big"])
    assert cfg["net"] == {"type": "Big"}
    cfg = load(root, TOY_RUN, ["net.type=Big", "net.width=wide"])  # one layer, no type check
    assert cfg["net"] == {"type": "Big", "width": "wide"}
    # the same type merges as usual
    assert load(root, TOY_RUN, ["net.type=Toy"])["net"]["width"] == 8


def test_type_in_a_plain_mapping_is_an_unknown_key(root):
    assert "unknown key 'sync.type'" in error(root, TOY_RUN, ["sync.type=Fast"])


def test_deep_merge_rules():
    base = {"a": {"x": 1, "y": [1, 2]}, "s": {"type": "A", "k": 1}}
    out = deep_merge(base, {"a": {"y": [3]}, "s": {"type": "B"}})
    assert out == {"a": {"x": 1, "y": [3]}, "s": {"type": "B"}}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "s": {"type": "A", "k": 1}}  # untouched


# ---------------------------------------------------------------------------------------------
# Safety, dump, helpers


def test_python_tags_are_refused(root, tmp_path):
    marker = tmp_path / "pwned"
    text = TOY_RUN + "seed: !!python/object/apply:os.system ['touch %s']\n" % marker
    assert "cannot parse YAML" in error(root, text)
    assert "cannot parse YAML" in error(
        root, TOY_RUN, ["ratio=!!python/object/apply:os.system ['touch %s']" % marker])
    assert not marker.exists()


def test_yaml_syntax_error_is_one_line(root):
    assert "cannot parse YAML" in error(root, TOY_RUN + "train: [1, 2\n")


def test_non_mapping_file(root):
    assert "must be a mapping" in error(root, "- a\n- b\n")


def test_dump_then_load_gives_the_same_dict(root, tmp_path):
    cfg = load(root, TOY_RUN + "train: {resume: '1e-4'}\n",
               ["optim.lr=1e-7", "net.type=Big", "net.shape=[[1, 2], [3, 4]]", "ratio={a: 1}"])
    assert cfg["train"]["resume"] == "1e-4"   # a string that looks like a float stays one
    path = dump_config(cfg, str(tmp_path / "out" / "config.yaml"))
    again = load_config(path, configs_root=str(root))
    assert again == cfg
    assert list(again) == list(cfg)
    text = open(path, encoding="utf-8").read()
    assert text.startswith("model: toy\n") and "betas: [0.9, 0.999]" in text
    assert not [n for n in os.listdir(tmp_path / "out") if n != "config.yaml"]  # no temp left


def test_leaf_paths_and_get_path():
    cfg = {"a": {"b": 1, "c": {"d": None}}, "e": [1], "f": {}}
    assert leaf_paths(cfg) == ["a.b", "a.c.d", "e", "f"]
    assert get_path(cfg, "a.c.d") is None and get_path(cfg, "a.b") == 1
    assert get_path(cfg, "a.x", 5) == 5 and get_path(cfg, "e.x", None) is None
    with pytest.raises(KeyError, match="a.x"):
        get_path(cfg, "a.x")


def test_the_shipped_common_schema(tmp_path):
    """configs/_base_/common.yaml declares the keys docs/ARCHITECTURE.md lists, and loads."""
    common = os.path.join(DEFAULT_CONFIGS_ROOT, "_base_", "common.yaml")
    write(tmp_path / "_base_" / "m.yaml", "base: %s\n" % common)
    cfg = load(tmp_path, "model: m\n", ["loss_scale=dynamic", "platform=modelarts",
                                        "device_target=Ascend", "mode=pynative"])
    assert set(cfg) == {"model", "seed", "data_url", "train_url", "platform", "device_target",
                        "mode", "cache_dir", "output_dir", "rank_table_timeout", "sync", "data",
                        "train", "eval", "export", "infer"}
    assert set(cfg["train"]) == {"max_steps", "log_every", "eval_every", "ckpt_every",
                                 "keep_last", "resume", "jit", "loss_scale"}
    assert set(cfg["eval"]) >= {"pad_multiple", "num_samples", "max_images"}
    assert cfg["export"] == {"enabled": True, "height": 256, "width": 256, "dynamic": True}
    assert cfg["infer"] == {"tile": 512, "overlap": 32, "log_every": 10}
    assert cfg["sync"] == {"threads": 8, "retries": 3, "log_every": 60}
    assert cfg["rank_table_timeout"] == 600 and cfg["train"]["jit"] is True
    assert "expected one of" in error(tmp_path, "model: m\n", ["device_target=ascend"])
