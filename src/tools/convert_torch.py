"""Convert PyTorch weights to MindSpore checkpoints, by parameter name.

    python -m src.tools.convert_torch vgg19 vgg19-dcbb9e9d.pth vgg19.ckpt
    python -m src.tools.convert_torch vgg16 vgg16-397923af.pth vgg16.ckpt
    python -m src.tools.convert_torch aecrnet ITS_aecrnet.pk aecrnet_its.ckpt [--trust-pickle]

vgg16 / vgg19: torchvision's ImageNet `.pth` (a state_dict with `features.N.weight/bias` and
`classifier.*`) → `features.N.*` only, the names src/nets/vgg.py uses.

aecrnet: the authors' checkpoint (GlassyWu/AECR-Net: torch.save({'model': state_dict, 'step',
'optimizer', 'psnrs', ...})) or a bare state_dict; a DataParallel `module.` prefix is stripped.
The released checkpoints name the two mixups `mix4` / `mix5` (the code names them `mix1` /
`mix2`, same order, same shapes): they are renamed when the file has no `mix1` / `mix2`.
Every layout is the same in both frameworks (Conv2d OIHW; ConvTranspose (in, out, kh, kw) is
also MindSpore's Conv2dTranspose layout; DCNv2's offset channels stay in DCNv2 order and are
reordered inside the MindSpore block), so the conversion is a checked 1:1 rename: the result
must fill every parameter and buffer of src/nets/aecrnet.AECRNet, nothing missing, nothing
unused, shapes equal. FastDeconv's running_mean / running_deconv buffers come along.

torch is imported only here, lazily (pip install torch, CPU wheel is enough).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Dict, List, Optional

import numpy as np

from src.errors import UserError

logger = logging.getLogger(__name__)

ARCHS = ("vgg16", "vgg19", "aecrnet")

# The released AECR-Net checkpoints' names for the code's mix1 / mix2.
RELEASED_MIX_NAMES = {"mix4.w": "mix1.w", "mix5.w": "mix2.w"}

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _plain(text: str) -> str:
    """`text` without terminal escape codes (torch's messages embed bold markers)."""
    return _ANSI.sub("", text)


def _load_error(exc: Exception) -> str:
    """The line of a torch.load failure that says what is wrong with the file: for a
    weights-only refusal that is the WeightsUnpickler line, not torch's advice around it."""
    lines = [_plain(line).strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line.split(". Please use")[0].rstrip(".")
    return lines[0] if lines else type(exc).__name__


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise UserError("converting .pth files needs PyTorch (pip install torch; the CPU "
                        "wheel is enough)") from exc
    return torch


def read_torch_state(path: str, trust_pickle: bool = False) -> Dict[str, np.ndarray]:
    """name → float32 numpy array from a .pth/.pk file: a state_dict, or a dict holding one
    under 'model' / 'state_dict' / 'net'. `module.` prefixes (DataParallel) are stripped.

    Loads with weights_only=True (no code execution); the authors' training checkpoints also
    pickle numpy scalars, which needs trust_pickle=True (only for files you trust)."""
    torch = _torch()
    if not os.path.isfile(path):
        raise UserError("PyTorch checkpoint not found: %s" % path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, ...
        hint = "" if trust_pickle else (
            "; if it is a training checkpoint from a source you trust, rerun with "
            "--trust-pickle (it stores numpy objects that weights-only loading refuses)")
        raise UserError("cannot load %s: %s%s" % (path, _load_error(exc), hint)) from exc
    state = obj
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "net"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not state:
        raise UserError("%s holds no state_dict (found %s)" % (path, type(state).__name__))
    out: Dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not hasattr(value, "detach"):
            continue
        if name.startswith("module."):
            name = name[len("module."):]
        arr = value.detach().cpu().numpy()
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        out[name] = arr
    if not out:
        raise UserError("%s: the state_dict holds no tensors" % path)
    return out


def convert_vgg(state: Dict[str, np.ndarray], arch: str) -> Dict[str, np.ndarray]:
    """torchvision VGG state → {features.N.weight/bias} for src.nets.vgg (classifier dropped)."""
    from src.nets.vgg import layer_indices

    index = layer_indices(arch)
    want = []
    for name, i in sorted(index.items(), key=lambda kv: kv[1]):
        if name.startswith("conv"):
            want += ["features.%d.weight" % i, "features.%d.bias" % i]
    missing = [n for n in want if n not in state]
    if missing:
        raise UserError("not a torchvision %s state_dict: missing %s%s" % (
            arch, ", ".join(missing[:3]), " ..." if len(missing) > 3 else ""))
    extra = [n for n in state if n.startswith("features.") and n not in want]
    if extra:
        raise UserError("not a torchvision %s state_dict: unexpected %s (is it the other VGG "
                        "depth, or a batch-norm variant?)" % (arch, ", ".join(extra[:3])))
    return {n: state[n] for n in want}


def aecrnet_expected(ngf: int = 64) -> Dict[str, tuple]:
    """name → shape of every parameter/buffer of the MindSpore AECRNet (= the official keys)."""
    from src.nets.aecrnet import AECRNet

    net = AECRNet(ngf=ngf, offset_nudge=0.0)
    return {name: tuple(p.shape) for name, p in net.parameters_and_names()}


def convert_aecrnet(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Official AECR-Net state → MindSpore AECRNet parameters (checked 1:1)."""
    if "down1.1.weight" not in state:
        raise UserError("not an AECR-Net state_dict: no down1.1.weight (keys start with %s)"
                        % ", ".join(sorted({k.split(".")[0] for k in state})[:6]))
    if not any(n in state for n in RELEASED_MIX_NAMES.values()):
        state = {RELEASED_MIX_NAMES.get(n, n): v for n, v in state.items()}
    ngf = int(state["down1.1.weight"].shape[0])
    expected = aecrnet_expected(ngf)
    # BatchNorm-style counters some forks register are not parameters of the port.
    state = {n: v for n, v in state.items() if not n.endswith("num_batches_tracked")}
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in expected]
    mismatched = ["%s %s vs %s" % (n, state[n].shape, s) for n, s in expected.items()
                  if n in state and tuple(state[n].shape) != s]
    problems = []
    if missing:
        problems.append("missing %s" % ", ".join(missing[:4]))
    if unexpected:
        problems.append("unexpected %s" % ", ".join(unexpected[:4]))
    if mismatched:
        problems.append("shape mismatch %s" % ", ".join(mismatched[:3]))
    if problems:
        raise UserError("AECR-Net state_dict does not match the port (%s)" % "; ".join(problems))
    return {n: np.ascontiguousarray(state[n], dtype=np.float32) for n in expected}


def save_ms_checkpoint(params: Dict[str, np.ndarray], path: str) -> str:
    import mindspore as ms

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in params.items()], path)
    return path


def convert_file(arch: str, src: str, dst: str, trust_pickle: bool = False) -> Dict[str, int]:
    """Read `src` (.pth), convert for `arch`, write the MindSpore checkpoint `dst`."""
    if arch not in ARCHS:
        raise UserError("unknown arch %r; choose from %s" % (arch, ", ".join(ARCHS)))
    state = read_torch_state(src, trust_pickle=trust_pickle)
    params = convert_aecrnet(state) if arch == "aecrnet" else convert_vgg(state, arch)
    save_ms_checkpoint(params, dst)
    count = int(sum(v.size for v in params.values()))
    logger.info("wrote %s: %d tensors, %d values", dst, len(params), count)
    return {"tensors": len(params), "values": count}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("arch", choices=ARCHS)
    ap.add_argument("src", help="PyTorch .pth / .pk file")
    ap.add_argument("dst", help="MindSpore .ckpt to write")
    ap.add_argument("--trust-pickle", action="store_true",
                    help="allow arbitrary pickled objects (training checkpoints you trust)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        info = convert_file(args.arch, args.src, args.dst, args.trust_pickle)
    except UserError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    print("%s → %s (%d tensors, %d values)" % (args.src, args.dst, info["tensors"],
                                               info["values"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
