"""Glow normalizing flow over descriptors, marginal or conditional (paper eqs. 7 and 8)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import DensityModel, standard_normal_nll
from .flow_layers import ActNorm, AffineCoupling, InvConv1x1


class GlowFlow(DensityModel):
    """Stack of ``n_blocks`` Glow steps (act-norm -> invertible 1x1x1 conv -> affine coupling).

    Applied voxel-wise: NLL = 0.5 ||z||^2 + 0.5 D log(2 pi) - log|det dz/dy| per voxel. With
    ``cond_dim > 0`` the condition map enters every coupling net and predicts per-voxel
    act-norm offsets; ``kernel_size`` is the receptive field on the condition only (the
    descriptor path is always 1x1x1). ``clamp`` bounds each coupling's log-scale.
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int = 0,
        n_blocks: int = 4,
        hidden: int = 64,
        kernel_size: int = 1,
        clamp: float = 2.0,
    ):
        self.conditional = cond_dim > 0
        super().__init__(dim, cond_dim)
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        self.steps = nn.ModuleList(
            nn.ModuleList(
                [
                    ActNorm(dim, cond_dim, hidden, kernel_size, clamp),
                    InvConv1x1(dim),
                    AffineCoupling(dim, cond_dim, hidden, kernel_size, clamp),
                ]
            )
            for _ in range(n_blocks)
        )

    def _transform(self, y: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        logdet = torch.zeros_like(y[:, 0])
        for step in self.steps:
            for layer in step:
                y, ld = layer(y, c)
                logdet = logdet + ld
        return y, logdet

    def _initialize(self, y: Tensor, c: Tensor | None) -> None:
        # each act-norm whitens its own input, so initialise layer by layer along the flow
        for step in self.steps:
            for layer in step:
                if isinstance(layer, ActNorm):
                    layer.initialize(y)
                y, _ = layer(y, c)

    def _nll(self, y: Tensor, c: Tensor | None) -> Tensor:
        return standard_normal_nll(*self._transform(y, c))

    def forward_with_logdet(self, y: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent map z (B, D, X, Y, Z) and per-voxel log|det dz/dy| (B, X, Y, Z); no auto-init."""
        y, c = self._prepare(y, c)
        with self._full_precision(y):
            return self._transform(y, c)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Descriptor map y with f(y, c) = z (sampling and tests)."""
        z, c = self._prepare(z, c, name="z")
        with self._full_precision(z):
            for step in reversed(self.steps):
                for layer in reversed(step):
                    z = layer.inverse(z, c)
        return z
