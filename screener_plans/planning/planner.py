"""Derive ``plans.json`` from a dataset fingerprint, nnU-Net style.

Target spacing, intensity window, crop size, batch and schedule are derived from the data and
the device; ``--device``, ``--memory-gb`` and ``--set key=value`` override them, and the plans
keep what was derived next to what was overridden.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np

from screener_plans import __version__
from screener_plans.errors import ScreenerError
from screener_plans.io_utils import ensure_writable_dir
from screener_plans.layout import plans_file
from screener_plans.planning.plans import (
    PLANS_VERSION,
    apply_overrides,
    check_override_keys,
    parse_overrides,
    save_plans,
)
from screener_plans.presets import NETWORK_PRESETS, PRESET_PLANS

ANISOTROPY_RATIO = 3.0


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Median spacing per axis, with nnU-Net's rule for strongly anisotropic data.

    When one axis is both much coarser (> 3x) and much shorter in voxels (3x fewer) than the
    others, resampling it to the median would invent many slices; its 10th percentile spacing
    is used instead (never finer than the other axes).
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    shapes = np.asarray(shapes, dtype=np.float64)
    target = np.median(spacings, axis=0)
    sizes_mm = np.median(spacings * shapes, axis=0)
    target_size = sizes_mm / target
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > ANISOTROPY_RATIO * max(target[others])
    aniso_voxels = target_size[worst] * ANISOTROPY_RATIO < min(target_size[others])
    if aniso_spacing and aniso_voxels:
        t = float(np.percentile(spacings[:, worst], 10))
        target[worst] = max(t, max(target[others]) + 1e-5)
    return target


def default_memory_gb(device: str) -> float:
    """Memory the planner may plan for: 85% of the GPU, or half of the machine's RAM."""
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            return round(torch.cuda.get_device_properties(0).total_memory / 2**30 * 0.85, 1)
        return 16.0
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError, AttributeError):
        total = 8.0
    return round(total * 0.5, 1)


