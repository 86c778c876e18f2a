"""SIGKILL during preprocessing and prediction, and Ctrl-C during multi-process preprocessing:
re-running the same command finishes the job, and nothing half-written is left for a later run
to trip over (training: see test_training)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_ct_folder
from run_utils import make_random_run

from screener_plans.io_utils import temp_prefix

pytestmark = pytest.mark.slow  # trains stages or kills subprocesses

CLI = [sys.executable, "-m", "screener_plans.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    return write_ct_folder(root / "data", 8, (96, 88, 48), (2.0, 2.0, 3.0))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _kill_when(cmd, ready, timeout=180.0):
    """Start ``cmd`` in its own process group; SIGKILL the group once ``ready()`` holds (plus a random delay)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(float(np.random.default_rng().uniform(0.0, 0.3)))
    finished = proc.poll() is not None
    if not finished:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return finished


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


def test_killed_preprocessing_resumes(data, tmp_path):
    from screener_plans.data.preprocess import load_case
    from screener_plans.planning.planner import plan

    runs = {}
    for name in ("killed", "reference"):
        runs[name] = tmp_path / name
        plan(data, runs[name], device="cpu", workers=1, progress=False, overrides={"spacing": [2.5, 2.5, 2.5]})
    cache = runs["killed"] / "preprocessed"
    cmd = CLI + ["preprocess", str(runs["killed"]), "--workers", "1"]
    finished = _kill_when(
        cmd, lambda: cache.is_dir() and len([p for p in cache.iterdir() if not p.name.startswith(".")]) >= 2
    )
    assert not finished, "preprocessing ended before it could be killed"
    # what a kill in the middle of writing a case folder leaves behind
    stale = cache / f"{temp_prefix('case_7', _dead_pid())}abc.tmp"
    stale.mkdir()
    (stale / "image.npy").write_bytes(b"\x93NUMPY half")
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    m = re.search(r"preprocessed (\d+) case\(s\), (\d+) already cached, 0 failed", p.stderr)
    assert m and int(m[2]) >= 2 and int(m[1]) + int(m[2]) == 8, p.stderr
    assert not _temporaries(cache)
    p = subprocess.run(
        CLI + ["preprocess", str(runs["reference"]), "--workers", "1"], env=ENV, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr[-2000:]
    for i in range(8):
        a, ma, _ = load_case(runs["killed"], f"case_{i}", mmap=False)
        b, mb, _ = load_case(runs["reference"], f"case_{i}", mmap=False)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ma, mb)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.parametrize("when", ["early", "starting", "working"])
def test_ctrl_c_stops_worker_processes_at_once(data, tmp_path, when):
    """A terminal's Ctrl-C reaches the whole process group, workers and fork server included:
    the command ends within seconds, says so in one line, and leaves no process behind."""
    from screener_plans.planning.planner import plan

    run = tmp_path / "run"
    plan(data, run, device="cpu", workers=1, progress=False, overrides={"spacing": [2.5, 2.5, 2.5]})
    cache = run / "preprocessed"
    proc = subprocess.Popen(
        CLI + ["preprocess", str(run), "--workers", "2"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    if when != "working":  # while the command or the fork server is still importing modules
        time.sleep(1.0 if when == "early" else 2.5)
    else:
        deadline = time.time() + 120
        while (
            not (cache.is_dir() and any(not p.name.startswith(".") for p in cache.iterdir()))
            and proc.poll() is None
            and time.time() < deadline
        ):
            time.sleep(0.02)
    assert proc.poll() is None, "preprocessing ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.time()
    out, _ = proc.communicate(timeout=30)  # until every process holding its output has ended
    assert time.time() - t0 < 5, f"took {time.time() - t0:.1f} s to stop"
    assert proc.returncode in (130, -signal.SIGINT), out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert "screener: interrupted" in out
    deadline = time.time() + 10
    while _group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _group_alive(proc.pid), "worker processes outlived the command"
    p = subprocess.run(CLI + ["preprocess", str(run), "--workers", "2"], env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert not _temporaries(cache)


def test_killed_prediction_resumes(data, tmp_path):
    from screener_plans.planning.planner import plan

    torch.set_num_threads(1)
    plans = plan(
        data,
        tmp_path / "planned",
        device="cpu",
        workers=1,
        progress=False,
        overrides={"crop_size": [16, 16, 16], "spacing": [4.0, 4.0, 4.0], "inference.sw_batch_size": 8},
    )
    run = make_random_run(tmp_path, plans)
    out, ref = tmp_path / "out", tmp_path / "ref"
    cmd = CLI + ["predict", str(run), str(data), str(out), "--device", "cpu"]
    finished = _kill_when(cmd, lambda: (out / "case_0.png").exists())
    assert not finished, "prediction ended before it could be killed"
    stale = out / f"{temp_prefix('case_5.nii.gz', _dead_pid())}xyz.tmp.nii.gz"
    stale.write_bytes(b"\x1f\x8b half a gzip stream")
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    m = re.search(r"scored (\d+) case\(s\), (\d+) already done", p.stdout + p.stderr)
    assert m and int(m[2]) >= 1 and int(m[1]) + int(m[2]) == 8, p.stdout + p.stderr
    assert not _temporaries(out)
    p = subprocess.run(
        CLI + ["predict", str(run), str(data), str(ref), "--device", "cpu"], env=ENV, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr[-2000:]
    for i in range(8):
        a = np.asarray(nib.load(str(out / f"case_{i}.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(ref / f"case_{i}.nii.gz")).dataobj)
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert (out / f"case_{i}_regions.json").stat().st_size > 0 and (out / f"case_{i}.png").stat().st_size > 0


@pytest.mark.parametrize("raised, logged", [(KeyboardInterrupt, False), ("screener", False), (ValueError, True)])
def test_ignite_error_line_only_for_unexpected_errors(caplog, raised, logged):
    """A Ctrl-C stop and a Screener error (reported in one line) get no Ignite ERROR line."""
    import logging

    from ignite.engine import Engine

    from screener_plans.engines.handlers import quiet_handled_errors
    from screener_plans.errors import ScreenerError

    def step(engine, batch):
        if raised == "screener":
            raise RuntimeError("Failed to evaluate") from ScreenerError("checkpoint of another schedule")
        raise raised("stop")

    engine = Engine(step)
    quiet_handled_errors(engine)
    quiet_handled_errors(engine)  # attached by two handlers: one filter
    assert len(engine.logger.filters) == 1
    with caplog.at_level(logging.ERROR), pytest.raises((KeyboardInterrupt, RuntimeError, ValueError)):
        engine.run([0, 1], max_epochs=1)
    assert any("terminating due to exception" in r.getMessage() for r in caplog.records) == logged
    with caplog.at_level(logging.INFO):  # ResumeHandler says where it resumes; Ignite's "from iteration 0" is noise
        engine.logger.info("Engine run resuming from iteration 0, epoch 0 until 1 epochs")
    assert not any("resuming from iteration" in r.getMessage() for r in caplog.records)
