"""Value checks on a resolved config: fail fast, naming the key, before anything is staged.

The config schema (src/config.py) checks keys and types; this module checks ranges and
relations: a learning rate of 0, a batch size of -1, an export size the network cannot take.
Without it such values fail late (an export size after the whole training) or are blamed on
another key. `check_values(cfg, task)` runs in start.py right after `load_config`, before the
environment, the job or MindSpore, and raises ONE UserError that lists every problem, each as
`key=value (what is allowed)`.

A key is checked only for the tasks that use it (`--task=plan` checks them all): a synth job is
not refused for a bad learning rate. The recipe of the config's model adds its own checks
(`Recipe.check_config(checks)`: crop sizes and export sizes its network can take, its loss
settings...). Recipe modules import MindSpore lazily, so this stays MindSpore-free."""
from __future__ import annotations

import numbers
from typing import Any, List, Optional

from src.errors import UserError

#: Tasks that build the model (recipe.build(): the nets; training also its losses and optimizers).
MODEL_TASKS = ("train", "eval", "export", "infer")
_MISSING = object()


def _show(value: Any) -> str:
    text = " ".join(repr(value).split()) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class Checks:
    """Collects problems with a config's values. Each check method takes a dotted key, skips
    keys the config does not have (a registry spec of another type), records a problem when the
    value is out of range, and returns whether the value is fine."""

    def __init__(self, cfg: dict, task: str = "plan"):
        self.cfg = cfg
        self.task = task
        self.problems: List[str] = []
        self._failed: set = set()

    # -- what to check ----------------------------------------------------------------------

    def for_tasks(self, *tasks: str) -> bool:
        """True when the current task uses keys that these tasks use (`plan` uses all)."""
        return self.task == "plan" or self.task in tasks

    @property
    def exporting(self) -> bool:
        """The task writes the MindIR export (export, or train with export.enabled)."""
        return self.for_tasks("export") or (
            self.task == "train" and bool(self.get("export.enabled", True)))

    def get(self, key: str, default: Any = None) -> Any:
        """The value at a dotted key, or `default` when the config has no such key."""
        node: Any = self.cfg
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def has(self, key: str) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def failed(self, key: str) -> bool:
        return key in self._failed

    # -- recording --------------------------------------------------------------------------

    def fail(self, key: str, value: Any, want: str) -> bool:
        """Record `key=value (want)`; one problem per key. Returns False (for `return
        checks.fail(...)`)."""
        if key not in self._failed:
            self._failed.add(key)
            self.problems.append("%s=%s (must be %s)" % (key, _show(value), want))
        return False

    def require(self, key: str, ok: bool, want: str, value: Any = _MISSING) -> bool:
        """A free-form check: `ok` False records the key with its value (or `value`)."""
        if ok:
            return True
        return self.fail(key, self.get(key) if value is _MISSING else value, want)

    def number(self, key: str, *, gt: Optional[float] = None, ge: Optional[float] = None,
               lt: Optional[float] = None, le: Optional[float] = None,
               integer: bool = False, note: str = "") -> bool:
        """A number (an integer with `integer`) within the given bounds."""
        if not self.has(key) or self.failed(key):
            return not self.failed(key)
        value = self.get(key)
        bounds = []
        if gt is not None:
            bounds.append("> %s" % _num(gt))
        if ge is not None:
            bounds.append(">= %s" % _num(ge))
        if lt is not None:
            bounds.append("< %s" % _num(lt))
        if le is not None:
            bounds.append("<= %s" % _num(le))
        want = ("an integer" if integer else "a number") + (" " + " and ".join(bounds)
                                                          if bounds else "")
        if note:
            want += "; " + note
        if not (is_int(value) if integer else is_number(value)):
            return self.fail(key, value, want)
        ok = ((gt is None or value > gt) and (ge is None or value >= ge)
              and (lt is None or value < lt) and (le is None or value <= le))
        return ok or self.fail(key, value, want)

    def multiple(self, key: str, of: int, why: str, *, minimum: Optional[int] = None,
                 zero_ok: bool = False) -> bool:
        """An integer multiple of `of`, at least `minimum` (default `of`); 0 too with
        `zero_ok` (0 meaning "off" or "whole image")."""
        if not self.has(key) or self.failed(key):
            return not self.failed(key)
        value = self.get(key)
        low = of if minimum is None else minimum
        if zero_ok and is_int(value) and value == 0:
            return True
        if is_int(value) and value >= low and value % of == 0:
            return True
        near = max(low + (-low) % of, (int(value) // of * of) if is_number(value) else 0)
        return self.fail(key, value, "a multiple of %d, >= %d%s: %s; e.g. %d"
                         % (of, low, " (or 0)" if zero_ok else "", why, near))

    def raise_if_any(self, where: str = "config") -> None:
        if not self.problems:
            return
        n = len(self.problems)
        err = UserError("%s: %s: %s; fix %s in the config file or on the command line "
                        "(e.g. --%s=...)" % (
                            where, "a bad value" if n == 1 else "%d bad values" % n,
                            "; ".join(self.problems), "it" if n == 1 else "them",
                            self.problems[0].split("=", 1)[0]))
        err.problems = list(self.problems)  # type: ignore[attr-defined]  # plan: one line each
        raise err


def _num(x: float) -> str:
    return "%g" % x


def check_common(checks: Checks) -> None:
    """Keys every model has (configs/_base_/common.yaml)."""
    c = checks
    c.number("rank_table_timeout", gt=0, note="seconds to wait for the rank table")
    c.number("sync.threads", ge=1, integer=True)
    c.number("sync.retries", ge=0, integer=True)
    if c.for_tasks(*MODEL_TASKS):
        c.number("seed", ge=0, integer=True)
        c.number("train.max_steps", ge=1, integer=True)
        c.number("train.keep_last", ge=0, integer=True, note="0 keeps every checkpoint")
        check_optimizers(c)
    if c.for_tasks("train"):
        c.number("data.batch_size", ge=1, integer=True, note="per device")
        # Loader: workers=0 loads in the training thread (debugging); prefetch < 1 is
        # silently raised to 1 there, so it is refused here.
        c.number("data.num_workers", ge=0, integer=True, note="0 loads in the training thread")
        c.number("data.prefetch", ge=1, integer=True)
        for key in ("log_every", "eval_every", "ckpt_every"):
            c.number("train." + key, ge=0, integer=True, note="0 = only at the end")
        scale = c.get("train.loss_scale")
        if scale != "dynamic":
            c.number("train.loss_scale", gt=0, note="or dynamic")
    if c.for_tasks("train", "eval"):
        c.number("eval.pad_multiple", ge=1, integer=True)
        c.number("eval.num_samples", ge=0, integer=True)
        c.number("eval.max_images", ge=0, integer=True, note="0 = all")
    if c.exporting:
        c.number("export.height", ge=1, integer=True)
        c.number("export.width", ge=1, integer=True)
    if c.for_tasks("infer"):
        c.number("eval.pad_multiple", ge=1, integer=True)
        if c.number("infer.tile", ge=16, integer=True, note="pixels per tile side"):
            c.number("infer.overlap", ge=0, lt=c.get("infer.tile") // 2, integer=True,
                     note="less than half of infer.tile")
        c.number("infer.log_every", ge=1, integer=True)


def check_optimizers(checks: Checks) -> None:
    """Every optimizer section under `optim` (AECR-Net / LSID: optim; SinGAN-Dehaze: optim.g,
    optim.d; any nesting): learning rate > 0, betas in [0, 1), eps > 0, weight decay >= 0."""
    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            path = prefix + "." + key
            if isinstance(value, dict):
                walk(value, path)
            elif key == "lr" or key.endswith("_lr"):
                checks.number(path, gt=0, note="a learning rate")
            elif key in ("beta1", "beta2"):
                checks.number(path, ge=0, lt=1)
            elif key == "eps":
                checks.number(path, gt=0)
            elif key == "weight_decay":
                checks.number(path, ge=0)

    walk(checks.get("optim"), "optim")


#: Models whose losses run on a frozen ImageNet VGG: (architecture, the loss weights that use it).
VGG_LOSSES = {
    "aecrnet": ("vgg19", ("loss.cr_weight",)),
    "singan_dehaze": ("vgg16", ("loss.weights.perceptual", "loss.weights.mmd")),
}
#: torchvision's file for each architecture, as the converter's usage names it.
TORCHVISION_VGG = {"vgg16": "vgg16-397923af.pth", "vgg19": "vgg19-dcbb9e9d.pth"}


def check_vgg_weights(checks: Checks) -> None:
    """A training run whose loss uses VGG features needs ImageNet VGG weights: on a random VGG
    the contrastive / perceptual / MMD terms are not the paper's losses, and (on a CPU) cost
    most of each step, so such a run would be paid for and meaningless. Refused unless
    `loss.allow_random_vgg` says the random VGG is wanted (an experiment)."""
    c = checks
    spec = VGG_LOSSES.get(str(c.get("model", "")))
    if spec is None or not c.for_tasks("train"):
        return
    arch, terms = spec
    if c.get("loss.vgg_weights") or c.get("loss.allow_random_vgg") is True:
        return
    using = ["%s=%s" % (key, _num(c.get(key))) for key in terms
             if is_number(c.get(key)) and c.get(key) > 0]
    if not using:
        return
    c.fail("loss.vgg_weights", c.get("loss.vgg_weights", ""),
           "a converted %s checkpoint while %s: convert torchvision's once with `python -m "
           "src.tools.convert_torch %s %s %s.ckpt` and set --loss.vgg_weights=obs://.../%s.ckpt; "
           "or set %s for a run without VGG, or --loss.allow_random_vgg=true to train on a "
           "random %s as an experiment"
           % (arch.upper(), " and ".join(using), arch, TORCHVISION_VGG[arch], arch, arch,
              " and ".join("--%s=0" % key for key in terms), arch.upper()))


def check_values(cfg: dict, task: str = "plan", recipe_cls=None) -> None:
    """Raise one UserError listing every out-of-range value `task` would use (see the module
    docstring). `recipe_cls`: the model's Recipe class (default: looked up from cfg['model'],
    which imports the recipe module but not MindSpore)."""
    checks = Checks(cfg, task)
    check_common(checks)
    check_vgg_weights(checks)
    if recipe_cls is None and cfg.get("model"):
        from src.recipes.base import get_recipe

        recipe_cls = get_recipe(str(cfg["model"]))
    if recipe_cls is not None:
        recipe_cls.check_config(checks)
    checks.raise_if_any()
