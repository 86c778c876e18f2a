"""VICReg loss (Bardes et al., 2021) in the form of the Screener paper, Eq. 2.

Takes the two expanded embeddings of N positive pairs, z1, z2 of shape (N, D) (the expander is
applied by the caller, see ``screener_plans.nets.Expander``), and returns the weighted total and
the three unweighted terms:

    invariance = 1/(N D) sum_i ||z1_i - z2_i||^2
    variance   = sum_{k=1,2} 1/D sum_d max(0, 1 - sqrt(C^k_dd + eps))
    covariance = sum_{k=1,2} 1/D sum_{d != e} (C^k_de)^2
    loss       = inv_weight * invariance + var_weight * variance + cov_weight * covariance

with C^k the unbiased (1/(N-1)) covariance of branch k. Note the sums over both branches, as in
the paper (the VICReg reference code averages them, i.e. half these variance/covariance values).
Computed in float32 with autocast off. With DDP, all-gather z1 and z2 first if the statistics
should span all ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_pair(z1: torch.Tensor, z2: torch.Tensor, min_rows: int, name: str) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"{name} expects two (N, D) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} pairs, got {z1.shape[0]}")


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The D*(D-1) off-diagonal entries of a square matrix, as a view (no cancellation, no copy)."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:]


def vicreg_terms(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance and covariance terms of one branch's (N, D) embeddings."""
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)
    std = torch.sqrt(torch.diagonal(cov) + eps)
    variance = F.relu(1.0 - std).mean()
    covariance = _off_diagonal(cov).pow(2).sum() / d
    return variance, covariance


class VICRegLoss(nn.Module):
    """``forward(z1, z2)`` -> dict(loss, invariance, variance, covariance), all scalar tensors."""

    def __init__(self, inv_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0, eps: float = 1e-4):
        super().__init__()
        self.inv_weight = float(inv_weight)
        self.var_weight = float(var_weight)
        self.cov_weight = float(cov_weight)
        self.eps = float(eps)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_pair(z1, z2, 2, "VICRegLoss")
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z1, z2 = z1.float(), z2.float()
            invariance = F.mse_loss(z1, z2)
            var1, cov1 = vicreg_terms(z1, self.eps)
            var2, cov2 = vicreg_terms(z2, self.eps)
            variance, covariance = var1 + var2, cov1 + cov2
            loss = self.inv_weight * invariance + self.var_weight * variance + self.cov_weight * covariance
        return {"loss": loss, "invariance": invariance, "variance": variance, "covariance": covariance}
