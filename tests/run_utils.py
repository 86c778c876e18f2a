"""A trained-run layout holding random weights: enough for tests of I/O, zoo and error handling."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def make_random_run(root: Path, plans: dict, condition: str = "masked", density: str = "flow") -> Path:
    """Write ``root/run_<condition>`` with plans, three stages' random weights and a calibration."""
    from screener_plans.engines.models import build_density_model, density_config, model_path, save_density_config
    from screener_plans.engines.ssl import build_stage_network
    from screener_plans.planning.plans import save_plans

    run = Path(root) / f"run_{condition}"
    plans = {**plans, "density": {**plans["density"], "condition": condition, "kind": density}}
    save_plans(plans, run / "plans.json")
    torch.manual_seed(0)
    for stage in ("descriptor", "condition"):
        model_path(run, stage).parent.mkdir(parents=True)
        torch.save(build_stage_network(plans, stage).state_dict(), model_path(run, stage))
    cfg = density_config(plans, None, None)
    dens = build_density_model(cfg)
    with torch.no_grad():  # move the density off its identity init so scores vary per voxel
        dens.initialize(torch.randn(2, cfg["dim"], 4, 4, 4) * 0.5, torch.randn(2, cfg["cond_dim"], 4, 4, 4)
                        if cfg["cond_dim"] else None)
    model_path(run, "density").parent.mkdir(parents=True)
    torch.save(dens.state_dict(), model_path(run, "density"))
    save_density_config(run, cfg)
    (run / "calibration.json").write_text(json.dumps({"threshold": 60.0, "quantile": 0.999, "cases": ["case_0"]}))
    return run
