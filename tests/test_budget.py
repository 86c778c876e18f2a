"""`plan-and-train --budget-minutes`: steps from measured step times, kept by a re-run."""

from __future__ import annotations

import json
import logging

import pytest

import screener_plans.bundle_runner as bundle_runner
import screener_plans.inference.calibration as calibration_module
import screener_plans.pipeline as pipeline


@pytest.fixture
def fake_training(monkeypatch):
    """Training and calibration replaced by file writes; step-time measurement recorded."""
    measured, trained = [], []
    state = {"interrupt_at": None}

    def budget_steps(run_dir, plans, stages, seconds_left, device):
        todo = [s for s in stages if not pipeline.stage_started(run_dir, s)]
        measured.append(todo)
        return {s: {"steps": int(seconds_left // 10), "step_seconds": 0.5} for s in todo}

    def train_stage(run_dir, stage, **kwargs):
        (run_dir / stage / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / stage / "checkpoints" / "checkpoint_00000001.pt").write_bytes(b"x")
        if stage == state["interrupt_at"]:
            state["interrupt_at"] = None
            raise KeyboardInterrupt(f"stopped at step 1 of {stage}")
        (run_dir / stage / "models").mkdir(parents=True, exist_ok=True)
        (run_dir / stage / "models" / "model.pt").write_bytes(b"x")
        trained.append(stage)

    def calibrate(run_dir, plans=None, **kwargs):
        (run_dir / "calibration.json").write_text(json.dumps({"threshold": 1.0}))

    monkeypatch.setattr(pipeline, "budget_steps", budget_steps)
    monkeypatch.setattr(bundle_runner, "train_stage", train_stage)
    monkeypatch.setattr(calibration_module, "calibrate", calibrate)
    return measured, trained, state


def _steps(run):
    plans = json.loads((run / "plans.json").read_text())
    return {s: plans["steps"][s] for s in ("condition", "density")}


def test_rerun_goes_on_with_the_first_runs_schedule(ct_folder, tmp_path, fake_training, caplog):
    measured, trained, state = fake_training
    run = tmp_path / "run"
    # a two-stage configuration (condition, then density), so that one stage is left to resume
    kwargs = dict(
        device="cpu",
        workers=1,
        overrides=["crop_size=[16,16,16]", "spacing=[3.0,3.0,3.0]"],
        condition="masked",
        density="gaussian",
        features="intensity",
    )
    state["interrupt_at"] = "density"  # Ctrl-C during the last stage
    with pytest.raises(KeyboardInterrupt):
        pipeline.plan_and_train(ct_folder, run, budget_minutes=5, **kwargs)
    assert measured == [["condition", "density"]] and trained == ["condition"]
    first = _steps(run)
    assert first["condition"] > 0 and first["density"] > 0
    with caplog.at_level(logging.INFO, logger="screener"):
        pipeline.plan_and_train(ct_folder, run, budget_minutes=5, **kwargs)
    assert measured == [["condition", "density"]]  # nothing measured again, no fresh budget
    assert _steps(run) == first and trained == ["condition", "density"]
    assert "going on with the steps chosen by the first run" in caplog.text
    # another budget on a finished run: nothing to set, and it says so
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="screener"):
        pipeline.plan_and_train(ct_folder, run, budget_minutes=9, **kwargs)
    assert "budget 9 min not applied: every stage was trained or started" in caplog.text
    assert _steps(run) == first


def test_budget_keeps_the_plans_proportions_for_a_slow_density():
    # a flow density on descriptor features is several times slower per step than the SSL stages
    planned = {"descriptor": 900, "condition": 500, "density": 300}
    seconds = {"descriptor": 0.8, "condition": 0.7, "density": 4.7}
    chosen = pipeline.scale_steps(planned, seconds, 600.0)
    spent = sum(chosen[s]["steps"] * seconds[s] for s in planned) + pipeline.STAGE_OVERHEAD_S * 3
    assert spent <= 600.0
    assert spent > 0.97 * 600.0  # the budget is used, not left idle
    ratios = [chosen[s]["steps"] / planned[s] for s in planned]
    assert max(ratios) - min(ratios) < 0.02  # one factor for every stage
    # the density gets the plan's share of the time (here 59%), not a fixed quarter
    assert chosen["density"]["steps"] * seconds["density"] > 0.5 * 600.0
    # at least 20 steps per stage, however short the budget
    assert all(v["steps"] >= 20 for v in pipeline.scale_steps(planned, seconds, 40.0).values())
