"""Configs: YAML files with `base:` inheritance, command-line overrides, checked against a schema.

`load_config(path, overrides)` runs one pipeline and returns a plain nested dict:

1. Read `path` and, recursively, the files its `base:` names (a string or a list; paths are
   relative to the file naming them). Bases merge first, in list order (later ones win), and
   the file itself wins over all its bases. Mappings merge key by key; any other value
   (lists included) is replaced whole. A file reached twice (two parts both based on the
   schema) is merged once, where first reached. A file that (indirectly) names itself is an
   error.
2. Find the model (the `model:` key, or a `model=` override) and load its schema,
   `<configs_root>/_base_/<model>.yaml`, the same way. That file starts with
   `base: common.yaml`, so the schema is "keys every model has" plus the model's own keys,
   each with its default.
3. Merge: schema defaults ← the user's files ← command-line overrides.
4. Validate. Every key must be declared in the schema (a typo names the file it came from and
   suggests the closest key). A value must have the type of its default: an integer where the
   default is an integer (`1e5` is accepted and becomes 100000), a number where it is a
   float (integers accepted), true/false, a string, a list, a mapping. A null default accepts
   anything: it marks an optional setting with no default.

Registry specs. A mapping with a `type:` key is built by a registry (`{type: Name, **kwargs}`,
see src/registry.py): its other keys are constructor arguments, which the registry checks
against the constructor's signature, so they are not checked against the schema here (the
ones the schema declares are still type-checked while the type stays the schema's). When a
file or an override CHANGES `type`, the new spec starts from that layer's keys only: the old
type's arguments would not fit the new constructor, so they are dropped, not merged. So
`--net.type=Other` alone gives `{type: Other}`; `--net.type=Other --net.width=8` gives
`{type: Other, width: 8}` (all overrides are collected before they are merged).

Choices. A schema file may declare `_choices: {dotted.key: [allowed values]}`. A value must be
one of them; when the default itself is not among them, values of the default's type are
accepted too (`train.loss_scale: [dynamic]` with default 1.0 means "a number or 'dynamic'").
`_choices` is read only from schema files and never appears in the loaded config.

Overrides are `key=value` strings (a leading `--` is ignored). The key is a dotted path
(`train.max_steps=10`) or a bare leaf name that names exactly one leaf of the config
(`max_steps=10`); a top-level key always means itself. Values are parsed as YAML (safe
loading, never eval), so `[0.5, 0.999]`, `true`, `null` and `1e-4` mean what they look like.
Where the default is a string, the text is kept verbatim (`resume=` is '', a run name `2024`
stays '2024').

YAML is read with a SafeLoader (no Python tags) that also reads YAML 1.2 floats: PyYAML
follows YAML 1.1, where `1e-4`, `1E5` and `1.0e4` are strings, which would silently turn a
learning rate into text.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import yaml

from src.errors import UserError, did_you_mean

DEFAULT_CONFIGS_ROOT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
SCHEMA_DIR = "_base_"
COMMON_SCHEMA = "common.yaml"
BASE_KEY = "base"
CHOICES_KEY = "_choices"
COMMAND_LINE = "command line"

KeyPath = Tuple[str, ...]

# ---------------------------------------------------------------------------------------------
# YAML: safe loading, YAML 1.2 floats

_FLOAT_12 = re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+
                                  |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)$""", re.X)
_FLOAT_FIRST = list("-+0123456789.")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also resolves YAML 1.2 floats (`1e-4`, `1E5`, `1.0e4`, `-.5`)."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper whose resolver matches _Loader's, so strings like '1e-4' get quoted."""


for _cls in (_Loader, _Dumper):
    # add_implicit_resolver copies the inherited table first: yaml.SafeLoader is untouched.
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, _FLOAT_FIRST)


