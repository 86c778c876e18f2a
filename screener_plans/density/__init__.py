"""Density models whose per-voxel NLL is Screener's anomaly score, and a factory for them."""

from __future__ import annotations

import inspect

from torch import nn

from ..choices import DENSITIES, one_of
from ..errors import ScreenerError
from .base import LOG_2PI, DensityModel
from .contrastive import ContrastiveDensity
from .flow import GlowFlow
from .flow_layers import ActNorm, AffineCoupling, InvConv1x1
from .gaussian import ConditionalGaussian, DiagonalGaussian
from .mixture import ConditionalGaussianMixture, GaussianMixture
from .prior import IntensityPrior

__all__ = [
    "DENSITY_PRESETS",
    "LOG_2PI",
    "ActNorm",
    "AffineCoupling",
    "ConditionalGaussian",
    "ConditionalGaussianMixture",
    "ContrastiveDensity",
    "DensityModel",
    "DiagonalGaussian",
    "GaussianMixture",
    "GlowFlow",
    "IntensityPrior",
    "InvConv1x1",
    "build_density",
]

# Defaults per model size; ``tiny`` is for CPU tests and smoke runs.
DENSITY_PRESETS: dict[str, dict[str, dict]] = {
    "tiny": {
        "gaussian": {"hidden": 16, "kernel_size": 3},
        "flow": {"n_blocks": 2, "hidden": 16, "kernel_size": 1, "clamp": 2.0},
        "mixture": {"n_components": 8, "hidden": 32, "kernel_size": 1},
        "contrastive": {"channels": [8, 16, 32, 64], "members": 2},
    },
    "base": {
        "gaussian": {"hidden": 64, "kernel_size": 3},
        "flow": {"n_blocks": 8, "hidden": 128, "kernel_size": 1, "clamp": 2.0},
        "mixture": {"n_components": 8, "hidden": 64, "kernel_size": 1},
        "contrastive": {"channels": [16, 32, 64, 128, 256], "members": 2},
    },
}

# Options that only the conditional Gaussian uses; a marginal one drops them quietly so one
# config can serve both.
_CONDITIONAL_ONLY = {"hidden", "kernel_size"}


def _options(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "dim", "cond_dim"}


def build_density(kind: str, dim: int, cond_dim: int = 0, preset: str = "base", **cfg) -> nn.Module:
    """Build a density model: ``kind`` "gaussian", "flow", "mixture" or "contrastive"; conditional when ``cond_dim > 0``.

    ``cfg`` overrides the preset's options (see ``DENSITY_PRESETS``); unknown options raise
    ``ScreenerError``.
    """
    if preset not in DENSITY_PRESETS:
        raise ScreenerError(f"density preset {preset!r} unknown; choose one of {sorted(DENSITY_PRESETS)}")
    if kind not in DENSITY_PRESETS[preset]:
        raise ScreenerError(f"density kind {kind!r} unknown; choose {one_of(DENSITIES)}")
    if int(dim) < 1 or int(cond_dim) < 0:
        raise ScreenerError(f"density dims invalid: dim={dim}, cond_dim={cond_dim}")
    options = {**DENSITY_PRESETS[preset][kind], **cfg}
    if kind == "contrastive":
        cls, kwargs = ContrastiveDensity, {"cond_dim": int(cond_dim)}
    elif kind == "flow":
        cls, kwargs = GlowFlow, {"cond_dim": int(cond_dim)}
    elif kind == "mixture" and cond_dim > 0:
        cls, kwargs = ConditionalGaussianMixture, {"cond_dim": int(cond_dim)}
    elif kind == "mixture":
        cls, kwargs = GaussianMixture, {}
        options = {k: v for k, v in options.items() if k not in _CONDITIONAL_ONLY}
    elif cond_dim > 0:
        cls, kwargs = ConditionalGaussian, {"cond_dim": int(cond_dim)}
    else:
        cls, kwargs = DiagonalGaussian, {}
        options = {k: v for k, v in options.items() if k not in _CONDITIONAL_ONLY}
    unknown = sorted(set(options) - _options(cls))
    if unknown:
        raise ScreenerError(
            f"density option(s) {unknown} not accepted by {cls.__name__}; allowed: {sorted(_options(cls))}"
        )
    try:
        return cls(int(dim), **kwargs, **options)
    except (TypeError, ValueError) as err:
        raise ScreenerError(f"density config invalid for {cls.__name__}: {err}") from None
