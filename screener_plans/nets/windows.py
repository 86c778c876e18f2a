"""Extra CT windows computed inside the network from the one preprocessed channel.

The cache holds one channel: HU clipped to the plans' wide window and scaled to [0, 1]. In that
scale a 40 HU difference (a liver mass against liver) is 0.03. Re-windowing the same channel to
e.g. a soft-tissue window [-160, 240] HU gives the network those differences at full contrast,
without changing the data pipeline, the cache or the exported model's input.
"""

from __future__ import annotations

import torch
from torch import nn


class WindowStem(nn.Module):
    """(B, C, ...) with channel 0 the [0, 1] image -> image, one channel per extra window, rest."""

    def __init__(self, base_window, windows):
        super().__init__()
        lo, hi = (float(v) for v in base_window)
        scale, shift = [], []
        for wlo, whi in windows:
            # hu = lo + x * (hi - lo);  y = (hu - wlo) / (whi - wlo)
            scale.append((hi - lo) / (whi - wlo))
            shift.append((lo - wlo) / (whi - wlo))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)

    @property
    def extra_channels(self) -> int:
        return int(self.scale.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = x[:, :1]
        extra = (img * self.scale.to(x.dtype) + self.shift.to(x.dtype)).clamp(0.0, 1.0)
        return torch.cat([img, extra, x[:, 1:]], dim=1)


class WindowedNet(nn.Module):
    """A dense network behind a ``WindowStem``; keeps the network's ``total_stride``."""

    def __init__(self, stem: WindowStem, net: nn.Module):
        super().__init__()
        self.stem, self.net = stem, net

    @property
    def total_stride(self) -> int:
        return self.net.total_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.stem(x))
