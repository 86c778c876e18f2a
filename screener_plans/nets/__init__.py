"""Dense 3D descriptor/condition networks, SSL heads, sin-cos positional condition, presets."""

from .heads import Expander, MLPHead, Projector
from .presets import (
    ACTIVATION_OVERHEAD,
    NETWORK_PRESETS,
    activation_bytes_per_voxel,
    build_head,
    build_network,
    count_parameters,
    estimate_train_memory_bytes,
    head_train_bytes,
    resolve_preset,
)
from .sincos import SinCosCondition, coordinate_grid_mm, sincos_encoding, sincos_periods_mm
from .unet import DenseUNet

__all__ = [
    "ACTIVATION_OVERHEAD",
    "DenseUNet",
    "Expander",
    "MLPHead",
    "NETWORK_PRESETS",
    "Projector",
    "SinCosCondition",
    "activation_bytes_per_voxel",
    "build_head",
    "build_network",
    "coordinate_grid_mm",
    "count_parameters",
    "estimate_train_memory_bytes",
    "head_train_bytes",
    "resolve_preset",
    "sincos_encoding",
    "sincos_periods_mm",
]
