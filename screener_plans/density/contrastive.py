"""Contrastive density: segmentation networks that tell the scans' own content from synthetic anomalies.

Noise-contrastive estimation: a classifier trained to tell samples of the data ``p`` from samples
of a known noise distribution ``q`` learns the log density ratio ``log q(x) - log p(x)`` as its
logit. Here ``x`` is a voxel in its context, ``p`` the training scans and ``q`` the same scans
with local anomalies painted in (``data/anomalies.py``), so the logit is, up to the noise term, the
voxel's negative log-likelihood under the scans: the same kind of score as the other densities,
learned by a dense network that sees the whole crop (the MOOD 2022 winner's recipe, read as a
density). Several members trained on different crops are averaged: each single network's map
carries a smooth random regional bias of its own, which the average cancels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from screener_plans.nets.unet import DenseUNet
from screener_plans.nets.windows import WindowedNet, WindowStem


class ContrastiveDensity(nn.Module):
    """``members`` DenseUNets (behind the plans' input windows) scoring a window-scaled crop.

    ``forward(y (B, 1, X, Y, Z), c=None) -> (B, X, Y, Z)``: the members' mean logit of "this voxel
    is not the scans' own content". ``dim`` must be 1 (the CT intensity); there is no condition.
    """

    conditional = False

    def __init__(
        self,
        dim: int = 1,
        cond_dim: int = 0,
        window=(-1000.0, 1000.0),
        windows_hu=(),
        channels=(8, 16, 32, 64),
        members: int = 2,
        pos_weight: float = 3.0,
        margin: int = 6,
    ):
        super().__init__()
        if int(dim) != 1 or int(cond_dim) != 0:
            raise ValueError(
                f"the contrastive density scores the CT intensity alone (dim 1, no condition), "
                f"got dim={dim}, cond_dim={cond_dim}"
            )
        if int(members) < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.dim, self.cond_dim = 1, 0
        self.pos_weight, self.margin = float(pos_weight), int(margin)
        windows = [list(map(float, w)) for w in windows_hu]
        self.members = nn.ModuleList(
            WindowedNet(
                WindowStem(window, windows),
                DenseUNet(1 + len(windows), 1, channels=tuple(channels), blocks_per_level=1, norm="batch"),
            )
            for _ in range(int(members))
        )

    def initialize(self, y: Tensor, c: Tensor | None = None) -> None:
        """No data-dependent initialisation (the likelihood densities' interface)."""

    def forward(self, y: Tensor, c: Tensor | None = None) -> Tensor:
        logits = torch.stack([m(y.float()) for m in self.members]).mean(0).float()
        m = self.margin
        if m and min(logits.shape[2:]) > 2 * m:
            # the loss never saw the ``margin`` voxels at the crop faces, so their logits are
            # unconstrained; even under the sliding window's small border weights they drew
            # stripes at the window seams. The nearest trained voxel's logit stands in for them.
            inner = logits[:, :, m:-m, m:-m, m:-m]
            logits = F.pad(inner, (m, m, m, m, m, m), mode="replicate")
        return logits[:, 0]

    def loss(self, y: Tensor, target: Tensor) -> Tensor:
        """Mean over members of the weighted BCE on their share of the batch (the batch split
        in ``members`` equal parts, so each member learns from its own crops), ``margin`` voxels
        at the crop faces left out (they lack the context the sliding window gives them)."""
        if y.shape[0] % len(self.members):
            raise ValueError(f"batch of {y.shape[0]} crops does not split among {len(self.members)} members")
        m = self.margin
        core = (slice(None), slice(None)) + (slice(m, -m if m else None),) * 3
        weight = torch.tensor(self.pos_weight, device=y.device)
        parts = zip(self.members, y.chunk(len(self.members)), target.chunk(len(self.members)))
        losses = [
            F.binary_cross_entropy_with_logits(net(x.float())[core].float(), t[core].float(), pos_weight=weight)
            for net, x, t in parts
        ]
        return torch.stack(losses).mean()
