"""3D convolutional autoencoder baseline: score = per-voxel reconstruction error.

The reconstruction-based family of the paper's Table 2. The network compresses a crop (the
plans' crop size, same preprocessed cache and crop sampler as Screener) through stride-2
convolutions to 1/8 resolution with a few channels, and decodes it with transposed
convolutions; it is trained with an L1 (or L2) reconstruction loss. At inference the scorer
returns ``|x - AE(x)|`` per voxel, optionally Gaussian-smoothed, and a whole scan is scored with
the same sliding window (``ScorerInferer``) as Screener.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from screener_plans.errors import ScreenerError
from screener_plans.io_utils import atomic_path
from screener_plans.nets.blur import gaussian_smooth

logger = logging.getLogger("screener.baselines")

DEFAULT_CONFIG = {"channels": (16, 32, 64), "latent": 8}


def autoencoder_path(run_dir) -> Path:
    return Path(run_dir) / "baselines" / "autoencoder.pt"


def _block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    groups = 4 if c_out % 4 == 0 else 1
    return [
        nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, c_out),
        nn.LeakyReLU(0.1, inplace=True),
    ]


class ConvAutoencoder(nn.Module):
    """``(B,1,X,Y,Z) -> (B,1,X,Y,Z)`` through a ``latent``-channel bottleneck at 1/2^levels resolution."""

    def __init__(self, channels=(16, 32, 64), latent: int = 8):
        super().__init__()
        self.channels, self.latent = tuple(int(c) for c in channels), int(latent)
        enc, c_in = [], 1
        for c in self.channels:  # each level: stride-2 conv, then a conv at the new resolution
            enc += _block(c_in, c, stride=2) + _block(c, c)
            c_in = c
        enc.append(nn.Conv3d(c_in, self.latent, 1))
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv3d(self.latent, c_in, 1), nn.LeakyReLU(0.1, inplace=True)]
        ups = list(reversed(self.channels))[1:] + [max(1, self.channels[0] // 2)]
        for i, c in enumerate(ups):
            dec += [
                nn.ConvTranspose3d(c_in, c, 2, stride=2, bias=False),
                nn.GroupNorm(4 if c % 4 == 0 else 1, c),
                nn.LeakyReLU(0.1, inplace=True),
            ]
            if i < len(ups) - 1:  # no wide conv at full resolution: it would cost most of the compute
                dec += _block(c, c)
            c_in = c
        dec.append(nn.Conv3d(c_in, 1, 3, padding=1))
        self.decoder = nn.Sequential(*dec)

    @property
    def stride(self) -> int:
        return 2 ** len(self.channels)

    @property
    def config(self) -> dict:
        return {"channels": list(self.channels), "latent": self.latent}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        pad = [(-n) % self.stride for n in shape]
        if any(pad):  # windows whose size is not a multiple of the stride: pad, then cut back
            x = F.pad(x, [p for q in reversed(pad) for p in (0, q)])
        out = self.decoder(self.encoder(x))
        return out[(..., *(slice(0, n) for n in shape))]


class AutoencoderScorer(nn.Module):
    """``forward(window (B,1,X,Y,Z), origin_mm, spacing) -> |x - AE(x)|`` (smoothed), like Screener's scorer."""

    def __init__(self, model: ConvAutoencoder, smooth_sigma: float = 1.0):
        super().__init__()
        self.model, self.smooth_sigma = model, float(smooth_sigma)

    def forward(self, image: torch.Tensor, origin_mm: torch.Tensor = None, spacing: torch.Tensor = None):
        x = image.float()
        err = (self.model(x).float() - x).abs()
        return gaussian_smooth(err, self.smooth_sigma)


def autoencoder_scorer(model: ConvAutoencoder, smooth_sigma: float = 1.0) -> AutoencoderScorer:
    """The trained autoencoder as a frozen scorer for ``Predictor`` / ``calibrate`` / ``ScorerInferer``."""
    scorer = AutoencoderScorer(model, smooth_sigma).eval()
    for p in scorer.parameters():
        p.requires_grad_(False)
    return scorer


