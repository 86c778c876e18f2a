"""Intensity prior: a density model's NLL plus -log p(HU) of the voxel's own CT intensity.

The product of two experts: the (conditional) density model, which says how likely a voxel's
features are in its context, and the marginal histogram of CT intensities over the training
body voxels, which says how common the intensity is anywhere. A lesion that resembles a
plausible tissue given an uncertain context (a bright liver mass where the context cannot tell
the contrast phase) still stands out if that intensity is rare inside bodies, and a common
intensity in an implausible place still stands out through the density model.

The histogram is fitted once from the run's preprocessed cache (``IntensityBaseline.fit``), is
not trained, and travels in the density model's state dict as the buffer ``neg_log_prob``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class IntensityPrior(nn.Module):
    """``forward(y, c) = density(y, c) + table[bin(y[:, channel])]`` per voxel, (B, X, Y, Z).

    ``channel`` of ``y`` holds the window-scaled intensity in [0, 1]; ``n_bins`` bins span the
    window (one per HU), as in ``IntensityScorer``. Training optimises ``density`` only (the
    prior is a constant there), so ``trainable`` is what the density stage fits.
    """

    def __init__(self, density: nn.Module, n_bins: int, channel: int):
        super().__init__()
        if n_bins < 1 or not 0 <= channel < density.dim:
            raise ValueError(f"IntensityPrior: invalid n_bins {n_bins} or channel {channel} for dim {density.dim}")
        self.density, self.channel = density, int(channel)
        self.register_buffer("neg_log_prob", torch.zeros(int(n_bins)))

    @property
    def trainable(self) -> nn.Module:
        return self.density

    @property
    def dim(self) -> int:
        return self.density.dim

    @property
    def cond_dim(self) -> int:
        return self.density.cond_dim

    def set_table(self, neg_log_prob) -> IntensityPrior:
        table = torch.as_tensor(neg_log_prob, dtype=torch.float32).reshape(-1)
        if table.numel() != self.neg_log_prob.numel() or not torch.isfinite(table).all():
            raise ValueError(f"intensity prior table: expected {self.neg_log_prob.numel()} finite values")
        self.neg_log_prob.copy_(table)
        return self

    def initialize(self, y: Tensor, c: Tensor | None = None) -> None:
        self.density.initialize(y, c)

    def prior_nll(self, y: Tensor) -> Tensor:
        n = self.neg_log_prob.numel()
        idx = torch.floor(y[:, self.channel].float() * n).long().clamp_(0, n - 1)
        return self.neg_log_prob[idx]

    def forward(self, y: Tensor, c: Tensor | None = None) -> Tensor:
        return self.density(y, c) + self.prior_nll(y)

    def nll(self, y: Tensor, c: Tensor | None = None) -> Tensor:
        return self(y, c)
