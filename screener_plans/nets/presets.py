"""Network size presets, ``build_network``, and the training-memory estimate the planner uses.

Memory model (bytes) of one SSL training step of a descriptor/condition network (AdamW)::

    peak = param_state + saved + output + max(head, (ACTIVATION_OVERHEAD - 1) * saved)

    param_state  16 bytes per parameter of network + SSL head (weight, grad, 2 AdamW moments), 18 with AMP
    saved        activation_bytes_per_voxel * prod(crop_size) * batch_crops: what autograd keeps for
                 backward, counted exactly by a small probe forward on CPU (half of it under AMP)
    output       the d-channel full-resolution output, a copy and its gradient (fp32)
    head         the MLP head and loss on the 2 * n_pairs embeddings; it is freed before the
                 backbone's backward, where activation gradients and convolution buffers peak,
                 hence the max.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from screener_plans.presets import NETWORK_PRESETS

from .heads import Expander, Projector
from .unet import DenseUNet

_NET_KEYS = ("channels", "blocks_per_level", "out_channels", "norm")

# (Peak - output) / saved of a backbone-only step, measured on CPU as the max-RSS increase of a
# fresh process over one forward+backward+AdamW step after a small warm-up step (fp32): tiny
# 32^3 b2 1.82, 48^3 b2 1.82, 64^3 b2 1.53; base 32^3 b2 1.15, 48^3 b2 1.34. The tiny net's
# overhead is high on CPU because oneDNN pads 1/8-channel tensors to blocked layouts. With the
# full model below, the estimate was -13% .. +49% off 9 CPU measurements (tiny: -13% .. +12%;
# base: +14% .. +49%; incl. VICReg heads with 2048-8192 pairs). Not yet calibrated on CUDA,
# where the overhead should be lower (so the estimate errs high there); pass ``overhead=``.
ACTIVATION_OVERHEAD = 1.8


def resolve_preset(preset: str | Mapping[str, Any]) -> dict[str, Any]:
    """Preset name or dict -> full preset dict (a dict is overlaid on "tiny" defaults)."""
    if isinstance(preset, str):
        if preset not in NETWORK_PRESETS:
            raise ValueError(f"unknown network preset {preset!r}; choose one of {sorted(NETWORK_PRESETS)}")
        return copy.deepcopy(NETWORK_PRESETS[preset])
    if not isinstance(preset, Mapping):
        raise ValueError(f"network preset must be a name or a dict, got {type(preset).__name__}")
    unknown = set(preset) - set(NETWORK_PRESETS["tiny"])
    if unknown:
        raise ValueError(f"unknown network preset keys {sorted(unknown)}; allowed: {sorted(NETWORK_PRESETS['tiny'])}")
    out = copy.deepcopy(NETWORK_PRESETS["tiny"])
    out.update(copy.deepcopy(dict(preset)))
    out["channels"] = tuple(int(c) for c in out["channels"])
    return out


def build_network(
    preset: str | Mapping[str, Any] = "tiny", in_channels: int = 1, out_channels: int | None = None
) -> DenseUNet:
    """Dense UNet for a preset; ``out_channels`` defaults to the preset's descriptor dimension."""
    p = resolve_preset(preset)
    return DenseUNet(
        in_channels=in_channels,
        out_channels=p["out_channels"] if out_channels is None else out_channels,
        channels=p["channels"],
        blocks_per_level=p["blocks_per_level"],
        norm=p["norm"],
    )


def build_head(preset: str | Mapping[str, Any], kind: str, in_dim: int | None = None) -> nn.Module:
    """SSL head for a preset: ``kind`` "vicreg" -> Expander, "simclr" -> Projector."""
    p = resolve_preset(preset)
    d = p["out_channels"] if in_dim is None else in_dim
    if kind == "vicreg":
        return Expander(d, width=p["expander_width"], num_layers=p["expander_layers"])
    if kind == "simclr":
        return Projector(d, hidden_dim=p["projector_hidden"], out_dim=p["projector_out"])
    raise ValueError(f"SSL head kind must be 'vicreg' or 'simclr', got {kind!r}")


def _saved_bytes(net: nn.Module, shape: Sequence[int]) -> int:
    """Bytes of non-parameter tensors autograd saves during one forward of ``net`` on an input of ``shape``."""
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    del out
    return sum(saved.values())


