"""A run with untrained (random) weights in the trained-run layout: for benchmarks and tests,
where speed, memory and file handling matter and what the networks learned does not."""

from __future__ import annotations

from pathlib import Path

import torch

from screener_plans.io_utils import write_json
from screener_plans.layout import calibration_path, plans_file


def write_untrained_run(
    run_dir,
    plans: dict,
    condition: str | None = None,
    density: str | None = None,
    seed: int = 0,
    threshold: float = 60.0,
    features: str | None = None,
    intensity_prior=None,
) -> Path:
    """Write ``run_dir`` with plans, random descriptor/condition/density weights and a calibration."""
    from screener_plans.data.preprocess import preprocessing_of
    from screener_plans.engines.models import (
        build_density_model,
        density_config,
        model_path,
        save_density_config,
        with_density_choices,
    )
    from screener_plans.engines.ssl import build_stage_network
    from screener_plans.planning.plans import save_plans

    run = Path(run_dir)
    cfg = density_config(plans, condition, density, features, intensity_prior)
    plans = with_density_choices(plans, cfg)
    save_plans(plans, plans_file(run))
    torch.manual_seed(seed)
    for stage in ("descriptor", "condition"):
        model_path(run, stage).parent.mkdir(parents=True, exist_ok=True)
        torch.save(build_stage_network(plans, stage).state_dict(), model_path(run, stage))
    dens = build_density_model(cfg)
    with torch.no_grad():  # move the density off its identity init so scores vary per voxel
        dens.initialize(
            torch.randn(2, cfg["dim"], 4, 4, 4) * 0.5,
            torch.randn(2, cfg["cond_dim"], 4, 4, 4) if cfg["cond_dim"] else None,
        )
    model_path(run, "density").parent.mkdir(parents=True, exist_ok=True)
    torch.save(dens.state_dict(), model_path(run, "density"))
    save_density_config(run, {**cfg, "preprocessing": preprocessing_of(plans)})
    write_json(calibration_path(run), {"threshold": threshold, "quantile": 0.999, "cases": []})
    return run
