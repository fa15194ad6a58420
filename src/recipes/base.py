"""The Recipe interface: the only model-specific glue between the config and the engine.

A recipe builds its data (a Loader and validation samples), its nets, losses, optimizers and
train step(s), and says what to checkpoint and what to export. The engine (loop, evaluate,
export, checkpoint) only talks to this interface. Recipes register themselves in RECIPES under
their `name`, which is the config's `model`."""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import Dict, Iterable, List, Tuple

import numpy as np

from src.data.paired import IMAGE_EXTENSIONS
from src.errors import UserError, did_you_mean
from src.registry import Registry

RECIPES = Registry("recipe")

# Recipe modules import MindSpore and the nets; they are imported on demand so that asking for
# one recipe does not load the others. A module's name is its recipe's name.
BUILTIN_RECIPES = ("aecrnet", "singan_dehaze", "lsid")


@dataclass(frozen=True)
class RecipeContext:
    data_dir: str             # where the job staged data_url
    output_dir: str           # local output dir (ckpt/, samples/, export/ live under it)
    num_shards: int = 1       # data-parallel world size
    shard_id: int = 0         # this rank's shard
    distributed: bool = False  # reduce gradients across ranks
    is_main: bool = True      # rank 0: writes checkpoints, samples, exports
    seed: int = 0
    task: str = "train"       # what the job does: a recipe reads only the data it needs


