"""Measure one training step of each stage on this machine (for budgets and benchmarks)."""

from __future__ import annotations

import time

import torch

from screener_plans.device import amp_dtype, autocast, resolve_device


def _ssl_step_fn(run_dir, plans, stage, device):
    from screener_plans.data.dataset import PairDataset
    from screener_plans.engines.ssl import SSLModel, build_ssl_head, build_ssl_loss, build_stage_network

    model = SSLModel(build_stage_network(plans, stage), build_ssl_head(plans, stage)).to(device)
    loss_fn = build_ssl_loss(plans)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b = plans["batch_size"]
    data = PairDataset(run_dir, plans, length=10_000, stage=stage, seed=12345)
    dtype = amp_dtype(device, plans["amp"])

    def step(i):
        items = [data[i * b + j] for j in range(b)]
        crops = torch.stack([it["crops"] for it in items]).to(device)
        pos = torch.stack([it["positions"] for it in items]).to(device)
        with autocast(device, dtype):
            z1, z2 = model(crops, pos)
        loss = loss_fn(z1, z2)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _density_step_fn(run_dir, plans, device):
    from screener_plans.data.dataset import CropDataset
    from screener_plans.engines.density import anomaly_settings, density_loss
    from screener_plans.engines.models import (
        Scorer,
        build_density_model,
        build_untrained_features,
        density_config,
        freeze,
    )

    cfg = density_config(plans, None, None)
    feats = freeze(build_untrained_features(plans, cfg))
    scorer = Scorer(feats, build_density_model(cfg)).to(device)
    opt = torch.optim.AdamW(scorer.density.parameters(), lr=1e-5)
    b = plans["density"]["batch_size"]
    data = CropDataset(run_dir, plans, length=10_000, seed=12345, anomalies=anomaly_settings(cfg))
    voxels, trim = plans["density"]["voxels_per_crop"], plans["density"]["trim"]

    def step(i):
        items = [data[i * b + j] for j in range(b)]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        loss = density_loss(scorer, batch, device, plans["amp"], voxels, trim)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def measure_step_seconds(run_dir, plans: dict, stage: str, device=None, steps: int = 5) -> float:
    """Median seconds of one training step (data included) after two warm-up steps."""
    device = resolve_device(device)
    step = (
        _density_step_fn(run_dir, plans, device) if stage == "density" else _ssl_step_fn(run_dir, plans, stage, device)
    )
    step(steps + 1)  # warm-ups on samples the timed steps do not reuse
    step(steps + 2)
    times = []
    for i in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]