def build_autoencoder(config: dict | None = None, seed: int = 0) -> ConvAutoencoder:
    """A freshly initialised autoencoder; the same ``seed`` gives the same weights."""
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    torch.manual_seed(int(seed))
    return ConvAutoencoder(cfg["channels"], cfg["latent"])


def crop_batch(cases, crop_size, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Batch ``step`` of random body crops (B,1,*crop_size): a pure function of (seed, step)."""
    from screener_plans.data.dataset import random_crop

    crops = []
    for j in range(batch_size):
        rng = np.random.default_rng([int(seed), 7, int(step), j])
        case = cases.get(int(rng.integers(len(cases))))
        crop, _ = random_crop(case["image"], case["mask"], crop_size, rng)
        crops.append(crop)
    return torch.from_numpy(np.stack(crops))


def reconstruction_loss(model: nn.Module, x: torch.Tensor, loss: str = "l1") -> torch.Tensor:
    rec = model(x)
    return F.l1_loss(rec, x) if loss == "l1" else F.mse_loss(rec, x)


def train_autoencoder(
    run_dir,
    plans: dict,
    steps: int,
    batch_size: int | None = None,
    device="cpu",
    seed: int = 0,
    log_every: int = 50,
    lr: float = 1e-3,
    loss: str = "l1",
    config: dict | None = None,
    save: bool = True,
) -> ConvAutoencoder:
    """Train on random crops of the run's preprocessed training cases; saves ``RUN/baselines/autoencoder.pt``.

    ``batch_size`` defaults to the crops per step of Screener's descriptor (2 x plans batch_size).
    AdamW with a one-cycle schedule and the plans' warm-up, weight decay and gradient clipping.
    The returned model is in eval mode and has ``losses`` (the training loss of every step).
    """
    from screener_plans.data.dataset import CaseCache, training_cases
    from screener_plans.device import resolve_device
    from screener_plans.planning.plans import warmup_fraction

    steps = int(steps)
    if steps < 1:
        raise ScreenerError(f"autoencoder: steps must be a positive integer, got {steps}")
    if loss not in ("l1", "l2"):
        raise ScreenerError(f"autoencoder: loss must be 'l1' or 'l2', got {loss!r}")
    device = resolve_device(device)
    batch_size = int(batch_size or 2 * plans["batch_size"])
    crop_size = tuple(plans["crop_size"])
    cases = CaseCache(run_dir, training_cases(run_dir, plans))
    model = build_autoencoder(config, seed).to(device)
    optim = plans["optim"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=optim["weight_decay"])
    if steps >= 3:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=steps, pct_start=warmup_fraction(plans, steps)
        )
    else:  # OneCycleLR divides by zero below three steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    model.train()
    losses, t0 = [], time.monotonic()
    for step in range(steps):
        x = crop_batch(cases, crop_size, batch_size, seed, step).to(device)
        value = reconstruction_loss(model, x, loss)
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim["grad_clip"])
        opt.step()
        sched.step()
        losses.append(float(value.detach()))
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            elapsed = time.monotonic() - t0
            logger.info(
                "autoencoder step %d/%d loss %.5f lr %.2e %.2f s/step",
                step + 1,
                steps,
                float(np.mean(losses[-log_every:])),
                sched.get_last_lr()[0],
                elapsed / (step + 1),
            )
    model.eval()
    model.losses = losses
    if save:
        save_autoencoder(
            model,
            autoencoder_path(run_dir),
            {
                "steps": steps,
                "batch_size": batch_size,
                "lr": lr,
                "loss": loss,
                "seed": int(seed),
                "final_loss": float(np.mean(losses[-10:])),
            },
        )
    return model


def save_autoencoder(model: ConvAutoencoder, path, info: dict | None = None) -> Path:
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({"config": model.config, "state_dict": state, "info": dict(info or {})}, tmp)
    return path


def load_autoencoder(path) -> ConvAutoencoder:
    """A saved autoencoder, on CPU, in eval mode."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = ConvAutoencoder(blob["config"]["channels"], blob["config"]["latent"])
        model.load_state_dict(blob["state_dict"])
    except (OSError, KeyError, RuntimeError, TypeError) as e:
        raise ScreenerError(f"{path}: cannot load the autoencoder baseline ({type(e).__name__}: {e})") from None
    model.info = blob.get("info", {})
    return model.eval()