def fit_crop_and_batch(
    max_crop: int, median_shape, stride: int, batch: int, memory_gb: float, estimate, min_crop: int | None = None
) -> tuple[list[int], int]:
    """Largest crop (divisible by ``stride``, no larger than the median image) and batch that fit.

    ``estimate(crop_size, n_crops) -> bytes`` is the training-step memory model. Crops shrink
    first (largest axis first) down to ``min_crop``, then the batch halves.
    """
    min_crop = min_crop or 2 * stride
    crop = []
    for n in median_shape:
        c = min(max_crop, int(n) // stride * stride)
        crop.append(max(min_crop, c))
    budget = memory_gb * 2**30
    while estimate(crop, 2 * batch) > budget:
        axis = int(np.argmax(crop))
        if crop[axis] - stride >= min_crop:
            crop[axis] -= stride
        elif batch > 1:
            batch //= 2
        else:
            raise ScreenerError(
                f"memory budget {memory_gb:g} GB is too small for even one {crop} crop pair; raise --memory-gb"
            )
    return crop, batch


def network_plan(preset: str, knobs: dict) -> dict:
    """The plans' ``network`` section: the preset's sizes plus descriptor/condition widths."""
    net = copy.deepcopy(NETWORK_PRESETS[preset])
    net["channels"] = list(net["channels"])
    net.pop("out_channels", None)
    net["d_desc"], net["d_cond"] = knobs["d_desc"], knobs["d_cond"]
    # Extra input windows (HU) computed inside the network, e.g. [[-160, 240]] for soft tissue
    net["windows_hu"] = [[float(lo), float(hi)] for lo, hi in knobs.get("windows_hu", [])]
    return net


def network_preset(network: dict) -> dict:
    """Plans ``network`` section -> the preset mapping ``screener_plans.nets`` builds from."""
    preset = {k: v for k, v in network.items() if k not in ("d_desc", "d_cond", "windows_hu")}
    preset["channels"] = tuple(network["channels"])
    preset["out_channels"] = network["d_desc"]
    return preset


def derive_plans(fingerprint: dict, device: str, memory_gb: float, preset: str | None = None, seed: int = 0) -> dict:
    """Plans derived from ``fingerprint`` for ``device`` within ``memory_gb``."""
    from screener_plans.nets.presets import estimate_train_memory_bytes

    preset = preset or ("base" if device == "cuda" else "tiny")
    if preset not in PRESET_PLANS:
        raise ScreenerError(f"unknown preset {preset!r} (known: {', '.join(PRESET_PLANS)})")
    knobs = PRESET_PLANS[preset]
    cases = fingerprint["cases"]
    spacings = np.array([c["spacing"] for c in cases])
    shapes = np.array([c["shape"] for c in cases])
    spacing = np.maximum(target_spacing(spacings, shapes), knobs["min_spacing"])
    body_mm = np.array([np.asarray(c["body_bbox_shape"]) * np.asarray(c["spacing"]) for c in cases])
    median_body = np.median(body_mm, axis=0) / spacing
    network = network_plan(preset, knobs)
    stride = 2 ** (len(network["channels"]) - 1)
    amp = device == "cuda"

    def estimate(crop, n_crops):
        return estimate_train_memory_bytes(
            network_preset(network), crop, n_crops, amp=amp, n_pairs=knobs["pairs_per_crop"] * n_crops // 2
        )

    crop, batch = fit_crop_and_batch(knobs["max_crop"], median_body, stride, knobs["batch_size"], memory_gb, estimate)
    hu = fingerprint["pooled_hu"]
    window = [float(np.floor(max(-1024.0, hu["p00_5"]))), float(np.ceil(hu["p99_5"]))]
    if window[1] - window[0] < 100:
        raise ScreenerError(f"pooled body HU range {window} is too narrow for CT; check the input images")
    block = max(2, int(round(min(crop) / 4)))
    plans = {
        "schema_version": PLANS_VERSION,
        "screener_version": __version__,
        "seed": int(seed),
        "preset": preset,
        "device": device,
        "memory_gb": float(memory_gb),
        "amp": amp,
        "spacing": [round(float(s), 4) for s in spacing],
        "intensity": {
            "window": window,
            "normalization": "clip to window, scale to [0, 1]",
            "pooled_mean": round(hu["mean"], 2),
            "pooled_std": round(hu["std"], 2),
        },
        "crop_size": [int(c) for c in crop],
        "batch_size": int(batch),
        "pairs_per_crop": int(knobs["pairs_per_crop"]),
        "crop_scale": [0.7, 1.4],
        # Mild colour jitter in HU terms: CT intensities carry meaning (a liver mass may differ from
        # liver by 30 HU), so descriptors must not become invariant to such differences. Two views
        # differing by up to +-15 HU brightness and 5% contrast (the first defaults) taught exactly
        # that invariance; these milder values raised AUROC 0.534 -> 0.578 on the demo data.
        "augment": {"brightness_hu": 3.0, "noise_hu": 10.0, "contrast": 0.01, "blur_sigma": 0.7},
        "masking": {"block_size": block, "ratio": 0.6},
        "network": network,
        "loss": {"kind": "vicreg", "inv_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0, "temperature": 0.1},
        "optim": {"lr": knobs["lr"], "weight_decay": 1e-6, "grad_clip": 1.0, "warmup_fraction": 0.05},
        "steps": dict(knobs["steps"]),
        "checkpoint_every": int(knobs["checkpoint_every"]),
        "density": {
            **knobs["density"],
            "batch_size": int(knobs["density_batch"]),
            "voxels_per_crop": int(knobs.get("density_voxels", 0)),
            "condition_passes": int(knobs.get("density_condition_passes", 0)),
        },
        "inference": {
            "overlap": 0.25,
            "blend": "gaussian",
            "sw_batch_size": 2 if device == "cpu" else 4,
            "region_threshold_quantile": 0.999,
            # Gaussian sigma of the map's smoothing inside the body (inference/smoothing.py),
            # chosen on the quality benchmark's dev set (docs/benchmarks.md)
            "smooth_mm": 3.0,
        },
        "dataset": {
            "data_dir": fingerprint["data_dir"],
            "n_cases": fingerprint["n_cases"],
            "cases": [c["name"] for c in cases],
            "median_shape": [int(v) for v in np.median(shapes, axis=0)],
            "median_spacing": [round(float(v), 4) for v in np.median(spacings, axis=0)],
            "median_body_shape_at_target": [int(v) for v in median_body],
        },
    }
    plans["derived"] = {
        k: copy.deepcopy(plans[k])
        for k in (
            "preset",
            "device",
            "memory_gb",
            "spacing",
            "intensity",
            "crop_size",
            "batch_size",
            "pairs_per_crop",
            "masking",
            "steps",
        )
    }
    return plans


def _refuse_trained_run(run_dir: Path) -> None:
    """New plans under trained stages would leave those stages stale (other spacing, crop, ...)."""
    from screener_plans.bundle_runner import STAGE_BUNDLES, stage_started

    trained = [stage for stage in STAGE_BUNDLES if stage_started(run_dir, stage)]
    if trained:
        raise ScreenerError(
            f"{run_dir}: holds stages trained with its current plans ({', '.join(trained)}); new "
            "plans would leave them stale: plan into a new run folder, or delete those stage "
            "folders first"
        )


def plan(
    data_dir,
    run_dir,
    device: str = "auto",
    memory_gb: float | None = None,
    overrides=None,
    skip_bad: bool = False,
    workers: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Fingerprint ``data_dir`` and write ``RUN_DIR/fingerprint.json`` and ``RUN_DIR/plans.json``."""
    from screener_plans.planning.fingerprint import build_fingerprint

    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise ScreenerError(f"{data_dir}: data folder does not exist")
    if not data_dir.is_dir():
        raise ScreenerError(f"{data_dir}: not a folder")
    overrides = parse_overrides(overrides)
    check_override_keys(overrides)  # before fingerprinting a whole archive
    _refuse_trained_run(Path(run_dir))
    run_dir = ensure_writable_dir(run_dir)
    fingerprint = build_fingerprint(data_dir, run_dir, workers=workers, skip_bad=skip_bad, progress=progress)
    from screener_plans.device import device_kind  # imports torch: only when planning

    resolved = device_kind(device)
    # These two change what is derived, so they go in before derivation.
    preset = overrides.pop("preset", None)
    seed = int(overrides.pop("seed", seed))
    plans = derive_plans(
        fingerprint, resolved, float(memory_gb) if memory_gb else default_memory_gb(resolved), preset=preset, seed=seed
    )
    user = {}
    if device != "auto":
        user["device"] = resolved
    if memory_gb:
        user["memory_gb"] = float(memory_gb)
    if preset:
        user["preset"] = preset
    plans["overrides"] = user
    plans = apply_overrides(plans, overrides)
    if fingerprint["skipped"]:
        plans["dataset"]["skipped"] = fingerprint["skipped"]
    save_plans(plans, plans_file(run_dir))
    return plans