class Recipe(abc.ABC):
    name = ""
    #: Config keys naming weight files that build() reads (a path, a path inside data_url, or
    #: a URL): `--task=plan` checks they exist.
    WEIGHT_KEYS: Tuple[str, ...] = ()
    #: build() also finds a relative weights path inside the staged data_url.
    WEIGHTS_IN_DATA_URL = False

    def __init__(self, cfg: dict, ctx: RecipeContext):
        self.cfg = cfg
        self.ctx = ctx

    def source(self, key: str):
        """The data Source of `data.<key>` ("train" or "val"), built once from its registry
        spec over the staged data folder; None when the config has none."""
        sources = self.__dict__.setdefault("_sources", {})
        if key not in sources:
            spec = self.cfg["data"].get(key)
            sources[key] = (self.make_source(spec, "data." + key, key)
                            if isinstance(spec, dict) and spec.get("type") else None)
        return sources[key]

    def make_source(self, spec: dict, where: str, key: str):
        """Build one Source; a `mode` the spec leaves out follows its role (train / eval)."""
        import inspect

        import src.data.paired  # noqa: F401  (the imports register the data sets)
        import src.data.sid  # noqa: F401
        import src.data.unpaired  # noqa: F401
        from src.registry import DATASETS

        extra = {"root": self.ctx.data_dir}
        if "mode" in inspect.signature(DATASETS.get(spec["type"])).parameters \
                and "mode" not in spec:
            extra["mode"] = "train" if key == "train" else "eval"
        return DATASETS.build(spec, where, **extra)

    def train_loader(self):
        """The training Loader for this shard."""
        from src.data.loader import Loader

        source = self.source("train")
        if source is None:
            raise UserError("data.train: no training data set configured (a {type: ...} spec)")
        d = self.cfg["data"]
        return Loader(source, int(d["batch_size"]), shuffle=True, drop_last=True,
                      num_shards=self.ctx.num_shards, shard_id=self.ctx.shard_id,
                      seed=int(self.cfg["seed"]), workers=int(d["num_workers"]),
                      prefetch=int(d["prefetch"]))

    def val_samples(self) -> Iterable[dict]:
        """Validation samples: dicts with input, target, reference (CHW) and name."""
        source = self.source("val")
        if source is None:
            return []
        limit = int(self.cfg["eval"].get("max_images") or 0)
        count = min(limit, len(source)) if limit else len(source)
        return (source.load(i, np.random.default_rng(i)) for i in range(count))

    @abc.abstractmethod
    def build(self) -> None:
        """Nets, losses, optimizers and train step(s)."""

    @abc.abstractmethod
    def train_step(self, batch: Dict[str, np.ndarray]) -> dict:
        """One optimisation step on a batch → loss terms (Tensors or floats) by name; the first
        one (or 'loss') is the total checked for finiteness."""

    @abc.abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """(1, C, H, W) padded input → (1, 3, H*s, W*s) RGB in [0, 1], s = output_scale()."""

    @abc.abstractmethod
    def checkpoint_cells(self) -> dict:
        """Cells saved and restored together: nets AND optimizers, keyed by prefix."""

    @abc.abstractmethod
    def export_cell(self) -> Tuple[object, List[np.ndarray]]:
        """(inference cell, example inputs) for MindIR export."""

    def output_scale(self) -> int:
        return 1

    # -- --task infer: what a file means to this model ----------------------------------------

    #: Files --task infer restores (compared case-insensitively).
    infer_extensions: Tuple[str, ...] = IMAGE_EXTENSIONS
    #: Whether the exported MindIR takes any height/width (else: export.height × width).
    dynamic_export = True

    def infer_input(self, path: str) -> Tuple[np.ndarray, dict]:
        """One file → (CHW float32 input of `predict`, info): a photo as [0, 1] RGB, info
        holding its bit depth and alpha (kept in the restored PNG). UserError if unreadable."""
        from src.data.images import read_image, to_chw

        info: dict = {}
        return to_chw(read_image(path, info)), info

    def net_input(self, x: np.ndarray) -> np.ndarray:
        """predict's input → the exported net's input (the same mapping predict applies)."""
        return np.asarray(x, dtype=np.float32)

    def net_output(self, y: np.ndarray) -> np.ndarray:
        """The exported net's output → predict's: RGB in [0, 1]."""
        return np.clip(y, 0.0, 1.0)

    @staticmethod
    def infer(net, x: np.ndarray) -> np.ndarray:
        """One forward pass in eval mode (running statistics, not batch ones), then back to
        training mode: evaluation happens between training steps."""
        import mindspore as ms

        net.set_train(False)
        try:
            return net(ms.Tensor(np.ascontiguousarray(x, dtype=np.float32))).asnumpy()
        finally:
            net.set_train(True)

    def describe(self) -> dict:
        """What run.json records about the built model: parameter counts per cell."""
        from mindspore import nn

        counts = {}
        for key, cell in self.checkpoint_cells().items():
            if isinstance(cell, nn.Optimizer):
                continue  # optimizers hold the nets' weights plus their own state
            counts[key] = int(sum(int(np.prod(p.shape)) for p in cell.trainable_params()))
        return {"model": self.name, "parameters": counts,
                "total_parameters": int(sum(counts.values()))}

    @classmethod
    def check_config(cls, checks) -> None:
        """Model-specific value checks, run by `src.checks.check_values` before anything is
        staged (also for --task plan): record problems on `checks` (a `src.checks.Checks`:
        `checks.cfg`, `checks.for_tasks(...)`, `checks.number/multiple/require(...)`). Runs
        without MindSpore: never import it here. Default: nothing to add."""
        return None

    @classmethod
    def reads(cls, cfg: dict, task: str) -> List[str]:
        """Config keys naming what `task` reads, for the checks before anything is staged
        (src/preflight.py): data set specs (`data.train`: {type: ...}) and files (weights,
        checkpoints). `plan` reads what train reads. Training evaluates on data.val; eval reads
        only data.val; export and other model tasks read no data set; synth and preprocess
        build no model."""
        if task in ("synth", "preprocess"):
            return []
        data = cfg.get("data") or {}
        sets = [key for key in ("train", "val") if isinstance(data.get(key), dict)
                and data[key].get("type")]
        if task in ("train", "plan"):
            return ["data." + k for k in sets] + ["train.resume"] + list(cls.WEIGHT_KEYS)
        keys = ["data.val"] if task == "eval" and "val" in sets else []
        return keys + ["eval.checkpoint"] + list(cls.WEIGHT_KEYS)

    @classmethod
    @abc.abstractmethod
    def synthesize(cls, cfg: dict, out_dir: str) -> dict:
        """--task synth: write the small synthetic data set the config reads; → summary."""

    @classmethod
    def preprocess(cls, cfg: dict, data_dir: str, out_dir: str, done=()) -> dict:
        """Convert data_dir into out_dir; `done` maps relative outputs that exist at a remote
        destination to their listed sizes (None: unknown), so complete ones are skipped
        without being downloaded (src/data/manifest.py: PREPROCESSED.jsonl in out_dir says
        which sizes are complete)."""
        raise UserError("model %r has no preprocess task; run --task train (or synth) instead"
                        % cls.name)


def register_recipe(cls):
    """Class decorator: register under `cls.name`."""
    if not cls.name:
        raise ValueError("recipe %s has no name" % cls.__name__)
    return RECIPES.register(cls, name=cls.name)


def get_recipe(name: str):
    """The Recipe class for config `model: name`, importing its module on first use."""
    if name not in RECIPES.names() and name in BUILTIN_RECIPES:
        importlib.import_module("src.recipes.%s" % name)
    if name not in RECIPES.names():
        known = sorted(set(BUILTIN_RECIPES) | set(RECIPES.names()))
        raise UserError("unknown model %r%s; known: %s" % (name, did_you_mean(name, known),
                                                           ", ".join(known)))
    return RECIPES.get(name)
