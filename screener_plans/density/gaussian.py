"""Diagonal Gaussian density models, marginal and conditional (paper eqs. 5 and 6)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import INIT_EPS, DensityModel, channel_moments, conv_net, diagonal_gaussian_nll, soft_bound


class DiagonalGaussian(DensityModel):
    """Marginal N(mean, diag(var)) with a learnable mean and log-variance per channel.

    The log-variance is ``centre + soft_bound(raw, log_var_bound)``: the centre is the data's
    log-variance from ``initialize``, so a channel's variance stays within a factor
    ``exp(log_var_bound)`` of it and can never collapse to 0.
    """

    conditional = False

    def __init__(self, dim: int, log_var_bound: float = 7.0):
        super().__init__(dim, 0)
        self.log_var_bound = float(log_var_bound)
        self.mean = nn.Parameter(torch.zeros(dim))
        self.log_var_raw = nn.Parameter(torch.zeros(dim))
        self.register_buffer("log_var_centre", torch.zeros(dim))

    def mean_and_log_var(self, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance, each (1, D, 1, 1, 1); ``c`` is ignored."""
        log_var = self.log_var_centre + soft_bound(self.log_var_raw, self.log_var_bound)
        return self.mean.view(1, -1, 1, 1, 1), log_var.view(1, -1, 1, 1, 1)

    def _initialize(self, y: Tensor, c: Tensor | None) -> None:
        mean, var = channel_moments(y)
        self.mean.copy_(mean)
        self.log_var_centre.copy_(torch.log(var + INIT_EPS))
        self.log_var_raw.zero_()

    def _nll(self, y: Tensor, c: Tensor | None) -> Tensor:
        return diagonal_gaussian_nll(y, *self.mean_and_log_var())


class ConditionalGaussian(DensityModel):
    """N(mu(c), diag(exp(log_var(c)))) with mu and log_var predicted by small conv nets.

    Each net's first conv has ``kernel_size`` (3 in the paper: conditioning on locally
    aggregated conditions), the rest are 1x1x1; so y is still scored voxel by voxel. Both
    nets' last layers start at zero, so after ``initialize`` the model equals the marginal
    Gaussian fitted to the first batch and learns the dependence on ``c`` from there.
    """

    conditional = True

    def __init__(self, dim: int, cond_dim: int, hidden: int = 64, kernel_size: int = 3, log_var_bound: float = 7.0):
        super().__init__(dim, cond_dim)
        self.log_var_bound = float(log_var_bound)
        self.mean_net = conv_net(cond_dim, hidden, dim, kernel_size)
        self.log_var_net = conv_net(cond_dim, hidden, dim, kernel_size)
        self.register_buffer("log_var_centre", torch.zeros(1, dim, 1, 1, 1))

    def mean_and_log_var(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """Per-voxel mean and log-variance maps, each (B, D, X, Y, Z)."""
        log_var = self.log_var_centre + soft_bound(self.log_var_net(c), self.log_var_bound)
        return self.mean_net(c), log_var

    def _initialize(self, y: Tensor, c: Tensor | None) -> None:
        mean, var = channel_moments(y)
        self.mean_net[-1].bias.copy_(mean)
        self.log_var_centre.copy_(torch.log(var + INIT_EPS).view(1, -1, 1, 1, 1))

    def _nll(self, y: Tensor, c: Tensor | None) -> Tensor:
        return diagonal_gaussian_nll(y, *self.mean_and_log_var(c))
