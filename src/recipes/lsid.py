"""Learning to See in the Dark recipe: packed raw → sRGB U-Net, mean L1, Adam.

Training follows the authors' train_Sony.py: batch 1 of 512×512 packed crops (flips, transpose,
input clipped to 1 after ×ratio), loss mean |out − gt|, Adam (TF defaults: β 0.9/0.999,
eps 1e-8) at lr 1e-4, dropped to 1e-5 for the second half (epoch 2000 of 4000). Data come from
the HDF5 files `--task preprocess` writes (src/data/raw_preprocess.py); `--task synth` writes
synthetic DNG pairs in SID's layout (src/data/synth_raw.py)."""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Tuple

import numpy as np

from src.data.raw_preprocess import RAW_EXTENSIONS
from src.errors import UserError
from src.recipes.base import Recipe, RecipeContext, register_recipe

log = logging.getLogger(__name__)

# Four 2×2 poolings: packed sides must divide by 16.
SIZE_MULTIPLE = 16


def lr_schedule(lr: float, decay_lr: float, decay_step: int, total_steps: int) -> np.ndarray:
    """Per-step learning rates: `lr` for steps 1..decay_step, `decay_lr` after (entry i is used
    by step i+1). decay_step 0 = half of the run (the authors: epoch 2000 of 4000)."""
    total = int(total_steps)
    if total < 1:
        raise UserError("train.max_steps must be >= 1, got %r" % (total_steps,))
    at = int(decay_step) if int(decay_step) > 0 else total // 2
    if at < 0:
        raise UserError("schedule.decay_step must be >= 0, got %r" % (decay_step,))
    lrs = np.full(total, float(lr), dtype=np.float32)
    lrs[min(at, total):] = float(decay_lr)
    return lrs


