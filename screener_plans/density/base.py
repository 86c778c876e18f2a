"""Shared pieces of the density models: the NLL convention, one-time data init, conv nets.

Every density model maps a descriptor map ``y`` (B, D, X, Y, Z) and, if conditional, a
condition map ``c`` (B, Dc, X, Y, Z) to a per-voxel negative log-likelihood (B, X, Y, Z) in
nats, including the constant ``0.5 * D * log(2 * pi)``.

Where NaN/inf can still arise (everything else is bounded by construction):
- non-finite inputs propagate (NaN/inf in ``y`` or ``c`` give NaN/inf NLL at those voxels);
- huge inputs: the squared distance overflows float32 only for ``|y|`` around 1e19, but
  under float16 already around 256, which is why the forward always computes in the
  parameters' dtype (float32) with autocast disabled;
- variances are soft-bounded (``soft_bound``) around a data-initialised centre, so a dead
  (constant) descriptor channel gives a large but finite NLL for voxels deviating from it;
- act-norm / Gaussian init on a constant channel divides by ``sqrt(var + eps)``, never 0.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

LOG_2PI = math.log(2.0 * math.pi)
INIT_EPS = 1e-6  # variance floor for data-dependent init (constant channels)


def is_tracing() -> bool:
    """True while torch.jit traces or scripts; data-dependent init must not be recorded."""
    return torch.jit.is_tracing() or torch.jit.is_scripting()


def soft_bound(x: Tensor, bound: float) -> Tensor:
    """Smoothly squash ``x`` into (-bound, bound); identity near 0 so zero-init stays exact."""
    return bound * torch.tanh(x / bound)


def channel_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (biased) variance of a (B, C, ...) map, shapes (C,).

    Pooled over all DDP ranks when torch.distributed is initialised, so every rank gets the
    same data-dependent init (all ranks must call it together, as they do on the first batch).
    """
    x = x.detach().transpose(0, 1).reshape(x.shape[1], -1)
    count = torch.tensor(float(x.shape[1]), device=x.device, dtype=x.dtype)
    total = x.sum(1)
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed:
        dist.all_reduce(total)
        dist.all_reduce(count)
    mean = total / count
    # two passes: the one-pass sum of squares loses precision on large float32 maps
    sq = (x - mean[:, None]).pow(2).sum(1)
    if distributed:
        dist.all_reduce(sq)
    return mean, sq / count


def standard_normal_nll(z: Tensor, logdet: Tensor) -> Tensor:
    """Per-voxel NLL of a flow: 0.5 ||z||^2 + 0.5 D log(2 pi) - log|det J|, shape (B, X, Y, Z)."""
    return 0.5 * z.pow(2).sum(1) + 0.5 * z.shape[1] * LOG_2PI - logdet


def diagonal_gaussian_nll(y: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """Per-voxel NLL of y under N(mean, diag(exp(log_var))), shape (B, X, Y, Z)."""
    nll = 0.5 * ((y - mean).pow(2) * torch.exp(-log_var) + log_var).sum(1)
    return nll + 0.5 * y.shape[1] * LOG_2PI


def conv_net(in_ch: int, hidden: int, out_ch: int, kernel_size: int = 1) -> nn.Sequential:
    """Voxel-wise MLP as convs: first conv ``kernel_size`` (local aggregation), then 1x1x1.

    The receptive field is exactly ``kernel_size``^3. Replicate padding avoids the dark-border
    artefact zero padding would put into the NLL maps of every crop. The last layer is
    zero-initialised so the net starts as a constant (its bias).
    """
    check_kernel_size(kernel_size)
    net = nn.Sequential(
        nn.Conv3d(in_ch, hidden, kernel_size, padding=kernel_size // 2, padding_mode="replicate"),
        nn.SiLU(),
        nn.Conv3d(hidden, hidden, 1),
        nn.SiLU(),
        nn.Conv3d(hidden, out_ch, 1),
    )
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def check_kernel_size(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")


def _sync_init_flag(module: DensityModel, incompatible_keys) -> None:
    module._init_done = bool(module.initialized)


class DensityModel(nn.Module):
    """Base class: validates inputs, runs the one-time data init, computes in full precision.

    Subclasses implement ``_initialize(y, c)`` and ``_nll(y, c)``. Marginal models ignore ``c``.
    """

    conditional: bool = False

    def __init__(self, dim: int, cond_dim: int = 0):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if cond_dim < 0 or (self.conditional and cond_dim < 1):
            raise ValueError(f"invalid cond_dim {cond_dim} for {type(self).__name__}")
        self.dim = int(dim)
        self.cond_dim = int(cond_dim)
        # the flag is a buffer so it travels with checkpoints; the Python mirror avoids a
        # device sync on every training step
        self.register_buffer("initialized", torch.tensor(False))
        self._init_done = False
        self.register_load_state_dict_post_hook(_sync_init_flag)

    @property
    def trainable(self) -> nn.Module:
        """The module the density stage fits (itself; ``IntensityPrior`` wraps a fixed term around one)."""
        return self

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _prepare(self, y: Tensor, c: Tensor | None, name: str = "y") -> tuple[Tensor, Tensor | None]:
        tracing = is_tracing()  # shape checks would turn into baked-in tensor compares
        if not tracing and (y.dim() != 5 or y.shape[1] != self.dim):
            raise ValueError(f"{name} must be (B, {self.dim}, X, Y, Z), got {tuple(y.shape)}")
        y = y.to(self._dtype())
        if not self.conditional:
            return y, None
        if c is None:
            raise ValueError(f"{type(self).__name__} is conditional: a condition map c is required")
        if tracing:
            return y, c.to(y.dtype)
        if c.dim() != 5 or c.shape[1] != self.cond_dim or c.shape[0] != y.shape[0] or c.shape[2:] != y.shape[2:]:
            raise ValueError(
                f"c must be (B, {self.cond_dim}, X, Y, Z) matching {name} {tuple(y.shape)}, got {tuple(c.shape)}"
            )
        return y, c.to(y.dtype)

    @staticmethod
    def _full_precision(x: Tensor):
        # AMP would run the convs in float16, where 0.5*||z||^2 overflows for |z| > ~256
        if torch.is_autocast_enabled(x.device.type):
            return torch.autocast(device_type=x.device.type, enabled=False)
        return contextlib.nullcontext()

    @torch.no_grad()
    def initialize(self, y: Tensor, c: Tensor | None = None) -> None:
        """Data-dependent init from a first batch; forward calls it once in training mode."""
        y, c = self._prepare(y, c)
        with self._full_precision(y):
            self._initialize(y, c)
        self.initialized.fill_(True)
        self._init_done = True

    def forward(self, y: Tensor, c: Tensor | None = None) -> Tensor:
        """Per-voxel NLL in nats, (B, X, Y, Z)."""
        y, c = self._prepare(y, c)
        if self.training and not self._init_done and not is_tracing():
            self.initialize(y, c)
        with self._full_precision(y):
            return self._nll(y, c)

    def nll(self, y: Tensor, c: Tensor | None = None) -> Tensor:
        """Alias of ``forward``: per-voxel negative log-likelihood (the anomaly score)."""
        return self(y, c)

    def _initialize(self, y: Tensor, c: Tensor | None) -> None:
        raise NotImplementedError

    def _nll(self, y: Tensor, c: Tensor | None) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"dim={self.dim}, cond_dim={self.cond_dim}"
