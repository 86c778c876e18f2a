"""InfoNCE / NT-Xent loss of SimCLR (Chen et al., 2020), Screener paper Eq. 1.

Takes the projected embeddings of N positive pairs, z1, z2 of shape (N, D) (the projector is
applied by the caller; l2-normalisation happens here). For each of the 2N embeddings the
positive is its partner and the 2N - 2 others are negatives; the embedding itself is excluded,
exactly as in Eq. 1. The loss is the MEAN over the 2N terms (Eq. 1 sums them: sum = 2N * mean),
so its scale does not depend on the batch size.

Why not ``monai.losses.ContrastiveLoss``: it computes the same value, but builds a
(2N, 2N, D) tensor for the similarities and exponentiates without log-sum-exp, so it does not
fit memory for thousands of pairs and overflows for temperatures below ~0.012. Here the
similarities are one (2N, 2N) matmul and the log-softmax is stable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .vicreg import _check_pair


class InfoNCELoss(nn.Module):
    """``forward(z1, z2)`` -> dict(loss, infonce, positive_similarity); similarity is a detached mean cosine."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"InfoNCE temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_pair(z1, z2, 1, "InfoNCELoss")
        n = z1.shape[0]
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
            logits = z @ z.T / self.temperature
            self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
            logits = logits.masked_fill(self_mask, float("-inf"))
            idx = torch.arange(n, device=z.device)
            targets = torch.cat([idx + n, idx])
            loss = F.cross_entropy(logits, targets)
            positive = (z[:n] * z[n:]).sum(dim=1).mean().detach()
        return {"loss": loss, "infonce": loss, "positive_similarity": positive}
