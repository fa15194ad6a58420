"""Frozen torchvision-layout VGG16/VGG19 feature extractors for perceptual and contrastive losses.

Parameter names follow torchvision's `features.N.weight` / `features.N.bias` numbering, so a
checkpoint converted from torchvision's `.pth` (src/tools/convert_torch.py) loads by name. Only
the layers up to the deepest requested one are built.

    vgg = VGGFeatures("vgg19", ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"],
                      weights="/cache/vgg19.ckpt", normalize=False)
    feats = vgg(x)            # tuple of tensors, in the order of `layers`

Layer names: convB_I, reluB_I (block B, conv I, 1-based), poolB. `weights=None` builds a
randomly initialised VGG and says so loudly (`vgg.pretrained` is False): a perceptual or
contrastive loss over random features is not the loss of the paper.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import mindspore as ms
from mindspore import nn

from src.errors import UserError

logger = logging.getLogger(__name__)

CFGS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def layer_indices(arch: str) -> Dict[str, int]:
    """Name → index in torchvision's `features` Sequential, e.g. vgg19 relu5_1 → 29."""
    if arch not in CFGS:
        raise UserError("unknown VGG arch %r; known: %s" % (arch, ", ".join(sorted(CFGS))))
    names: Dict[str, int] = {}
    idx, block, conv = 0, 1, 0
    for v in CFGS[arch]:
        if v == "M":
            names["pool%d" % block] = idx
            idx += 1
            block += 1
            conv = 0
        else:
            conv += 1
            names["conv%d_%d" % (block, conv)] = idx
            names["relu%d_%d" % (block, conv)] = idx + 1
            idx += 2
    return names


def _warn_random(arch: str, why: str) -> None:
    bar = "!" * 78
    logger.warning(bar)
    logger.warning("%s: NO PRETRAINED WEIGHTS (%s) - RANDOMLY INITIALISED VGG.", arch.upper(), why)
    logger.warning("Losses computed on these features are NOT the paper's perceptual/contrastive "
                   "loss. Convert torchvision weights with `python -m src.tools.convert_torch "
                   "%s %s.pth %s.ckpt` and set the config's VGG weights path.", arch, arch, arch)
    logger.warning(bar)


class VGGFeatures(nn.Cell):
    """A frozen cell returning a tuple of feature maps for `layers`, in that order.

    arch: "vgg19" | "vgg16". layers: e.g. ("relu1_1", ..., "relu5_1") for AECR-Net's CR, or
    ("relu1_2", "relu2_2", "relu3_3") for a VGG16 perceptual loss. weights: local MindSpore
    checkpoint (made by src.tools.convert_torch), or None/"" → random init with a loud warning
    (`self.pretrained` is False). normalize: apply ImageNet mean/std to the [0,1] RGB input
    inside the cell (what torchvision's weights were trained on)."""

    def __init__(self, arch: str = "vgg19",
                 layers: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
                 weights: Optional[str] = None, normalize: bool = True):
        super().__init__()
        index = layer_indices(arch)
        layers = list(layers)
        if not layers:
            raise UserError("VGGFeatures: no layers requested")
        unknown = [name for name in layers if name not in index]
        if unknown:
            valid = [n for n in index if n.startswith("relu")]
            raise UserError("%s has no layer %s; choose from %s" % (
                arch, ", ".join(repr(u) for u in unknown), ", ".join(valid)))
        self.arch = arch
        self.layer_names = tuple(layers)
        indices = [index[name] for name in layers]
        last = max(indices)
        cells: List[nn.Cell] = []
        in_ch = 3
        for v in CFGS[arch]:
            if len(cells) > last:
                break
            if v == "M":
                cells.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                cells.append(nn.Conv2d(in_ch, v, 3, pad_mode="pad", padding=1, has_bias=True))
                cells.append(nn.ReLU())
                in_ch = v
        # A CellList, not a SequentialCell: construct iterates it to collect the taps, and
        # MindSpore 2.0's graph compiler cannot iterate a SequentialCell (names are the same:
        # `features.N.weight`).
        self.features = nn.CellList(cells[:last + 1])
        # Feature maps are collected in network order; `order[j]` is where layers[j] lands.
        taps = sorted(set(indices))
        self.taps = tuple(taps)
        self.order = tuple(taps.index(i) for i in indices)
        self.normalize = bool(normalize)
        self.mean = ms.Tensor(np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1))
        self.std = ms.Tensor(np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1))
        self.weights_path = weights or ""
        self.pretrained = False
        if weights:
            load_vgg_weights(self, weights)
            self.pretrained = True
        else:
            _warn_random(arch, "no weights path configured")
        for p in self.get_parameters():
            p.requires_grad = False
        self.set_train(False)

    def construct(self, x):
        if self.normalize:
            x = (x - self.mean) / self.std
        collected = ()
        i = 0
        for cell in self.features:
            x = cell(x)
            if i in self.taps:
                collected = collected + (x,)
            i += 1
        outs = ()
        for j in self.order:
            outs = outs + (collected[j],)
        return outs


def load_vgg_weights(cell, path: str) -> None:
    """Load `features.N.*` from a MindSpore checkpoint into a VGGFeatures cell. Names may carry
    a prefix (e.g. `vgg.features.0.weight`); conv layers beyond the built ones are ignored."""
    if not os.path.isfile(path):
        raise UserError("VGG weights not found: %s (set the config's VGG weights path to a "
                        "MindSpore .ckpt made by `python -m src.tools.convert_torch`)" % path)
    try:
        ckpt = ms.load_checkpoint(path)
    except Exception as exc:   # MindSpore raises ValueError/RuntimeError for bad files
        raise UserError("cannot read VGG checkpoint %s: %s" % (path, exc)) from exc
    by_suffix: Dict[str, object] = {}
    for key, value in ckpt.items():
        i = key.find("features.")
        if i >= 0 and (i == 0 or key[i - 1] == "."):
            by_suffix.setdefault(key[i:], value)
    missing = []
    for name, param in cell.parameters_and_names():
        src = by_suffix.get(name)
        if src is None:
            missing.append(name)
            continue
        if tuple(src.shape) != tuple(param.shape):
            raise UserError("VGG checkpoint %s: %s has shape %s, expected %s (is it a %s "
                            "checkpoint?)" % (path, name, tuple(src.shape), tuple(param.shape),
                                              cell.arch))
        param.set_data(src)
    if missing:
        raise UserError("VGG checkpoint %s lacks %s (is it a %s checkpoint converted by "
                        "src.tools.convert_torch?)" % (path, ", ".join(missing[:4]) +
                                                       (" ..." if len(missing) > 4 else ""),
                                                       cell.arch))
    logger.info("loaded %s weights from %s (%d tensors)", cell.arch, path,
                len(list(cell.get_parameters())))
