"""Dense 3D UNet/FPN producing one descriptor (or condition) vector per input voxel.

Encoder: a stem convolution and residual blocks per level, stride-2 residual blocks between
levels. Decoder: transposed-convolution upsampling, concatenation with the encoder skip,
residual fusion blocks. Every decoder level (and the bottleneck) has a 1x1x1 head to
``out_channels``; the head outputs are summed top-down, FPN-style, with trilinear upsampling,
so the output is at full input resolution.

The forward pass has no data-dependent Python control flow (the input check is skipped while
tracing, scripting or compiling), so the module can be scripted, traced and exported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit, UpSample
from torch import nn

NORMS = ("instance", "batch", "group")


def norm_spec(norm: str, channels: int) -> tuple:
    """MONAI norm spec for ``norm`` at ``channels`` channels.

    Instance norm gets learnable affine parameters (MONAI's default has none); group norm uses
    up to 8 groups, the largest count that divides ``channels``.
    """
    if norm == "instance":
        return ("instance", {"affine": True})
    if norm == "batch":
        return ("batch", {})
    if norm == "group":
        groups = max(g for g in range(1, min(8, channels) + 1) if channels % g == 0)
        return ("group", {"num_groups": groups})
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _res_block(cin: int, cout: int, stride: int, norm: str, act) -> ResidualUnit:
    return ResidualUnit(3, cin, cout, strides=stride, kernel_size=3, subunits=2, act=act, norm=norm_spec(norm, cout))


class _DecoderLevel(nn.Module):
    """Upsample the coarser decoder state, fuse it with the skip, add this level's head output."""

    def __init__(self, coarse: int, fine: int, out_channels: int, blocks: int, norm: str, act):
        super().__init__()
        self.up = UpSample(3, coarse, fine, scale_factor=2, mode="deconv")
        self.fuse = nn.Sequential(
            _res_block(2 * fine, fine, 1, norm, act),
            *[_res_block(fine, fine, 1, norm, act) for _ in range(blocks - 1)],
        )
        self.head = nn.Conv3d(fine, out_channels, kernel_size=1)

    def forward(self, h: torch.Tensor, skip: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fuse(torch.cat([self.up(h), skip], dim=1))
        out = F.interpolate(out, scale_factor=2.0, mode="trilinear", align_corners=False) + self.head(h)
        return h, out


class DenseUNet(nn.Module):
    """Fully convolutional 3D UNet/FPN: (B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z).

    Args:
        in_channels: input channels (1 for the descriptor; 2 for the masked condition model).
        out_channels: descriptor dimension d.
        channels: feature channels per level, finest first; ``len(channels) - 1`` downsamplings.
        blocks_per_level: residual blocks per encoder level and per decoder level.
        norm: "batch" (default; eval mode is window-independent, which keeps sliding-window
            inference consistent), "instance" or "group".
        act: MONAI activation spec.

    X, Y, Z must be divisible by :attr:`total_stride`, otherwise ``ValueError``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 32,
        channels: Sequence[int] = (8, 16, 32, 64),
        blocks_per_level: int = 1,
        norm: str = "batch",
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.01}),
    ):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1 or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}")
        if blocks_per_level < 1:
            raise ValueError(f"blocks_per_level must be >= 1, got {blocks_per_level}")
        norm_spec(norm, channels[0])  # validates the name
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.channels = channels
        self.blocks_per_level = int(blocks_per_level)
        self.norm = norm
        self._total_stride = 1 << (len(channels) - 1)

        stem = [Convolution(3, in_channels, channels[0], kernel_size=3, act=act, norm=norm_spec(norm, channels[0]))]
        stem += [_res_block(channels[0], channels[0], 1, norm, act) for _ in range(blocks_per_level)]
        encoder = [nn.Sequential(*stem)]
        for cin, cout in zip(channels[:-1], channels[1:]):
            level = [_res_block(cin, cout, 2, norm, act)]
            level += [_res_block(cout, cout, 1, norm, act) for _ in range(blocks_per_level - 1)]
            encoder.append(nn.Sequential(*level))
        self.encoder = nn.ModuleList(encoder)
        self.bottleneck_head = nn.Conv3d(channels[-1], out_channels, kernel_size=1)
        # Ordered coarse-to-fine, i.e. in the order the forward pass applies them.
        self.decoder = nn.ModuleList(
            [
                _DecoderLevel(channels[i + 1], channels[i], out_channels, blocks_per_level, norm, act)
                for i in reversed(range(len(channels) - 1))
            ]
        )

    @property
    def total_stride(self) -> int:
        """Spatial input sizes must be multiples of this."""
        return self._total_stride

    @torch.jit.unused
    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is (B, in_channels, X, Y, Z) with X, Y, Z multiples of total_stride."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"DenseUNet expects input of shape (B, {self.in_channels}, X, Y, Z), got {tuple(x.shape)}")
        s = self.total_stride
        if any(int(n) % s for n in x.shape[2:]):
            raise ValueError(
                f"DenseUNet spatial size {tuple(int(n) for n in x.shape[2:])} is not divisible by its total "
                f"stride {s}; use crop sizes that are multiples of {s}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
                self.check_input(x)
        skips: list[torch.Tensor] = []
        h = x
        for level in self.encoder:
            h = level(h)
            skips.append(h)
        out = self.bottleneck_head(h)
        i = len(skips) - 2
        for level in self.decoder:
            h, out = level(h, skips[i], out)
            i -= 1
        return out
