"""Shell histogram condition: which intensities surround a voxel, and in what proportions.

A fixed (untrained) context: the soft histogram of the (lightly smoothed) intensities in a shell
between ``inner_mm`` and ``outer_mm`` around each voxel. It tells the density "this voxel sits
in liver of 100 HU with a few 160 HU vessels" in *this* scan (contrast phase and patient
included), so a flat 130 HU region there is unexpected even though 130 HU is a common value
elsewhere (spleen, blood). A histogram keeps the tissues apart where box means would average a
vessel into the liver value, and the shell leaves out the voxel's own neighbourhood, so a
lesion up to about ``inner_mm`` in radius cannot explain itself (larger ones only in part).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .structure import gaussian_derivative_kernels

# bin centres in HU: coarse over lung and fat, 20 HU apart over soft tissue, coarse over bone
HISTOGRAM_BINS_HU = (
    -1000.0,
    -850.0,
    -700.0,
    -550.0,
    -400.0,
    -250.0,
    -100.0,
    -40.0,
    0.0,
    20.0,
    40.0,
    60.0,
    80.0,
    100.0,
    120.0,
    140.0,
    170.0,
    200.0,
    300.0,
    600.0,
)


def soft_bins(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) values -> (B, K, ...) piecewise-linear ("hat") bin weights summing to 1."""
    c = centres.view(1, -1, *([1] * (x.dim() - 2)))
    left = torch.cat([c[:, :1] - 1.0, c[:, :-1]], dim=1)
    right = torch.cat([c[:, 1:], c[:, -1:] + 1.0], dim=1)
    rise = (x - left) / (c - left)
    fall = (right - x) / (right - c)
    hat = torch.minimum(rise, fall).clamp(0.0, 1.0)
    # the end bins take everything beyond them
    hat[:, :1] = torch.where(x <= c[:, :1], torch.ones_like(hat[:, :1]), hat[:, :1])
    hat[:, -1:] = torch.where(x >= c[:, -1:], torch.ones_like(hat[:, -1:]), hat[:, -1:])
    return hat


class ShellHistogram(nn.Module):
    """``forward(image (B, 1, X, Y, Z)) -> (B, len(centres), X, Y, Z)``: shell bin fractions.

    ``centres`` are bin centres in the image's units (window-scaled); ``spacing_mm`` is the
    planned grid's. Beyond the crop only the voxels inside it count (fractions of what is seen).
    Computed at half resolution and upsampled (trilinear).
    """

    def __init__(self, spacing_mm, centres, inner_mm: float = 10.0, outer_mm: float = 25.0, sigma: float = 1.0):
        super().__init__()
        spacing = [float(s) for s in spacing_mm]
        if len(spacing) != 3 or min(spacing) <= 0 or not 0 < inner_mm < outer_mm:
            raise ValueError(f"shell histogram: invalid spacing {spacing_mm} or shell {inner_mm}-{outer_mm} mm")
        # computed on a grid of half the resolution (the shell is a large-scale feature), then
        # upsampled: eight times fewer voxels for the 20-channel box sums
        self.inner = tuple(int(round(inner_mm / (2 * s))) * 2 + 1 for s in spacing)
        self.outer = tuple(int(round(outer_mm / (2 * s))) * 2 + 1 for s in spacing)
        self.register_buffer("centres", torch.as_tensor(centres, dtype=torch.float32))
        self.register_buffer("smooth", gaussian_derivative_kernels(sigma)[0])
        self.inner_mm, self.outer_mm = float(inner_mm), float(outer_mm)

    @property
    def dim(self) -> int:
        return int(self.centres.numel())

    @staticmethod
    def _box_sum(x: torch.Tensor, size) -> torch.Tensor:
        """Sum over a centred box of ``size`` (zeros beyond the crop), separable, by cumulative
        sums: two subtractions per voxel and axis whatever the box (pooling costs the box size)."""
        for axis, k in enumerate(size):
            dim = 2 + axis
            pad = [0] * 6
            pad[4 - 2 * axis] = k // 2 + 1
            pad[5 - 2 * axis] = k // 2
            c = torch.cumsum(F.pad(x, pad), dim=dim)
            n = x.shape[dim]
            x = c.narrow(dim, k, n) - c.narrow(dim, 0, n)
        return x

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=image.device.type, enabled=False):
            x = image.float()
            r = self.smooth.numel() // 2
            for axis in range(3):
                shape = [1, 1, 1, 1, 1]
                shape[2 + axis] = self.smooth.numel()
                pad = [0] * 6
                pad[4 - 2 * axis] = pad[5 - 2 * axis] = r
                x = F.conv3d(F.pad(x, pad, mode="replicate"), self.smooth.view(shape))
            size = x.shape[2:]
            odd = [n % 2 for n in size]
            x = F.avg_pool3d(F.pad(x, (0, odd[2], 0, odd[1], 0, odd[0]), mode="replicate"), 2)
            bins = soft_bins(x, self.centres)
            ones = torch.ones_like(x[:1, :1])
            count = self._box_sum(ones, self.outer) - self._box_sum(ones, self.inner)
            shell = (self._box_sum(bins, self.outer) - self._box_sum(bins, self.inner)) / count.clamp_min(1.0)
            shell = F.interpolate(shell, scale_factor=2.0, mode="trilinear", align_corners=False)
            return shell[:, :, : size[0], : size[1], : size[2]]

    def extra_repr(self) -> str:
        return f"bins={self.dim}, shell={self.inner_mm}-{self.outer_mm} mm, inner={self.inner}, outer={self.outer}"


__all__ = ["HISTOGRAM_BINS_HU", "ShellHistogram", "soft_bins"]