def _multiple(value, key: str, multiple: int = SIZE_MULTIPLE) -> int:
    value = int(value)
    if value < multiple or value % multiple:
        raise UserError("%s=%r: the SID U-Net needs packed sizes divisible by %d (four 2x2 "
                        "poolings); use e.g. %d" % (key, value, multiple,
                                                    max(multiple, value // multiple * multiple)))
    return value


@register_recipe
class LSIDRecipe(Recipe):
    name = "lsid"

    def __init__(self, cfg: dict, ctx: RecipeContext):
        super().__init__(cfg, ctx)
        _multiple(cfg["data"]["train"].get("crop", 512), "data.train.crop")
        _multiple(cfg["eval"]["pad_multiple"], "eval.pad_multiple")
        self.net = None
        self.optimizer = None
        self.step = None

    # -- model ------------------------------------------------------------------------------

    def build(self) -> None:
        import mindspore as ms
        from mindspore import ops

        from src.engine.step import adam, build_train_step
        from src.nets.unet_sid import UNetSID  # noqa: F401  (registers the net)
        from src.registry import NETS

        cfg = self.cfg
        self.net = NETS.build(cfg["net"], "net", seed=int(cfg["seed"]))
        oc, sc = cfg["optim"], cfg["schedule"]
        self.lrs = lr_schedule(float(oc["lr"]), float(sc["decay_lr"]), int(sc["decay_step"]),
                               int(cfg["train"]["max_steps"]))
        self.optimizer = adam(self.net.trainable_params(), learning_rate=ms.Tensor(self.lrs),
                                 beta1=float(oc["beta1"]), beta2=float(oc["beta2"]),
                                 eps=float(oc["eps"]), weight_decay=float(oc["weight_decay"]))
        net = self.net

        def forward(raw, target):
            diff = net(raw) - target
            # The loss is the authors' mean L1; the MSE rides along as a logged term (training
            # PSNR = -10 log10 mse) and keeps `has_aux` well-formed, which PyNative requires.
            return ops.abs(diff).mean(), ops.stop_gradient(ops.square(diff).mean())

        tc = cfg["train"]
        self.step = build_train_step(forward, self.optimizer, distributed=self.ctx.distributed,
                                     loss_scale=tc["loss_scale"], jit=bool(tc["jit"]))
        self.net.set_train(True)

    def train_step(self, batch: Dict[str, np.ndarray]) -> dict:
        raw, target = batch["input"], batch["target"]
        h, w = raw.shape[-2:]
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise UserError("SID training crop of %dx%d packed pixels: sides must divide by 16; "
                            "set data.train.crop to a multiple of 16" % (h, w))
        loss, mse = self.step(raw, target)
        return {"loss": loss, "mse": mse}

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.clip(self.infer(self.net, x), 0.0, 1.0)

    def output_scale(self) -> int:
        return 2

    # --task infer reads raw files (and HDF5 files --task preprocess wrote).
    infer_extensions = RAW_EXTENSIONS + (".h5",)

    def infer_input(self, path: str) -> Tuple[np.ndarray, dict]:
        """A raw file packed exactly as --task preprocess packs it (convert_raw into a scratch
        HDF5 file, read back as the SID data set reads it), × infer.ratio, clipped to 1."""
        import tempfile

        from src.data.raw_preprocess import convert_raw
        from src.data.sid import SIDPairs

        ratio = float(self.cfg["infer"]["ratio"])
        h5 = path
        with tempfile.TemporaryDirectory(prefix="lsid-infer-") as tmp:
            if not path.lower().endswith(".h5"):
                h5 = os.path.join(tmp, "raw.h5")
                try:
                    convert_raw(path, h5, ground_truth=False, compression="none",
                                source_name=os.path.basename(path))
                except Exception as exc:  # LibRaw's errors have many types; all say "unreadable"
                    raise UserError("cannot decode raw %s: %s" % (
                        path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)) from exc
            try:
                import h5py

                with h5py.File(h5, "r") as f:
                    raw = f["raw"][()]
                    meta = {"black": np.asarray(f.attrs["black_level"],
                                                np.float32).reshape(4, 1, 1),
                            "white": float(f.attrs["white_level"])}
            except (OSError, KeyError) as exc:
                raise UserError("cannot read %s: %s (an HDF5 file of --task preprocess)"
                                % (path, exc)) from exc
        x = np.minimum(SIDPairs._normalise(raw, meta, ratio), 1.0)
        return np.ascontiguousarray(x, dtype=np.float32), {"bits": 8}

    def checkpoint_cells(self) -> dict:
        return {"net": self.net, "opt": self.optimizer}

    def export_cell(self) -> Tuple[object, List[np.ndarray]]:
        ec = self.cfg["export"]
        h = _multiple(ec["height"], "export.height")
        w = _multiple(ec["width"], "export.width")
        self.net.set_train(False)
        example = np.random.default_rng(0).random((1, 4, h, w), dtype=np.float32)
        return self.net, [example]

    def describe(self) -> dict:
        info = super().describe()
        info.update({
            "init": "TF-slim defaults as the authors' release: Xavier-uniform conv weights, zero "
                    "biases, truncated-normal(0.02) transposed convs",
            "input": "packed Bayer R,G,B,G at H/2 x W/2, x min(t_long/t_short, %g), clipped to 1"
                     % float(self.cfg["data"]["train"].get("max_ratio", 300.0)),
            "output_scale": 2,
        })
        # The pairs, scenes and ratios of the data this job reads (an export reads none): an
        # evaluation needs only its own list or folder, not the training one.
        key = {"train": "train", "eval": "val"}.get(self.ctx.task)
        source = self.source(key) if self.ctx.data_dir and key else None
        if source is not None:
            info["%s_data" % key] = source.describe()
        return info

    # -- data tasks -------------------------------------------------------------------------

    @classmethod
    def check_config(cls, checks) -> None:
        c = checks
        why = "the SID U-Net pools four times (packed pixels)"
        if c.for_tasks("train", "eval", "export", "infer"):
            # The recipe refuses these when it is built, whatever the task.
            c.multiple("data.train.crop", SIZE_MULTIPLE, why)
            c.multiple("eval.pad_multiple", SIZE_MULTIPLE, why)
            c.number("schedule.decay_step", ge=0, integer=True, note="0 = half of train.max_steps")
            c.number("schedule.decay_lr", gt=0, note="a learning rate")
            if c.get("net.type") == "UNetSID":
                c.number("net.base_channels", ge=1, integer=True)
                c.number("net.block", ge=1, integer=True)
        if c.for_tasks("train", "eval"):
            for split in ("train", "val"):
                c.number("data.%s.max_ratio" % split, gt=0)
            c.number("data.val.crop", ge=0, integer=True, note="0 = full images")
        if c.for_tasks("infer"):
            c.number("infer.ratio", gt=0, note="the exposure amplification, e.g. 100")
        if c.exporting:
            c.multiple("export.height", SIZE_MULTIPLE, why)
            c.multiple("export.width", SIZE_MULTIPLE, why)
        if c.for_tasks("preprocess"):
            c.number("preprocess.workers", ge=-1, integer=True,
                     note="-1 = one per CPU, 0 = in the main process")
        if c.for_tasks("synth"):
            c.number("synth.num_scenes", ge=1, le=9999, integer=True)
            c.number("synth.num_test_scenes", ge=0, le=9999, integer=True)
            c.number("synth.num_val_scenes", ge=0, le=9999, integer=True)
            for key in ("synth.height", "synth.width"):
                if c.number(key, ge=32, integer=True, note="a Bayer mosaic LibRaw reads"):
                    c.require(key, c.get(key) % 2 == 0, "even (a Bayer mosaic)")
            c.number("synth.long_exposure", gt=0)
            c.number("synth.frames", ge=1, le=100, integer=True)
            c.number("synth.read_noise", ge=0)

    @classmethod
    def synthesize(cls, cfg: dict, out_dir: str) -> dict:
        from src.data.synth_raw import synthesize_sid

        s = cfg["synth"]
        return synthesize_sid(
            out_dir, num_scenes=int(s["num_scenes"]), num_test_scenes=int(s["num_test_scenes"]),
            num_val_scenes=int(s["num_val_scenes"]), height=int(s["height"]),
            width=int(s["width"]), long_exposure=float(s["long_exposure"]),
            short_exposures=[float(t) for t in s["short_exposures"]], frames=int(s["frames"]),
            cfa=str(s["cfa"]), iso=[int(i) for i in s["iso"]],
            read_noise=float(s["read_noise"]), camera=str(s["camera"]), seed=int(s["seed"]))

    @classmethod
    def preprocess(cls, cfg: dict, data_dir: str, out_dir: str, done=()) -> dict:
        from src.data.raw_preprocess import preprocess_raws

        p = cfg["preprocess"]
        workers = int(p["workers"])
        return preprocess_raws(data_dir, out_dir, workers=None if workers < 0 else workers,
                               gt_dirs=[str(d) for d in p["gt_dirs"]],
                               compression=str(p["compression"]), done=done)
