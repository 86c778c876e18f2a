"""Sin-cos positional condition: encodes each voxel's absolute position (mm) in the whole CT.

"Absolute" means relative to the image the crop was taken from, not to the crop (paper, 2.3):
a crop whose first voxel is voxel ``start`` of the (preprocessed) image has
``origin_mm = start * spacing_mm``, so the same physical point gets the same encoding in every
crop and every sliding window. Channel layout for ``dim`` channels, n = dim / 6 frequencies:
``[sin x (n), cos x (n), sin y (n), cos y (n), sin z (n), cos z (n)]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_MIN_PERIOD_MM = 4.0
DEFAULT_MAX_PERIOD_MM = 1000.0


def sincos_periods_mm(
    dim: int, min_period_mm: float = DEFAULT_MIN_PERIOD_MM, max_period_mm: float = DEFAULT_MAX_PERIOD_MM
) -> torch.Tensor:
    """The dim / 6 periods (float64, mm), geometric from ``min_period_mm`` to ``max_period_mm``."""
    if dim < 6 or dim % 6:
        raise ValueError(f"sin-cos condition dim must be a positive multiple of 6, got {dim}")
    if not 0 < min_period_mm <= max_period_mm:
        raise ValueError(f"need 0 < min_period_mm <= max_period_mm, got {min_period_mm}, {max_period_mm}")
    n = dim // 6
    if n == 1:
        return torch.tensor([float(max_period_mm)], dtype=torch.float64)
    return torch.logspace(math.log10(min_period_mm), math.log10(max_period_mm), n, dtype=torch.float64)


def coordinate_grid_mm(origin_mm: torch.Tensor, spacing_mm: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(B, 3, X, Y, Z) grid of voxel positions ``origin_mm + index * spacing_mm`` (dtype of ``origin_mm``, float)."""
    origin_mm = torch.as_tensor(origin_mm)
    if not origin_mm.is_floating_point():
        origin_mm = origin_mm.float()
    spacing_mm = torch.as_tensor(spacing_mm, dtype=origin_mm.dtype, device=origin_mm.device)
    if origin_mm.ndim != 2 or origin_mm.shape[1] != 3 or spacing_mm.shape != origin_mm.shape or len(shape) != 3:
        raise ValueError(
            f"coordinate_grid_mm expects origin and spacing of shape (B, 3) and a 3-D shape, got "
            f"{tuple(origin_mm.shape)}, {tuple(spacing_mm.shape)}, {tuple(shape)}"
        )
    axes = [torch.arange(int(n), dtype=origin_mm.dtype, device=origin_mm.device) for n in shape]
    idx = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (3, X, Y, Z)
    return origin_mm[:, :, None, None, None] + spacing_mm[:, :, None, None, None] * idx


def sincos_encoding(
    coords_mm: torch.Tensor,
    dim: int,
    min_period_mm: float = DEFAULT_MIN_PERIOD_MM,
    max_period_mm: float = DEFAULT_MAX_PERIOD_MM,
) -> torch.Tensor:
    """Encode a (B, 3, X, Y, Z) grid of positions in mm as (B, dim, X, Y, Z); computed in ``coords_mm``'s dtype."""
    if coords_mm.ndim != 5 or coords_mm.shape[1] != 3:
        raise ValueError(f"sincos_encoding expects coordinates of shape (B, 3, X, Y, Z), got {tuple(coords_mm.shape)}")
    dtype = coords_mm.dtype if coords_mm.is_floating_point() else torch.float32
    omega = (2 * math.pi / sincos_periods_mm(dim, min_period_mm, max_period_mm)).to(
        dtype=dtype, device=coords_mm.device
    )
    phase = coords_mm.to(dtype).unsqueeze(2) * omega[None, None, :, None, None, None]  # (B, 3, n, X, Y, Z)
    enc = torch.cat([phase.sin(), phase.cos()], dim=2)  # (B, 3, 2n, X, Y, Z)
    return enc.flatten(1, 2)


class SinCosCondition(nn.Module):
    """Parameter-free condition model: ``forward(origin_mm, spacing_mm, shape)`` -> (B, dim, X, Y, Z) float32.

    Same values as ``sincos_encoding(coordinate_grid_mm(origin_mm, spacing_mm, shape), dim)``, but
    computed per axis in float64 (exact at large mm offsets) and broadcast, so it is cheap.
    """

    def __init__(
        self, dim: int = 48, min_period_mm: float = DEFAULT_MIN_PERIOD_MM, max_period_mm: float = DEFAULT_MAX_PERIOD_MM
    ):
        super().__init__()
        periods = sincos_periods_mm(dim, min_period_mm, max_period_mm)
        self.dim = int(dim)
        self.min_period_mm = float(min_period_mm)
        self.max_period_mm = float(max_period_mm)
        # Non-persistent: derived from the constructor arguments, so nothing to save or load.
        self.register_buffer("omega", 2 * math.pi / periods, persistent=False)

    @property
    def out_channels(self) -> int:
        return self.dim

    def forward(self, origin_mm: torch.Tensor, spacing_mm: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        origin = torch.as_tensor(origin_mm, dtype=torch.float64, device=self.omega.device)
        spacing = torch.as_tensor(spacing_mm, dtype=torch.float64, device=self.omega.device)
        if origin.ndim != 2 or origin.shape[1] != 3 or spacing.shape != origin.shape or len(shape) != 3:
            raise ValueError(
                f"SinCosCondition expects origin and spacing of shape (B, 3) and a 3-D shape, got "
                f"{tuple(origin.shape)}, {tuple(spacing.shape)}, {tuple(shape)}"
            )
        b = origin.shape[0]
        omega = self.omega.to(torch.float64)
        full = (b, -1, *(int(n) for n in shape))
        parts = []
        for axis, n in enumerate(shape):
            pos = origin[:, axis, None] + spacing[:, axis, None] * torch.arange(
                int(n), dtype=torch.float64, device=origin.device
            )
            phase = pos[:, None, :] * omega[None, :, None]  # (B, n_freq, n)
            enc = torch.cat([phase.sin(), phase.cos()], dim=1).float()  # (B, 2 n_freq, n)
            view = [b, enc.shape[1], 1, 1, 1]
            view[2 + axis] = int(n)
            parts.append(enc.reshape(view).expand(full))
        return torch.cat(parts, dim=1)
