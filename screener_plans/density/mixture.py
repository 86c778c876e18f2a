"""Gaussian mixture densities, marginal and conditional (a mixture density network).

One Gaussian per voxel cannot say "this flat voxel is fat, muscle, liver or blood, but nothing
in between": the tissues of a CT are a multi-modal distribution, and a conditional Gaussian
broad enough to cover them all puts its mode in the gap, where a mass sits. A mixture of ``K``
diagonal Gaussians with weights, means and variances predicted from the condition keeps the
modes apart.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import INIT_EPS, LOG_2PI, DensityModel, conv_net, soft_bound


class GaussianMixture(DensityModel):
    """Marginal mixture of ``n_components`` diagonal Gaussians with learnable parameters.

    ``initialize`` places the component means at evenly spaced quantiles of the first batch (per
    channel), with equal weights and variances of the data's variance / K^2; log-variances stay
    within ``exp(log_var_bound)`` of that centre, so no component collapses onto one value.
    """

    conditional = False

    def __init__(self, dim: int, n_components: int = 8, log_var_bound: float = 7.0, cond_dim: int = 0):
        super().__init__(dim, cond_dim)
        if int(n_components) < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_components = int(n_components)
        self.log_var_bound = float(log_var_bound)
        self.register_buffer("log_var_centre", torch.zeros(1, 1, dim, 1, 1, 1))
        if not self.conditional:
            self.params = nn.Parameter(torch.zeros(self.n_outputs))

    @property
    def n_outputs(self) -> int:
        return self.n_components * (1 + 2 * self.dim)

    def _raw(self, y: Tensor, c: Tensor | None) -> Tensor:
        return self.params.view(1, -1, 1, 1, 1).expand(y.shape[0], -1, *y.shape[2:])

    def components(self, y: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Log-weights (B, K, X, Y, Z), means and log-variances (B, K, D, X, Y, Z)."""
        raw = self._raw(y, c)
        k, d = self.n_components, self.dim
        shape = (raw.shape[0], k, d) + tuple(raw.shape[2:])
        logits = raw[:, :k]
        mean = raw[:, k : k + k * d].reshape(shape)
        log_var = self.log_var_centre + soft_bound(raw[:, k + k * d :].reshape(shape), self.log_var_bound)
        return torch.log_softmax(logits, dim=1), mean, log_var

    def _bias(self) -> Tensor:
        return self.params

    def _initialize(self, y: Tensor, c: Tensor | None) -> None:
        k, d = self.n_components, self.dim
        flat = y.detach().transpose(0, 1).reshape(d, -1).float()
        if flat.shape[1] > 1_000_000:  # quantiles of a random subset are as good and much cheaper
            flat = flat[:, torch.randint(flat.shape[1], (1_000_000,), device=flat.device)]
        q = torch.quantile(flat, (torch.arange(k, device=flat.device, dtype=flat.dtype) + 0.5) / k, dim=1)  # (K, D)
        var = flat.var(dim=1, unbiased=False)
        bias = self._bias()
        bias.zero_()
        bias[k : k + k * d].copy_(q.reshape(-1).to(bias.dtype))
        self.log_var_centre.copy_(torch.log(var / k**2 + INIT_EPS).view(1, 1, d, 1, 1, 1))

    def _nll(self, y: Tensor, c: Tensor | None) -> Tensor:
        log_w, mean, log_var = self.components(y, c)
        log_n = -0.5 * ((y[:, None] - mean).pow(2) * torch.exp(-log_var) + log_var).sum(2)
        return -torch.logsumexp(log_w + log_n, dim=1) + 0.5 * self.dim * LOG_2PI

    def extra_repr(self) -> str:
        return f"dim={self.dim}, cond_dim={self.cond_dim}, n_components={self.n_components}"


class ConditionalGaussianMixture(GaussianMixture):
    """Mixture whose weights, means and log-variances come from a conv net of the condition.

    The net's first conv has ``kernel_size``, the rest are 1x1x1, its last layer starts at zero:
    after ``initialize`` the model equals the marginal mixture of the first batch and learns the
    dependence on ``c`` from there.
    """

    conditional = True

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        n_components: int = 8,
        hidden: int = 32,
        kernel_size: int = 1,
        log_var_bound: float = 7.0,
    ):
        super().__init__(dim, n_components, log_var_bound, cond_dim=cond_dim)
        self.net = conv_net(cond_dim, hidden, self.n_outputs, kernel_size)

    def _raw(self, y: Tensor, c: Tensor | None) -> Tensor:
        return self.net(c)

    def _bias(self) -> Tensor:
        return self.net[-1].bias


__all__ = ["ConditionalGaussianMixture", "GaussianMixture"]
