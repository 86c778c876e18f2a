"""A wheel carries the bundles: built from the sources, installed into a fresh virtual
environment outside the checkout, it plans, trains and predicts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUICK_PLAN_AND_TRAIN

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "screener_plans", "bundles")


def _run(cmd, cwd, env=None):
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=env)
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.mark.slow
def test_wheel_installs_with_its_bundles_and_runs(ct_folder, tmp_path):
    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", src],
        cwd=tmp_path,
    )
    wheel = next((tmp_path / "dist").glob("screener-*.whl"))
    # the dependencies (torch, monai, ...) come from this interpreter; screener only from the wheel
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--no-deps", "-q", wheel], cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SCREENER_BUNDLES", "PYTHONPATH")}
    where = _run([python, "-c", "import screener_plans; print(screener_plans.__file__)"], cwd=work, env=env)
    assert str(venv) in where, where
    screener = venv / "bin" / "screener"
    bundles = Path(_run([screener, "bundles"], cwd=work, env=env).strip())
    assert str(venv) in str(bundles) and (bundles / "screener_density" / "configs" / "train.yaml").is_file()

    run = work / "run"
    _run(
        [
            screener,
            "plan-and-train",
            ct_folder,
            run,
            *QUICK_PLAN_AND_TRAIN,
        ],
        cwd=work,
        env=env,
    )
    for stage in ("condition", "density"):  # the shipped bundle configs trained both stages, and both learned
        log = [json.loads(line) for line in (run / stage / "logs" / "train_log.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == 40 and log[-1]["loss"] < log[0]["loss"], (stage, log)
    out = work / "pred"
    _run([screener, "predict", run, ct_folder / "case_0.nii.gz", out, "--device", "cpu"], cwd=work, env=env)
    assert (out / "case_0.nii.gz").is_file()
    # the shipped inference bundle, through MONAI's runner, from the installed package
    out2 = work / "pred_bundle"
    _run(
        [
            python,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            bundles / "screener_inference" / "configs" / "inference.yaml",
            "--run_dir",
            run,
            "--input",
            ct_folder / "case_1.nii.gz",
            "--output_dir",
            out2,
        ],
        cwd=work,
        env=env,
    )
    assert (out2 / "case_1.nii.gz").is_file()
