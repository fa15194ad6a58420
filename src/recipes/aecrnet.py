"""AECR-Net recipe: paired dehazing, L1 + λ·contrastive regularisation, Adam with cosine decay.

Training follows the authors' train_aecrnet.py: Adam(β 0.9/0.999, eps 1e-8), lr 1e-4 with
`lr_t = 0.5 (1 + cos(π t / T)) lr0` for step t = 1..T, batch 16 of 240² random crops with flips
and 90° rotations, loss L1(out, clear) + 0.1 · CR(out, clear, hazy).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Dict, List, Tuple

import numpy as np

from src.checks import is_int
from src.errors import UserError
from src.recipes.base import Recipe, RecipeContext, register_recipe

log = logging.getLogger(__name__)

SCHEDULE_KEYS = ("type", "warmup_steps", "min_lr")
NO_VGG = "NONE — random init, contrastive loss not meaningful"


def lr_schedule(base_lr: float, total_steps: int, kind: str = "cosine", warmup_steps: int = 0,
                min_lr: float = 0.0) -> np.ndarray:
    """Per-step learning rates (float32, length total_steps); entry i is used by step i+1.

    cosine: linear warm-up over `warmup_steps`, then min_lr + (lr0 - min_lr) ·
    0.5 (1 + cos(π t / T)) with t = 1..T counted after the warm-up (the authors' schedule when
    warmup_steps = 0 and min_lr = 0: the last step's rate is min_lr). constant: lr0."""
    total = int(total_steps)
    if total < 1:
        raise UserError("train.max_steps must be >= 1, got %r" % (total_steps,))
    warm = int(warmup_steps)
    if not 0 <= warm < total:
        raise UserError("schedule.warmup_steps must be in [0, train.max_steps), got %r"
                        % (warmup_steps,))
    if kind == "constant":
        lrs = np.full(total, base_lr, np.float64)
    elif kind == "cosine":
        steps = np.arange(1, total - warm + 1, dtype=np.float64)
        decay_len = float(total - warm)
        lrs = min_lr + (base_lr - min_lr) * 0.5 * (1.0 + np.cos(math.pi * steps / decay_len))
        if warm:
            ramp = base_lr * np.arange(1, warm + 1, dtype=np.float64) / warm
            lrs = np.concatenate([ramp, lrs])
    else:
        raise UserError("schedule.type must be cosine or constant, got %r" % (kind,))
    return lrs.astype(np.float32)


def _multiple_of_4(value, key: str) -> int:
    if int(value) % 4 != 0 or int(value) < 4:
        raise UserError("%s=%r: AECR-Net needs sizes divisible by 4 (two stride-2 stages); "
                        "use e.g. %d" % (key, value, max(4, int(value) // 4 * 4)))
    return int(value)


@register_recipe
class AECRNetRecipe(Recipe):
    name = "aecrnet"
    WEIGHT_KEYS = ("net_weights", "loss.vgg_weights")  # read by build() below
    WEIGHTS_IN_DATA_URL = True  # _resolve_path
    # MindSpore cannot export the deformable conv for an unknown height/width (2.8.0:
    # DeformableOffsets' shape inference fails): the MindIR has export.height × width, and
    # --task infer runs it on tiles of that size.
    dynamic_export = False

    def __init__(self, cfg: dict, ctx: RecipeContext):
        super().__init__(cfg, ctx)
        train_spec = cfg["data"]["train"]
        crop = int(train_spec.get("crop", 0) or 0)
        if crop:
            _multiple_of_4(crop, "data.train.crop")
        _multiple_of_4(cfg["eval"]["pad_multiple"], "eval.pad_multiple")
        neg_num = int(cfg["loss"]["neg_num"])
        if int(cfg["data"]["batch_size"]) < 1:
            # Checked first: a bad batch size must not be reported as a bad loss.neg_num.
            raise UserError("data.batch_size=%r: must be >= 1" % (cfg["data"]["batch_size"],))
        if neg_num > int(cfg["data"]["batch_size"]):
            raise UserError("loss.neg_num=%d exceeds data.batch_size=%d: the extra negatives are "
                            "other hazy images of the same batch" % (neg_num,
                                                                     int(cfg["data"]["batch_size"])))
        unknown = [k for k in cfg["schedule"] if k not in SCHEDULE_KEYS]
        if unknown:
            raise UserError("schedule: unknown key %r; keys: %s" % (unknown[0],
                                                                    ", ".join(SCHEDULE_KEYS)))
        self.net = None
        self.loss = None
        self.optimizer = None
        self.step = None

    # -- model ------------------------------------------------------------------------------

    def _resolve_path(self, value: str, key: str) -> str:
        """A weights path as given, or relative to the staged data folder."""
        if not value or os.path.isabs(value) or os.path.exists(value):
            return value
        staged = os.path.join(self.ctx.data_dir, value) if self.ctx.data_dir else ""
        if staged and os.path.exists(staged):
            return staged
        raise UserError("%s=%s: file not found (give a local path, a path inside data_url, or "
                        "an obs:// URL)" % (key, value))

    def build(self) -> None:
        import mindspore as ms

        from src.engine.step import adam, build_train_step
        from src.losses.contrastive import AECRLoss
        from src.nets.aecrnet import AECRNet  # noqa: F401  (registers the net)
        from src.registry import NETS

        cfg = self.cfg
        self.net = NETS.build(cfg["net"], "net")
        weights = self._resolve_path(cfg.get("net_weights", ""), "net_weights")
        if weights:
            from src.engine.checkpoint import load_net_weights

            load_net_weights(self.net, weights)
            log.info("initialised AECRNet from %s", weights)
        if self.ctx.task != "train":
            # Evaluating or exporting runs the net only: no loss (and its VGG), no optimizer.
            self.net.set_train(True)
            return
        lc = cfg["loss"]
        self.vgg_weights = self._resolve_path(lc["vgg_weights"], "loss.vgg_weights")
        self.loss = AECRLoss(l1_weight=float(lc["l1_weight"]), cr_weight=float(lc["cr_weight"]),
                             neg_num=int(lc["neg_num"]), vgg_weights=self.vgg_weights or None,
                             vgg_normalize=bool(lc["vgg_normalize"]),
                             ablation=bool(lc["ablation"]))
        if self.loss.cr is None:
            log.info("loss: plain L1 (loss.cr_weight=0, no VGG19 built); the paper's loss, "
                     "L1 + 0.1·CR, needs ImageNet VGG19 weights in loss.vgg_weights")
        elif self.loss.vgg_pretrained is False:
            log.warning("loss.cr_weight=%g with NO VGG19 weights (loss.vgg_weights is empty, "
                        "loss.allow_random_vgg is set): the contrastive term runs on a random "
                        "VGG and is not the paper's CR. "
                        "This run is labelled vgg_weights='%s' in run.json.",
                        float(lc["cr_weight"]), NO_VGG)
        oc, sc = cfg["optim"], cfg["schedule"]
        self.lrs = lr_schedule(float(oc["lr"]), int(cfg["train"]["max_steps"]),
                               str(sc.get("type", "cosine")), int(sc.get("warmup_steps", 0)),
                               float(sc.get("min_lr", 0.0)))
        self.optimizer = adam(self.net.trainable_params(), learning_rate=ms.Tensor(self.lrs),
                                 beta1=float(oc["beta1"]), beta2=float(oc["beta2"]),
                                 eps=float(oc["eps"]), weight_decay=float(oc["weight_decay"]))
        net, loss = self.net, self.loss

        def forward(hazy, clear):
            out = net(hazy)
            total, l1, cr = loss(out, clear, hazy)
            return total, l1, cr

        tc = cfg["train"]
        self.step = build_train_step(forward, self.optimizer, distributed=self.ctx.distributed,
                                     loss_scale=tc["loss_scale"], jit=bool(tc["jit"]))
        self.net.set_train(True)

    def train_step(self, batch: Dict[str, np.ndarray]) -> dict:
        hazy, clear = batch["input"], batch["target"]
        h, w = hazy.shape[-2:]
        if h % 4 or w % 4:
            raise UserError("AECR-Net training batch of %dx%d: height and width must be "
                            "divisible by 4; set data.train.crop to a multiple of 4" % (h, w))
        total, l1, cr = self.step(hazy, clear)
        return {"loss": total, "l1": l1, "cr": cr}

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.clip(self.infer(self.net, x), 0.0, 1.0)

    def checkpoint_cells(self) -> dict:
        if self.optimizer is None:  # built for eval / export: a checkpoint's opt.* is not read
            return {"net": self.net}
        return {"net": self.net, "opt": self.optimizer}

    def export_cell(self) -> Tuple[object, List[np.ndarray]]:
        ec = self.cfg["export"]
        h = _multiple_of_4(ec["height"], "export.height")
        w = _multiple_of_4(ec["width"], "export.width")
        self.net.set_train(False)
        example = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
        return self.net, [example]

    def describe(self) -> dict:
        info = super().describe()
        lc = self.cfg["loss"]
        if float(lc["cr_weight"]) <= 0:
            vgg = "unused (loss.cr_weight = 0)"
        elif self.loss is None and self.net is not None:
            vgg = "not built (task %s: no loss)" % self.ctx.task
        elif self.loss is not None and self.loss.vgg_pretrained:
            vgg = self.vgg_weights
        else:
            vgg = NO_VGG
        info.update({"vgg_weights": vgg, "cr_weight": float(lc["cr_weight"]),
                     "neg_num": int(lc["neg_num"]),
                     "net_weights": self.cfg.get("net_weights", "") or "none (random init)"})
        return info

    @classmethod
    def check_config(cls, checks) -> None:
        c = checks
        why = "AECR-Net has two stride-2 stages"
        if c.for_tasks("train", "eval", "export", "infer"):
            # The recipe refuses these when it is built, whatever the task.
            c.multiple("data.train.crop", 4, why, zero_ok=True)
            c.multiple("eval.pad_multiple", 4, why)
            if c.number("loss.neg_num", ge=0, integer=True, note="extra negatives per anchor"):
                batch = c.get("data.batch_size")
                if is_int(batch) and batch >= 1:
                    c.require("loss.neg_num", c.get("loss.neg_num") <= batch,
                              "<= data.batch_size=%d: the extra negatives are other hazy "
                              "images of the same batch" % batch)
            c.number("loss.l1_weight", ge=0)
            c.number("loss.cr_weight", ge=0, note="0 = plain L1")
            c.number("schedule.min_lr", ge=0)
            steps = c.get("train.max_steps")
            if is_int(steps) and steps >= 1:
                c.number("schedule.warmup_steps", ge=0, lt=steps, integer=True,
                         note="less than train.max_steps")
            if c.get("net.type") == "AECRNet":
                c.number("net.ngf", ge=1, integer=True)
                c.number("net.num_blocks", ge=0, integer=True)
                c.number("net.num_dcn", ge=0, integer=True)
        if c.exporting:
            c.multiple("export.height", 4, why)
            c.multiple("export.width", 4, why)
        if c.for_tasks("synth"):
            c.number("synth.num_scenes", ge=1, integer=True)
            c.number("synth.hazy_per_scene", ge=1, integer=True)
            c.number("synth.num_val", ge=0, integer=True)
            c.number("synth.height", ge=8, integer=True)
            c.number("synth.width", ge=8, integer=True)

    @classmethod
    def synthesize(cls, cfg: dict, out_dir: str) -> dict:
        from src.data.synth_haze import synthesize_paired

        s = cfg["synth"]
        train_split = cfg["data"]["train"].get("path", "train") or "train"
        val_spec = cfg["data"].get("val") or {}
        val_split = val_spec.get("path", "val") or "val"
        return synthesize_paired(out_dir, layout=str(s["layout"]), num_scenes=int(s["num_scenes"]),
                                 hazy_per_scene=int(s["hazy_per_scene"]),
                                 num_val=int(s["num_val"]), height=int(s["height"]),
                                 width=int(s["width"]), seed=int(s["seed"]),
                                 photos=bool(s["photos"]), procedural=bool(s["procedural"]),
                                 train_split=train_split, val_split=val_split)
