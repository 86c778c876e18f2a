"""MLP heads that map descriptors (N, d) to SSL embeddings (N, D): SimCLR projector, VICReg expander.

Only used during self-supervised training; the descriptor is the backbone output before them.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLPHead(nn.Sequential):
    """(N, in_dim) -> (N, dims[-1]): (Linear-BatchNorm1d-ReLU) for every width but the last, then a Linear."""

    def __init__(self, in_dim: int, dims: Sequence[int]):
        dims = [int(d) for d in dims]
        if not dims or min(dims) < 1 or in_dim < 1:
            raise ValueError(f"MLPHead needs in_dim >= 1 and a non-empty list of positive widths, got {in_dim}, {dims}")
        layers: list[nn.Module] = []
        prev = int(in_dim)
        for width in dims[:-1]:
            # The bias is redundant before BatchNorm.
            layers += [nn.Linear(prev, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            prev = width
        layers.append(nn.Linear(prev, dims[-1]))
        super().__init__(*layers)
        self.in_dim = int(in_dim)
        self.out_dim = dims[-1]


class Projector(MLPHead):
    """SimCLR projector: d -> hidden -> out (defaults 512 -> 128), as in Chen et al. (2020)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, num_layers: int = 2):
        if num_layers < 1:
            raise ValueError(f"Projector num_layers must be >= 1, got {num_layers}")
        super().__init__(in_dim, [hidden_dim] * (num_layers - 1) + [out_dim])


class Expander(MLPHead):
    """VICReg expander: ``num_layers`` layers of width ``width`` (paper: 8192, 3 layers as in Bardes et al.)."""

    def __init__(self, in_dim: int, width: int = 8192, num_layers: int = 3):
        if num_layers < 1:
            raise ValueError(f"Expander num_layers must be >= 1, got {num_layers}")
        super().__init__(in_dim, [width] * num_layers)
