"""Separable Gaussian blur of 3D tensors (the autoencoder's error maps, the synthetic anomalies)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (B,C,X,Y,Z) tensor (replicate padding)."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        weight = k.view(shape).expand(c, 1, *shape[2:]).contiguous()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        x = F.conv3d(F.pad(x, pad, mode="replicate"), weight, groups=c)
    return x
