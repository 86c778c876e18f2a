"""Numerical failure, compatibility and reproducibility."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from screener_plans.engines.steps import NonFiniteGuard, optimizer_step
from screener_plans.errors import ScreenerError


def _model_and_optim():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=100)
    return model, opt, sched


def test_non_finite_loss_skips_step_and_lowers_lr(caplog):
    model, opt, sched = _model_and_optim()
    guard = NonFiniteGuard(patience=3, factor=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    lr0 = opt.param_groups[0]["lr"]
    loss = model(torch.ones(2, 4)).sum() * float("nan")
    with caplog.at_level("WARNING"):
        assert optimizer_step(loss, opt, model.parameters(), 1.0, guard=guard, step=5) is False
    assert "non-finite loss" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 * 0.5)
    sched.step()  # the one-cycle schedule keeps the lowered scale
    assert opt.param_groups[0]["max_lr"] == pytest.approx(0.5e-2)
    good = model(torch.ones(2, 4)).sum()
    assert optimizer_step(good, opt, model.parameters(), 1.0, guard=guard, step=6) is True
    assert guard.consecutive == 0 and guard.total == 1


def test_unrecoverable_divergence_stops_with_a_clear_message():
    model, opt, _ = _model_and_optim()
    guard = NonFiniteGuard(patience=3)
    inf = model(torch.ones(1, 4)).sum() * float("inf")
    optimizer_step(inf, opt, model.parameters(), 1.0, guard=guard, step=1)
    optimizer_step(inf, opt, model.parameters(), 1.0, guard=guard, step=2)
    with pytest.raises(ScreenerError, match="training diverged.*last good checkpoint is kept"):
        optimizer_step(inf, opt, model.parameters(), 1.0, guard=guard, step=3)


def test_guard_state_round_trips():
    g = NonFiniteGuard()
    g.total, g.lr_scale = 4, 0.25
    h = NonFiniteGuard()
    h.load_state_dict(g.state_dict())
    assert (h.total, h.lr_scale) == (4, 0.25)


def test_plans_from_another_schema_version_are_refused(tmp_path):
    from screener_plans.planning.plans import load_plans

    (tmp_path / "plans.json").write_text(json.dumps({"schema_version": 7}))
    with pytest.raises(ScreenerError, match=r"schema version 7 is not supported.*reads version\(s\) 1"):
        load_plans(tmp_path / "plans.json")
    (tmp_path / "plans.json").write_text("{not json")
    with pytest.raises(ScreenerError, match="not valid JSON"):
        load_plans(tmp_path / "plans.json")


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["screener_descriptor", "screener_density"])
def test_monai_bundle_run_reports_a_screener_error_in_one_line(tmp_path, bundle):
    """MONAI wraps a config expression's error in two tracebacks; the bundles print the problem."""
    import subprocess
    import sys

    from screener_plans.bundle_runner import bundle_dir

    (tmp_path / "plans.json").write_text(json.dumps({"schema_version": 7}))
    configs = bundle_dir(bundle) / "configs"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(configs / "train.yaml"),
            "--meta_file",
            str(configs / "metadata.json"),
            "--plans_file",
            str(tmp_path / "plans.json"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert f"screener: error: {tmp_path / 'plans.json'}: plans schema version 7 is not supported" in p.stderr


def test_incompatible_model_is_refused(tmp_path, ct_folder):
    from screener_plans.engines.models import load_stage_network
    from screener_plans.planning.planner import plan

    plans = plan(ct_folder, tmp_path / "run", device="cpu", workers=1, progress=False)
    path = tmp_path / "run" / "descriptor" / "models" / "model.pt"
    path.parent.mkdir(parents=True)
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ScreenerError, match="does not match plans.json"):
        load_stage_network(tmp_path / "run", plans, "descriptor")
    path.write_bytes(b"garbage")
    with pytest.raises(ScreenerError, match="corrupt or not a Screener model"):
        load_stage_network(tmp_path / "run", plans, "descriptor")
    path.unlink()
    with pytest.raises(ScreenerError, match="train it first"):
        load_stage_network(tmp_path / "run", plans, "descriptor")


def test_same_seed_same_plans_and_first_losses(ct_folder, tmp_path):
    from screener_plans.data.dataset import PairDataset
    from screener_plans.data.preprocess import preprocess
    from screener_plans.engines.ssl import SSLModel, build_ssl_head, build_ssl_loss, build_stage_network
    from screener_plans.planning.planner import plan

    small = ["crop_size=[16, 16, 16]", "pairs_per_crop=64"]
    a = plan(ct_folder, tmp_path / "a", device="cpu", memory_gb=4, overrides=small, workers=1, progress=False)
    b = plan(ct_folder, tmp_path / "b", device="cpu", memory_gb=4, overrides=small, workers=2, progress=False)
    assert a == b
    preprocess(tmp_path / "a", plans=a, workers=1, progress=False)

    def first_losses():
        from monai.utils import set_determinism

        set_determinism(seed=a["seed"])
        model = SSLModel(build_stage_network(a, "descriptor"), build_ssl_head(a, "descriptor"))
        opt = torch.optim.AdamW(model.parameters(), lr=a["optim"]["lr"])
        loss_fn = build_ssl_loss(a)
        data = PairDataset(tmp_path / "a", a, length=6, stage="descriptor")
        out = []
        for step in range(3):
            items = [data[step * 2 + j] for j in range(2)]
            z1, z2 = model(torch.stack([i["crops"] for i in items]), torch.stack([i["positions"] for i in items]))
            loss = loss_fn(z1, z2)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(float(loss))
        set_determinism(seed=None)
        return out

    first, second = first_losses(), first_losses()
    np.testing.assert_allclose(first, second, rtol=1e-5)


