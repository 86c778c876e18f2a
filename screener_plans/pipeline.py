"""`screener plan-and-train`: plan, preprocess, train the three stages and calibrate, resumably.

With ``--budget-minutes`` the steps per stage are set from measured step times so the whole run
ends within the budget on this machine (the plan's steps, all scaled by one factor); the chosen
steps are written into ``plans.json`` so a
re-run resumes with the same schedule.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from screener_plans.bundle_runner import stage_started
from screener_plans.errors import ScreenerError
from screener_plans.layout import model_path, plans_file

logger = logging.getLogger("screener")

STAGE_OVERHEAD_S = 12.0  # bundle start-up, data workers, final save
MAX_STEPS = 200_000
CALIBRATION_RESERVE_S = 30.0  # calibration and the density stage's first-batch initialisation
MIN_TRAINING_S = 60.0


def stages_for(condition: str, features: str = "descriptor") -> list[str]:
    """The stages a density with this condition and these features is trained on, in order."""
    from screener_plans.engines.models import uses_descriptor

    return (
        (["descriptor"] if uses_descriptor(features) else [])
        + (["condition"] if condition == "masked" else [])
        + ["density"]
    )


def scale_steps(planned: dict, step_seconds: dict, seconds_left: float) -> dict:
    """The planned steps of each stage, all scaled by one factor so that together they fit ``seconds_left``.

    Time is split in the proportions of the plan (steps x measured step time), not by fixed
    shares: a slow density (a flow on descriptor features) keeps its planned share of the steps
    instead of being starved by a share sized for a cheap one.
    """
    planned_s = sum(planned[s] * step_seconds[s] for s in planned)
    usable = max(0.0, seconds_left - STAGE_OVERHEAD_S * len(planned))
    factor = usable / planned_s if planned_s > 0 else 0.0
    return {
        s: {"steps": int(min(MAX_STEPS, max(20, planned[s] * factor))), "step_seconds": round(step_seconds[s], 4)}
        for s in planned
    }


def budget_steps(run_dir: Path, plans: dict, stages: list[str], seconds_left: float, device) -> dict:
    """Steps per stage that fit ``seconds_left``, from step times measured on this machine."""
    from screener_plans.engines.timing import measure_step_seconds

    todo = [s for s in stages if not stage_started(run_dir, s)]
    if not todo:
        return {}
    seconds = {}
    for s in todo:
        logger.info("measuring %s step time for the budget", s)
        seconds[s] = measure_step_seconds(run_dir, plans, s, device)
    return scale_steps({s: max(1, int(plans["steps"][s])) for s in todo}, seconds, seconds_left)


def _apply_budget(
    run_dir: Path, plans: dict, stages: list[str], budget_minutes: float, elapsed: float, device: str
) -> None:
    """Set the steps of the stages not started yet so that the run fits ``budget_minutes``."""
    left = budget_minutes * 60 - elapsed - CALIBRATION_RESERVE_S
    if left <= MIN_TRAINING_S:
        raise ScreenerError(
            f"--budget-minutes {budget_minutes:g} leaves no time for training after planning and preprocessing"
        )
    chosen = budget_steps(run_dir, plans, stages, left * 0.93, device if device != "auto" else None)
    if not chosen:
        logger.info(
            "budget %g min not applied: every stage was trained or started by an earlier run, whose steps stay (%s)",
            budget_minutes,
            ", ".join(f"{s} {plans['steps'][s]}" for s in stages),
        )
        return
    for stage, info in chosen.items():
        plans["steps"][stage] = info["steps"]
        plans.setdefault("overrides", {})[f"steps.{stage}"] = f"budget {budget_minutes:g} min"
    plans["budget"] = {"minutes": budget_minutes, **chosen}
    logger.info(
        "budget %g min: steps %s",
        budget_minutes,
        ", ".join(f"{s} {v['steps']} ({v['step_seconds']:.2f} s/step)" for s, v in chosen.items()),
    )


def _refuse_changed_overrides(plans: dict, overrides, plans_file: Path) -> None:
    """A re-run goes on with the run's plans: a ``--set`` that would change them is refused, not
    silently dropped (the stages already trained were trained on the old values)."""
    from screener_plans.planning.plans import get_key, parse_overrides

    for key, value in parse_overrides(overrides).items():
        try:
            current = get_key(plans, key)
        except KeyError:
            current = None
        if current != value:
            raise ScreenerError(
                f"{plans_file}: the run was planned with {key}={current!r}; --set {key}={value!r} "
                "would not apply to it: plan into a new run folder (or delete plans.json and "
                "what was trained with it)"
            )


def plan_and_train(
    data_dir,
    run_dir,
    budget_minutes: float | None = None,
    device: str = "auto",
    condition: str | None = None,
    density: str | None = None,
    skip_bad: bool = False,
    overrides=None,
    workers: int = 0,
    features: str | None = None,
    intensity_prior=None,
) -> dict:
    """Everything from a folder of CTs to a calibrated, trained run; re-running resumes."""
    from screener_plans.bundle_runner import train_stage
    from screener_plans.data.preprocess import preprocess
    from screener_plans.engines.models import density_config, with_density_choices
    from screener_plans.inference.calibration import calibrate, calibration_is_current
    from screener_plans.planning.planner import plan
    from screener_plans.planning.plans import load_plans, save_plans

    t0 = time.monotonic()
    if budget_minutes and budget_minutes * 60 <= CALIBRATION_RESERVE_S + MIN_TRAINING_S:
        raise ScreenerError(f"--budget-minutes {budget_minutes:g} leaves no time for training (give at least 2)")
    run_dir = Path(run_dir)
    plans_path = plans_file(run_dir)
    if plans_path.exists():
        plans = load_plans(plans_path)
        _refuse_changed_overrides(plans, overrides, plans_path)
        logger.info("using existing %s (delete it to plan again)", plans_path)
    else:
        plans = plan(data_dir, run_dir, device=device, overrides=overrides, skip_bad=skip_bad, workers=workers)
    # validates every choice; a contradictory one (--intensity-prior true with the descriptor
    # alone) fails here, before preprocessing
    plans = with_density_choices(plans, density_config(plans, condition, density, features, intensity_prior))
    summary = preprocess(run_dir, plans=plans, data_dir=data_dir, workers=workers, skip_bad=skip_bad)
    for e in summary["errors"]:
        logger.warning("skipped %s: %s", e["path"], e["problem"])
    stages = stages_for(plans["density"]["condition"], plans["density"]["features"])
    if budget_minutes:
        earlier = plans.get("budget") or {}
        if earlier.get("minutes") == budget_minutes and all(s in earlier for s in stages):
            # a re-run (after Ctrl-C, say) goes on with the first run's schedule, rather than
            # giving the stages left a whole new budget
            logger.info(
                "budget %g min: going on with the steps chosen by the first run (%s)",
                budget_minutes,
                ", ".join(f"{s} {plans['steps'][s]}" for s in stages),
            )
        else:
            _apply_budget(run_dir, plans, stages, budget_minutes, time.monotonic() - t0, device)
    save_plans(plans, plans_path)
    dev = None if device == "auto" else device
    for stage in stages:
        if model_path(run_dir, stage).exists():
            logger.info("%s already trained", stage)
            continue
        train_stage(run_dir, stage, device=dev)
    if not calibration_is_current(run_dir):  # missing, or made with a density trained since
        calibrate(run_dir, plans, device=device)
    elapsed = time.monotonic() - t0
    logger.info("plan-and-train finished in %.1f min: %s", elapsed / 60, run_dir)
    return {"run_dir": str(run_dir), "minutes": elapsed / 60, "stages": stages}
