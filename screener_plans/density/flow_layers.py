"""Glow layers applied voxel-wise to (B, D, X, Y, Z) maps: act-norm, invertible 1x1x1 conv,
affine coupling. Each ``forward(x, c)`` returns ``(z, logdet)`` with ``logdet`` broadcastable
to (B, X, Y, Z); ``inverse(z, c)`` undoes it. The data path is 1x1x1 only, so the Jacobian of
a whole map is block-diagonal over voxels and the per-voxel log-density is exact; only the
condition path may look at neighbouring voxels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import INIT_EPS, channel_moments, check_kernel_size, conv_net, soft_bound


class ActNorm(nn.Module):
    """z = (x - loc) * exp(log_scale), per channel; initialised to whiten the first batch.

    With ``cond_dim > 0`` a conv net on ``c`` adds per-voxel offsets to loc and log_scale
    (log-scale offset soft-bounded by ``clamp``); its last layer starts at zero so training
    begins from the plain data-initialised act-norm.
    """

    def __init__(self, dim: int, cond_dim: int = 0, hidden: int = 64, kernel_size: int = 1, clamp: float = 2.0):
        super().__init__()
        self.clamp = float(clamp)
        self.loc = nn.Parameter(torch.zeros(1, dim, 1, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, dim, 1, 1, 1))
        self.cond_net = conv_net(cond_dim, hidden, 2 * dim, kernel_size) if cond_dim > 0 else None

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        mean, var = channel_moments(x)
        self.loc.copy_(mean.view_as(self.loc))
        self.log_scale.copy_((-0.5 * torch.log(var + INIT_EPS)).view_as(self.log_scale))

    def _params(self, c: Tensor | None) -> tuple[Tensor, Tensor]:
        loc, log_scale = self.loc, self.log_scale
        if self.cond_net is not None:
            d_log_scale, d_loc = self.cond_net(c).chunk(2, dim=1)
            loc = loc + d_loc
            log_scale = log_scale + soft_bound(d_log_scale, self.clamp)
        return loc, log_scale

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        loc, log_scale = self._params(c)
        return (x - loc) * torch.exp(log_scale), log_scale.sum(1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        loc, log_scale = self._params(c)
        return z * torch.exp(-log_scale) + loc


class InvConv1x1(nn.Module):
    """Invertible 1x1x1 conv, W = P L (U + diag(sign * exp(log_s))), log|det W| = sum(log_s).

    The LU parametrisation makes the log-determinant exact and cheap; W starts as a random
    rotation (from the global torch RNG), which mixes the halves the couplings split.
    """

    def __init__(self, dim: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(dim, dim), -1))
        self.register_buffer("eye", torch.eye(dim))
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())

    def weight(self) -> Tensor:
        """The (D, D) matrix W (built from masks and products only, so it traces and exports)."""
        lower = self.lower * self.lower_mask + self.eye
        diag = self.eye * (self.sign_s * torch.exp(self.log_s))[None, :]
        upper = self.upper * self.lower_mask.transpose(0, 1) + diag
        return self.perm @ lower @ upper

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        w = self.weight()
        return F.conv3d(x, w[:, :, None, None, None]), self.log_s.sum()

    def inverse(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        w_inv = torch.linalg.inv(self.weight())
        return F.conv3d(z, w_inv[:, :, None, None, None])


class AffineCoupling(nn.Module):
    """z_b = x_b * exp(s) + t with (s, t) = net(x_a, c), s soft-clamped to (-clamp, clamp).

    x_a is the first ``dim // 2`` channels and passes through unchanged. The condition enters
    the net's first layer next to x_a (equivalent to concatenating them), via a conv of
    ``kernel_size`` on c and a 1x1x1 conv on x_a. The last layer starts at zero (identity).
    With ``dim == 1`` x_a is empty: (s, t) come from c alone (a learned constant if marginal),
    so the flow is a stack of per-voxel affine maps, i.e. a (conditional) Gaussian.
    """

    def __init__(self, dim: int, cond_dim: int = 0, hidden: int = 64, kernel_size: int = 1, clamp: float = 2.0):
        super().__init__()
        check_kernel_size(kernel_size)
        self.clamp = float(clamp)
        self.split = dim // 2
        self.in_x = nn.Conv3d(self.split, hidden, 1) if self.split > 0 else None
        self.hidden = int(hidden)
        self.in_c = (
            nn.Conv3d(cond_dim, hidden, kernel_size, padding=kernel_size // 2, padding_mode="replicate", bias=False)
            if cond_dim > 0
            else None
        )
        out = dim - self.split
        self.body = nn.Sequential(nn.SiLU(), nn.Conv3d(hidden, hidden, 1), nn.SiLU(), nn.Conv3d(hidden, 2 * out, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def _scale_shift(self, x_a: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.in_x is not None:
            h = self.in_x(x_a)
            if self.in_c is not None:
                h = h + self.in_c(c)
        elif self.in_c is not None:
            h = self.in_c(c)
        else:
            h = x_a.new_zeros((x_a.shape[0], self.hidden) + tuple(x_a.shape[2:]))
        s, t = self.body(h).chunk(2, dim=1)
        return soft_bound(s, self.clamp), t

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        s, t = self._scale_shift(x_a, c)
        return torch.cat([x_a, x_b * torch.exp(s) + t], dim=1), s.sum(1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        z_a, z_b = z[:, : self.split], z[:, self.split :]
        s, t = self._scale_shift(z_a, c)
        return torch.cat([z_a, (z_b - t) * torch.exp(-s)], dim=1)