@functools.lru_cache(maxsize=32)
def _fp32_bytes_per_voxel(net_json: str, in_channels: int) -> float:
    net = build_network(json.loads(net_json), in_channels=in_channels)
    s = net.total_stride
    # Every level's tensors scale exactly with the voxel count, so the slope between two thin
    # probes (the coarsest level still has 2 voxels for the norms) is the per-voxel cost.
    small = _saved_bytes(net, (1, in_channels, 2 * s, s, s))
    large = _saved_bytes(net, (1, in_channels, 3 * s, s, s))
    return (large - small) / (s**3)


def activation_bytes_per_voxel(preset: str | Mapping[str, Any], in_channels: int = 1, amp: bool = False) -> float:
    """Bytes autograd keeps for backward per input voxel of one crop (measured by a probe; cached).

    With ``amp`` it is half the fp32 value: probing under CPU bfloat16 autocast gave exactly half
    for both presets (every saved activation becomes 2-byte), and is 5-10x slower on CPU.
    """
    p = resolve_preset(preset)
    key = json.dumps({k: p[k] for k in _NET_KEYS}, sort_keys=True)
    fp32 = _fp32_bytes_per_voxel(key, int(in_channels))
    return fp32 / 2 if amp else fp32


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements of ``module``."""
    return sum(t.numel() for t in module.parameters())


def head_train_bytes(preset: str | Mapping[str, Any], kind: str | None, n_pairs: int, amp: bool = False) -> int:
    """Peak activation memory of the SSL head and loss for ``n_pairs`` positive pairs (2 * n_pairs rows)."""
    if kind is None or n_pairs <= 0:
        return 0
    p = resolve_preset(preset)
    if kind == "vicreg":
        widths = [p["expander_width"]] * p["expander_layers"]
    elif kind == "simclr":
        widths = [p["projector_hidden"], p["projector_out"]]
    else:
        raise ValueError(f"SSL head kind must be 'vicreg', 'simclr' or None, got {kind!r}")
    rows = 2 * int(n_pairs)
    act = 2 if amp else 4
    # Hidden layers keep the Linear output (BatchNorm input) and the in-place ReLU output; the
    # last layer keeps its output and the loss a centred fp32 copy; backward adds two
    # row x width gradients at a time.
    per_row = sum(2 * act * w for w in widths[:-1]) + (act + 4) * widths[-1]
    total = rows * per_row + 2 * rows * max(widths) * 4
    if kind == "vicreg":
        total += 3 * 4 * widths[-1] ** 2  # two fp32 covariance matrices and one gradient
    else:
        total += 3 * 4 * rows * rows  # fp32 similarity matrix, log-softmax and gradient
    return int(total)


def estimate_train_memory_bytes(
    preset: str | Mapping[str, Any],
    crop_size: Sequence[int],
    batch_crops: int,
    in_channels: int = 1,
    amp: bool = False,
    n_pairs: int = 0,
    head: str | None = "vicreg",
    overhead: float = ACTIVATION_OVERHEAD,
) -> int:
    """Peak memory (bytes) of one SSL training step with AdamW (see the module docstring).

    Args:
        crop_size: (X, Y, Z) of each crop. batch_crops: crops through the network per step
            (two per positive-pair sample). n_pairs: positive pairs N fed to head and loss.
        head: "vicreg", "simclr" or None (backbone only). overhead: backward-peak factor.
    Accuracy: -13% .. +49% against measured CPU peaks (errs high for the base preset). The
    framework/CUDA context (~0.5-1 GiB on a GPU) and allocator slack are not included, so
    leave headroom in the budget.
    """
    p = resolve_preset(preset)
    with torch.device("meta"):  # count parameters without allocating them
        n_params = count_parameters(build_network(p, in_channels=in_channels))
        if head is not None:
            n_params += count_parameters(build_head(p, head))
    voxels = math.prod(int(s) for s in crop_size) * int(batch_crops)
    saved = activation_bytes_per_voxel(p, in_channels, amp) * voxels
    output = 3 * 4 * p["out_channels"] * voxels
    head_bytes = head_train_bytes(p, head, n_pairs, amp)
    param_state = (18 if amp else 16) * n_params
    return int(param_state + saved + output + max(head_bytes, (overhead - 1.0) * saved))
