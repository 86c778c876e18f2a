"""Small functions the bundles' configs call: plans loading, output folders, step counts, workers."""

from __future__ import annotations

from pathlib import Path

import torch

from screener_plans.errors import ScreenerError
from screener_plans.layout import plans_file
from screener_plans.options import as_number
from screener_plans.planning.plans import warmup_fraction  # noqa: F401  (the bundle configs call it from here)


def load_stage_plans(plans_file) -> dict:
    """Load ``--plans_file`` with a clear message when it is missing."""
    from screener_plans.planning.plans import load_plans

    if not plans_file:
        raise ScreenerError("--plans_file is required (the plans.json written by `screener plan`)")
    return load_plans(plans_file)


def run_dir_of(plans_file) -> str:
    return str(Path(plans_file).resolve().parent)


def output_dir(output_dir, plans_file, stage: str) -> str:
    """``--output_dir`` or ``RUN/<stage>`` next to the plans; created and checked for writing."""
    from screener_plans.io_utils import ensure_writable_dir

    out = Path(output_dir) if output_dir else Path(run_dir_of(plans_file)) / stage
    return str(ensure_writable_dir(out))


def total_steps(plans: dict, stage: str, max_steps=None) -> int:
    """``--max_steps`` when given, else the plans' steps for ``stage``."""
    if max_steps not in (None, ""):
        return as_number(max_steps, "max_steps", minimum=1)
    return int(plans["steps"][stage])


def loader_workers(device: torch.device, requested=None) -> int:
    """Data-loader worker processes: as asked, else leave the CPU to compute on CPU-only machines."""
    if requested not in (None, ""):
        return as_number(requested, "num_workers", minimum=0)
    from screener_plans.parallel import usable_cpus

    cpus = usable_cpus()
    if torch.device(device).type == "cuda":
        return max(1, min(8, cpus - 1))
    return 1 if cpus <= 4 else min(4, cpus // 4)


def required(value, key: str):
    """``value`` of a required bundle override, or a clear error naming ``--key``."""
    if value in (None, ""):
        raise ScreenerError(f"--{key} is required")
    return value


def run_plans_file(run_dir) -> str:
    """``RUN/plans.json`` of ``--run_dir``."""
    required(run_dir, "run_dir")
    return str(plans_file(run_dir))


def schedule_steps(steps: int) -> int:
    """Length of the one-cycle schedule: the run's steps, but at least 3 (OneCycleLR's minimum)."""
    return max(3, int(steps))


def inference_setting(plans: dict, key: str, value):
    """``--key`` of the inference bundle, or the plans' ``inference.<key>`` when not given; checked
    as the plans check that key, and named in the error."""
    from screener_plans.planning.plans import SCHEMA

    if value in (None, ""):
        return plans["inference"][key]
    if isinstance(value, str):
        try:
            value = float(value) if key != "blend" else value
        except ValueError:
            pass
    if key == "sw_batch_size" and isinstance(value, float) and value.is_integer():
        value = int(value)
    check, expected = SCHEMA[f"inference.{key}"]
    if not check(value):
        raise ScreenerError(f"--{key} must be {expected}, got {value!r}")
    return value
