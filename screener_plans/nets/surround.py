"""Surround condition: mean intensities of small boxes at a distance, in 14 directions.

A fixed (untrained) context that does not see the voxel's own neighbourhood: the box means are
taken ``radius_mm`` away, beyond a mass of up to about that radius, so a lesion cannot explain
itself through its own condition (the learned masked condition sees a mass larger than its
masking blocks). What it tells the density is which tissues surround a voxel and how bright they
are in this scan (contrast phase, patient), e.g. "inside the liver, at 70 HU".
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

# the 6 axis and 8 diagonal unit directions
DIRECTIONS = tuple(d for d in itertools.product((-1, 0, 1), repeat=3) if sum(map(abs, d)) in (1, 3))


class SurroundContext(nn.Module):
    """``forward(image (B, 1, X, Y, Z)) -> (B, 14 * len(radii_mm), X, Y, Z)``.

    Channel ``r * 14 + k`` is the mean of a ``box_mm`` box centred ``radii_mm[r]`` away along
    direction ``k`` (``DIRECTIONS``), as ``(mean - centre) * scale`` (e.g. centre the window's
    middle, scale its width / 100: 100 HU units). Beyond the crop the box means repeat the border
    (replicate), as in the density nets. ``spacing_mm`` is the planned grid's.
    """

    def __init__(self, spacing_mm, radii_mm=(30.0,), box_mm: float = 8.0, centre: float = 0.5, scale: float = 1.0):
        super().__init__()
        spacing = [float(s) for s in spacing_mm]
        if len(spacing) != 3 or min(spacing) <= 0 or not radii_mm or min(radii_mm) <= 0 or box_mm <= 0:
            raise ValueError(f"surround: invalid spacing {spacing_mm}, radii {radii_mm} or box {box_mm}")
        self.box = tuple(max(1, int(round(box_mm / s)) // 2 * 2 + 1) for s in spacing)
        offsets = []
        for r in radii_mm:
            for d in DIRECTIONS:
                norm = sum(v * v for v in d) ** 0.5
                offsets.append(tuple(int(round(r * v / norm / s)) for v, s in zip(d, spacing)))
        self.offsets = offsets
        self.reach = tuple(max(abs(o[a]) for o in offsets) for a in range(3))
        self.centre, self.scale = float(centre), float(scale)
        self.radii_mm, self.box_mm = tuple(float(r) for r in radii_mm), float(box_mm)

    @property
    def dim(self) -> int:
        return len(self.offsets)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=image.device.type, enabled=False):
            x = image.float()
            half = [k // 2 for k in self.box]
            x = F.pad(x, (half[2], half[2], half[1], half[1], half[0], half[0]), mode="replicate")
            means = F.avg_pool3d(x, self.box, stride=1)
            rx, ry, rz = self.reach
            means = F.pad(means, (rz, rz, ry, ry, rx, rx), mode="replicate")
            X, Y, Z = image.shape[2:]
            parts = [
                means[:, :, rx + ox : rx + ox + X, ry + oy : ry + oy + Y, rz + oz : rz + oz + Z]
                for ox, oy, oz in self.offsets
            ]
            return (torch.cat(parts, dim=1) - self.centre) * self.scale

    def extra_repr(self) -> str:
        return f"radii_mm={self.radii_mm}, box_mm={self.box_mm}, box={self.box}, channels={self.dim}"


__all__ = ["DIRECTIONS", "SurroundContext"]