@pytest.mark.parametrize("where", ["in_step", "between_steps"])
def test_ctrl_c_finishes_the_step_then_saves(tmp_path, where):
    """SIGINT during a step lets the step finish; while waiting for data it saves at once. Either
    way the checkpoint holds whole steps only, and the caller's SIGINT handler comes back."""
    import os
    import signal

    from ignite.engine import Engine

    from screener_plans.engines.handlers import CheckpointHandler

    model = torch.nn.Linear(2, 1)
    steps_done = []

    def batches():
        for i in range(1, 100):
            if where == "between_steps" and i == 6:
                os.kill(os.getpid(), signal.SIGINT)  # while the engine waits for batch 6
            yield i

    def step(engine, batch):
        if where == "in_step" and engine.state.iteration == 4:
            os.kill(os.getpid(), signal.SIGINT)
        with torch.no_grad():
            model.bias += 1.0
        steps_done.append(engine.state.iteration)

    engine = Engine(step)
    CheckpointHandler(str(tmp_path), {"model": model}, every=1000).attach(engine)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="stopped at step"):
        engine.run(batches(), max_epochs=1, epoch_length=50)
    stop = 4 if where == "in_step" else 5
    assert steps_done == list(range(1, stop + 1))  # the interrupted step ran to its end; no more
    saved = torch.load(tmp_path / f"checkpoint_{stop:08d}.pt", weights_only=False)
    assert saved["trainer"]["iteration"] == stop
    assert float(saved["model"]["bias"]) == pytest.approx(float(model.bias.detach()))
    assert signal.getsignal(signal.SIGINT) is before


def _one_cycle_run(save_dir, steps: int, resume, width: int = 2):
    """A tiny Ignite training of ``steps`` steps with the stages' handlers and a one-cycle schedule."""
    from ignite.engine import Engine, Events

    from screener_plans.engines.handlers import CheckpointHandler, ResumeHandler

    model = torch.nn.Linear(width, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=max(3, steps))

    def step(engine, batch):
        opt.zero_grad()
        model(torch.ones(1, width)).sum().backward()
        opt.step()

    engine = Engine(step)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: sched.step())
    objects = {"model": model, "optimizer": opt, "lr_scheduler": sched}
    ResumeHandler(str(save_dir), objects, enabled=resume).attach(engine)
    CheckpointHandler(str(save_dir), objects, every=5).attach(engine)
    engine.run(range(steps), max_epochs=1, epoch_length=steps)
    return engine


def test_resume_refuses_another_schedule_length_and_false_starts_over(tmp_path):
    """A finished 10-step stage asked for 20 steps: one line saying what to do, not PyTorch's
    "Tried to step 11 times"; ``resume "false"`` (text, as from a shell) starts over and drops the
    old run's checkpoints, so the next resume does not pick them up."""
    _one_cycle_run(tmp_path, 10, resume=True)
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == [
        "checkpoint_00000005.pt",
        "checkpoint_00000010.pt",
    ]
    with pytest.raises(ScreenerError, match=r"10-step learning-rate schedule .* asks for 20 steps.*--resume false"):
        _one_cycle_run(tmp_path, 20, resume="true")
    engine = _one_cycle_run(tmp_path, 4, resume="false")
    assert engine.state.iteration == 4
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_00000004.pt"]
    assert _one_cycle_run(tmp_path, 4, resume=True).state.iteration == 4  # resumes its own run


def test_resume_names_the_mismatch_and_the_remedy(tmp_path):
    _one_cycle_run(tmp_path, 5, resume=True)
    with pytest.raises(
        ScreenerError,
        match=r"does not match this model/plans \(size mismatch for weight.*\); "
        r"train from scratch with --resume false",
    ):
        _one_cycle_run(tmp_path, 5, resume=True, width=3)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("false", False),
        ("False", False),
        ("no", False),
        ("0", False),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        (1, True),
    ],
)
def test_yes_no_options_read_as_text(text, expected):
    from screener_plans.options import as_bool

    assert as_bool(text, "resume") is expected


def test_yes_no_option_refuses_anything_else():
    from screener_plans.options import as_bool

    with pytest.raises(ScreenerError, match=r"--skip-bad must be true or false, got 'maybe'"):
        as_bool("maybe", "skip-bad")


def test_bundle_step_and_worker_counts_are_checked():
    from screener_plans.engines.bundle import loader_workers, total_steps

    plans = {"steps": {"condition": 800}}
    with pytest.raises(ScreenerError, match=r"--max_steps must be an integer >= 1, got 0"):
        total_steps(plans, "condition", 0)
    with pytest.raises(ScreenerError, match=r"--max_steps must be an integer, got '2.5'"):
        total_steps(plans, "condition", "2.5")  # was cut to 2 steps
    assert total_steps(plans, "condition", None) == 800 and total_steps(plans, "condition", "30") == 30
    with pytest.raises(ScreenerError, match=r"--num_workers must be an integer, got 'abc'"):
        loader_workers(torch.device("cpu"), "abc")  # was a traceback
    assert loader_workers(torch.device("cpu"), 0) == 0
