"""Local image structure: the Gaussian 2-jet of a CT crop (smoothed value, gradient, Hessian).

A fixed (untrained) filter bank. Scoring a voxel's smoothed intensity *given* its local
derivatives asks "is this value plausible for a voxel shaped like this?": at a tissue boundary
the gradient explains an in-between (partial-volume) value, inside homogeneous tissue only the
values of common tissues are likely. A mass that differs from its host organ by a few tens of HU
is flat inside, so its value is judged against flat tissue, where it is rare; the boundaries and
vessels that outrank such masses under a context-only condition are explained by their own
derivatives.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# (order along x, y, z) of each derivative channel: gradient, then the Hessian's upper triangle
DERIVATIVE_ORDERS = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0, 0), (0, 2, 0), (0, 0, 2), (1, 1, 0), (1, 0, 1), (0, 1, 1))
STRUCTURE_CHANNELS = len(DERIVATIVE_ORDERS)


def gaussian_derivative_kernels(sigma: float, radius: int | None = None) -> torch.Tensor:
    """1D sampled Gaussian and its first two derivatives as correlation kernels, (3, 2 * radius + 1)."""
    radius = int(math.ceil(3 * sigma)) if radius is None else int(radius)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    # conv3d correlates (no kernel flip), so the first-derivative kernel is +x g, not -x g
    d1 = x / sigma**2 * g
    d1 = d1 / (x * d1).sum()  # exact on a linear ramp: d/dx of x is 1
    d2 = (x**2 / sigma**4 - 1 / sigma**2) * g
    d2 = d2 - d2.mean()  # zero on a constant
    d2 = d2 / (0.5 * (x**2 * d2).sum())  # exact on a parabola: d2/dx2 of x^2 is 2
    return torch.stack([g, d1, d2]).float()


class LocalStructure(nn.Module):
    """``forward(image (B, 1, X, Y, Z)) -> (value (B, 1, ...), derivatives (B, 9, ...))``.

    ``value`` is the image smoothed with a Gaussian of ``sigma`` voxels (same units as the
    image); the derivatives are the Gaussian derivatives at the same scale, multiplied by
    ``scale`` (e.g. the HU window width / 100, so that they are in 100 HU per voxel and need no
    normalisation downstream). Separable: 1D filters along x, then y, then z. Borders are
    replicate-padded, as in the density nets.
    """

    def __init__(self, sigma: float = 1.0, scale: float = 1.0):
        super().__init__()
        self.register_buffer("kernels", gaussian_derivative_kernels(sigma))
        self.sigma, self.scale, self.pad = float(sigma), float(scale), self.kernels.shape[1] // 2

    def _along(self, x: torch.Tensor, order: int, axis: int) -> torch.Tensor:
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = self.kernels.shape[1]
        return F.conv3d(x, self.kernels[order].view(shape))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # float32 even under autocast: a 20 HU contrast is 1% of the window
        with torch.autocast(device_type=image.device.type, enabled=False):
            x = F.pad(image.float(), (self.pad,) * 6, mode="replicate")
            orders = ((0, 0, 0),) + DERIVATIVE_ORDERS
            along_x = {a: self._along(x, a, 0) for a in {o[0] for o in orders}}
            along_xy = {(a, b): self._along(along_x[a], b, 1) for a, b in {o[:2] for o in orders}}
            out = [self._along(along_xy[o[:2]], o[2], 2) for o in orders]
        return out[0], torch.cat(out[1:], dim=1) * self.scale

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, scale={self.scale}"


__all__ = ["DERIVATIVE_ORDERS", "STRUCTURE_CHANNELS", "LocalStructure", "gaussian_derivative_kernels"]