def _represent_list(dumper: yaml.SafeDumper, data) -> yaml.Node:
    # Short lists of scalars (betas, crop sizes) read best inline; nested ones as blocks.
    flat = all(not isinstance(v, (dict, list, tuple)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", list(data), flow_style=flat)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def parse_yaml(text: str, where: str = "") -> Any:
    """Parse YAML text with the config loader (safe; YAML 1.2 floats)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise UserError("%s: cannot parse YAML (only plain YAML is accepted, no Python tags): %s"
                        % (where or "config", _one_line(exc))) from None


def read_yaml(path: str) -> dict:
    """One config file as a mapping (no `base:` processing). Empty file → {}."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError("config file not found: %s" % path) from None
    except OSError as exc:
        raise UserError("cannot read config file %s: %s" % (path, exc)) from None
    data = parse_yaml(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError("%s: a config file must be a mapping of keys, got %s"
                        % (path, _kind(data)))
    _check_key_names(data, path, ())
    return data


def _check_key_names(node: dict, where: str, path: KeyPath) -> None:
    for key, value in node.items():
        # YAML 1.1 reads keys like `on:`/`yes:` as booleans and `1:` as an int: catch them here
        # rather than as a confusing "unknown key True" later.
        if not isinstance(key, str) or not key or "." in key:
            raise UserError("%s: bad key %r under %r: keys must be non-empty strings without "
                            "dots (quote keys like 'on' or '1')"
                            % (where, key, ".".join(path) or "the top level"))
        if isinstance(value, dict) and path + (key,) != (CHOICES_KEY,):  # its keys are dotted
            _check_key_names(value, where, path + (key,))


# ---------------------------------------------------------------------------------------------
# Small helpers other modules use


def leaf_paths(cfg: dict) -> List[str]:
    """Dotted paths of every non-mapping value (an empty mapping counts as a leaf), in order."""
    return [".".join(p) for p in _leaf_tuples(cfg)]


def _leaf_tuples(node: dict, prefix: KeyPath = ()) -> List[KeyPath]:
    out: List[KeyPath] = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.extend(_leaf_tuples(value, prefix + (key,)))
        else:
            out.append(prefix + (key,))
    return out


def _all_tuples(node: dict, prefix: KeyPath = ()) -> List[KeyPath]:
    out: List[KeyPath] = []
    for key, value in node.items():
        out.append(prefix + (key,))
        if isinstance(value, dict):
            out.extend(_all_tuples(value, prefix + (key,)))
    return out


_MISSING = object()


def get_path(cfg: dict, path: str, default: Any = _MISSING) -> Any:
    """`get_path(cfg, "train.lr")` → cfg["train"]["lr"]; KeyError naming the path if absent
    (unless a default is given)."""
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not _MISSING:
                return default
            raise KeyError("config has no key %r" % path)
        node = node[part]
    return node


def deep_merge(base: dict, over: dict) -> dict:
    """A new dict: `over` merged onto `base` with the config rules (mappings merge key by key,
    other values are replaced, a spec whose `type` changes is replaced whole)."""
    out = copy.deepcopy(base)
    _merge_into(out, over)
    return out


def _merge_into(dst: dict, over: dict) -> None:
    for key, value in over.items():
        old = dst.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and not _retyped(old, value):
            _merge_into(old, value)
        else:
            dst[key] = copy.deepcopy(value)


def _retyped(old: dict, new: dict) -> bool:
    return "type" in old and "type" in new and old["type"] != new["type"]


def available_models(configs_root: Optional[str] = None) -> List[str]:
    """Model names with a schema: the files in <configs_root>/_base_/ other than common.yaml."""
    folder = os.path.join(configs_root or DEFAULT_CONFIGS_ROOT, SCHEMA_DIR)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n[:-len(".yaml")] for n in names
                  if n.endswith(".yaml") and n != COMMON_SCHEMA)


# ---------------------------------------------------------------------------------------------
# Files with bases


class _Layers:
    """A merged config plus, for each key path, the file (or "command line") that set it."""

    def __init__(self) -> None:
        self.data: dict = {}
        self.origins: Dict[KeyPath, str] = {}
        self.choices: Dict[str, list] = {}
        self.choice_files: Set[str] = set()   # real paths of files that declared _choices

    def add(self, data: dict, source: str) -> None:
        _merge_into(self.data, data)
        for path in _all_tuples(data):
            self.origins[path] = source

    def add_layers(self, other: _Layers) -> None:
        _merge_into(self.data, other.data)
        self.origins.update(other.origins)
        self.choices.update(other.choices)
        self.choice_files |= other.choice_files


def _load_with_bases(path: str, stack: Tuple[str, ...] = (),
                     seen: Optional[Set[str]] = None) -> _Layers:
    """`path` merged over its bases. `stack`: the files naming this one (cycle check);
    `seen`: every file merged so far in this load."""
    real = os.path.realpath(path)
    if real in stack:
        cycle = list(stack[stack.index(real):]) + [real]
        raise UserError("config base cycle: %s; remove one of these base: entries"
                        % " -> ".join(cycle))
    seen = set() if seen is None else seen
    if real in seen:
        # A shared base (two parts both based on the schema) is merged once, where it is
        # first reached: merging it again would put its defaults back over what came between.
        return _Layers()
    seen.add(real)
    raw = read_yaml(path)
    bases = raw.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise UserError("%s: base: must be a file name or a list of file names, got %r"
                        % (path, bases))
    layers = _Layers()
    for base in bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        if not os.path.isfile(base_path):
            raise UserError("%s: base file %r not found (looked for %s; base: paths are relative "
                            "to the file naming them)" % (path, base, base_path))
        layers.add_layers(_load_with_bases(base_path, stack + (real,), seen))
    choices = raw.pop(CHOICES_KEY, None)
    layers.add(raw, path)
    if choices is not None:
        if not isinstance(choices, dict) or not all(isinstance(v, list) for v in choices.values()):
            raise UserError("%s: %s: must map dotted keys to lists of allowed values"
                            % (path, CHOICES_KEY))
        layers.choices.update(choices)
        layers.choice_files.add(real)
    return layers


# ---------------------------------------------------------------------------------------------
# Overrides


def _parse_overrides(overrides: Iterable[str]) -> List[Tuple[str, str, Any]]:
    """[(key, raw text, parsed value)] from `key=value` strings."""
    parsed = []
    for item in overrides:
        if not isinstance(item, str):
            raise UserError("%s: override %r is not a key=value string" % (COMMAND_LINE, item))
        text = item[2:] if item.startswith("--") else item
        key, sep, raw = text.partition("=")
        # `__` stands for a dot: ModelArts' hyperparameter form allows letters, digits, '-'
        # and '_' only (the spelling pydantic-settings and dynaconf use for nested names).
        key = key.strip().replace("__", ".")
        if not sep or not key:
            raise UserError("%s: %r is not key=value (e.g. --train.max_steps=1000)"
                            % (COMMAND_LINE, item))
        if any(not part for part in key.split(".")):
            raise UserError("%s: bad key %r in %r" % (COMMAND_LINE, key, item))
        value = parse_yaml(raw, "%s: value of %s" % (COMMAND_LINE, key))
        if isinstance(value, dict):
            _check_key_names(value, "%s: %s" % (COMMAND_LINE, key), tuple(key.split(".")))
        parsed.append((key, raw, value))
    return parsed


def _resolve_key(key: str, cfg: dict) -> KeyPath:
    """Dotted key → its path; a bare name → the one leaf path ending in it."""
    if "." in key or key in cfg:
        return tuple(key.split("."))
    matches = [p for p in _leaf_tuples(cfg) if p[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = sorted(".".join(p) for p in matches)
        raise UserError("%s: %r is ambiguous, it names %s; write the full path (e.g. %s=...)"
                        % (COMMAND_LINE, key, ", ".join(names), names[0]))
    leaves = _leaf_tuples(cfg)
    close = difflib.get_close_matches(key, sorted({p[-1] for p in leaves}), n=1, cutoff=0.6)
    hint = ""
    if close:
        hint = " (did you mean %s?)" % " or ".join(
            "'%s'" % ".".join(p) for p in leaves if p[-1] == close[0])
    raise UserError("%s: no config key named %r%s" % (COMMAND_LINE, key, hint))


def _override_layer(parsed: Sequence[Tuple[str, str, Any]], cfg: dict,
                    schema: dict) -> Tuple[dict, List[KeyPath]]:
    """All overrides as one nested mapping, merged later as a single layer, so that
    `net.type=X net.width=8` builds one new spec instead of a spec and a stray key."""
    layer: dict = {}
    paths = []
    for key, raw, value in parsed:
        path = _resolve_key(key, cfg)
        default = get_path(schema, ".".join(path), None)
        if isinstance(default, str) and (value is None or isinstance(value, (bool, int, float))):
            # The schema wants text: keep what was typed (a run name `2024`, `resume=`).
            value = raw.strip()
        node = layer
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
        paths.append(path)
    return layer, paths


# ---------------------------------------------------------------------------------------------
# Validation

_KIND_NAMES = [(bool, "true or false"), (int, "an integer"), (float, "a number"),
               (str, "a string"), (list, "a list"), (dict, "a mapping")]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    for cls, name in _KIND_NAMES:
        if isinstance(value, cls):
            return name
    return type(value).__name__


class _Validator:
    def __init__(self, schema: dict, choices: Dict[str, list], origins: Dict[KeyPath, str],
                 model: str, schema_file: str):
        self.schema = schema
        self.choices = choices
        self.origins = origins
        self.model = model
        self.schema_file = schema_file

    def where(self, path: KeyPath) -> str:
        for end in range(len(path), 0, -1):
            if path[:end] in self.origins:
                return self.origins[path[:end]]
        return "config"

    def mapping(self, value: dict, default: dict, path: KeyPath) -> dict:
        spec = "type" in default
        same_type = spec and value.get("type") == default["type"]
        for key in list(value):
            sub = path + (key,)
            if key in default and (not spec or same_type or key == "type"):
                value[key] = self.check(value[key], default[key], sub)
            elif not spec:
                self.unknown(sub, default)
        return value

    def unknown(self, path: KeyPath, siblings: dict) -> None:
        name = ".".join(path)
        prefix = ".".join(path[:-1]) + "." if len(path) > 1 else ""
        everywhere = [".".join(p) for p in _all_tuples(self.schema)]
        hint = (did_you_mean(name, [prefix + k for k in siblings])
                or did_you_mean(name, everywhere))
        if not hint:  # right name, wrong place (`lr:` at the top instead of under optim:)
            same = [p for p in everywhere if p.rsplit(".", 1)[-1] == path[-1]]
            hint = " (did you mean %s?)" % " or ".join("'%s'" % p for p in same) if same else ""
        raise UserError("%s: unknown key '%s'%s; model '%s' declares its keys in %s"
                        % (self.where(path), name, hint, self.model, self.schema_file))

    def check(self, value: Any, default: Any, path: KeyPath) -> Any:
        name = ".".join(path)
        allowed = self.choices.get(name)
        if allowed is not None:
            if any(value == a and type(value) is type(a) for a in allowed):
                return value
            if default in allowed or default is None:
                self.fail(path, value, "one of: %s" % ", ".join(str(a) for a in allowed),
                          did_you_mean(str(value), [str(a) for a in allowed]))
        if default is None:
            return value
        if isinstance(default, dict):
            if not isinstance(value, dict):
                self.fail(path, value, "a mapping", "", allowed)
            return self.mapping(value, default, path)
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
        elif isinstance(default, int):
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif isinstance(default, float):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif isinstance(default, (str, list)):
            if isinstance(value, type(default)):
                return value
        elif type(value) is type(default):
            return value
        self.fail(path, value, _kind(default), "", allowed)
        return value  # unreachable: fail raises

    def fail(self, path: KeyPath, value: Any, expected: str, hint: str = "",
             allowed: Optional[list] = None) -> None:
        if allowed:
            expected += " or one of: %s" % ", ".join(str(a) for a in allowed)
        raise UserError("%s: %s=%s: expected %s, got %s%s" % (
            self.where(path), ".".join(path), _short(value), expected, _kind(value), hint))


def _short(value: Any) -> str:
    text = _one_line(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------
# The pipeline


def load_config(path: str, overrides: Iterable[str] = (),
                configs_root: Optional[str] = None) -> dict:
    """Resolved, validated config of `path` with `overrides` (`key=value` strings) applied.

    The schema is `<configs_root>/_base_/<model>.yaml` (configs_root defaults to the
    repository's configs/). Raises UserError for anything the user can fix."""
    root = configs_root or DEFAULT_CONFIGS_ROOT
    user = _load_with_bases(path)
    parsed = _parse_overrides(overrides)

    model = user.data.get("model")
    model_source = user.origins.get(("model",), path)
    for key, _raw, value in parsed:
        if key == "model":
            model, model_source = value, COMMAND_LINE
    models = available_models(root)
    if model is None:
        raise UserError("%s: no model: key; set model: to one of: %s (or base the file on "
                        "_base_/<model>.yaml)" % (path, ", ".join(models) or "(none found)"))
    if not isinstance(model, str) or model not in models:
        raise UserError("%s: unknown model %r%s; available models: %s (schemas in %s)" % (
            model_source, model, did_you_mean(str(model), models),
            ", ".join(models) or "(none found)", os.path.join(root, SCHEMA_DIR)))
    schema_file = os.path.join(root, SCHEMA_DIR, model + ".yaml")
    schema = _load_with_bases(schema_file)
    _check_choices(schema, schema_file)

    schema_dir = os.path.realpath(os.path.join(root, SCHEMA_DIR))
    stray = [f for f in user.choice_files if os.path.dirname(f) != schema_dir]
    if stray:
        raise UserError("%s: %s: belongs in schema files (%s/), not in configs"
                        % (sorted(stray)[0], CHOICES_KEY, os.path.join(root, SCHEMA_DIR)))

    cfg = copy.deepcopy(schema.data)
    origins = dict(schema.origins)
    _merge_into(cfg, user.data)
    origins.update(user.origins)
    layer, paths = _override_layer(parsed, cfg, schema.data)
    _merge_into(cfg, layer)
    for p in paths:
        for end in range(1, len(p) + 1):
            origins[p[:end]] = COMMAND_LINE

    validator = _Validator(schema.data, schema.choices, origins, model, schema_file)
    return validator.mapping(cfg, schema.data, ())


load = load_config  # the name docs/ARCHITECTURE.md uses


def _check_choices(schema: _Layers, schema_file: str) -> None:
    for key in schema.choices:
        if get_path(schema.data, key, _MISSING) is _MISSING:
            raise UserError("%s: %s names %r, which the schema does not declare"
                            % (schema_file, CHOICES_KEY, key))


def dump_config(cfg: dict, path: str) -> str:
    """Write the resolved config as YAML that load_config reads back to the same dict.

    Keys keep the schema's order (common keys first, as documented in common.yaml, then the
    model's), which is stable for a given config and reads like the schema. Written to a
    temporary file and renamed, so a reader never sees half a file. Returns `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    text = yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100,
                     default_flow_style=False)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".yaml", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
