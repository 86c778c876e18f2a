import io
import logging
import subprocess
import sys

import pytest
from conftest import QUICK_PLAN_AND_TRAIN

from screener_plans.cli import main


def _run(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    "setup,needle",
    [
        ("missing", "data folder does not exist"),
        ("empty", "no images found"),
        ("junk", "unsupported format"),
        ("corrupt", "corrupt or truncated"),
    ],
)
def test_plan_errors_are_one_line(tmp_path, capsys, setup, needle):
    data = tmp_path / "data"
    if setup != "missing":
        data.mkdir()
    if setup == "junk":
        (data / "scan.bmp").write_bytes(b"BM....")
    if setup == "corrupt":
        from conftest import ras_affine, simple_ct, write_nifti

        write_nifti(data / "scan.nii.gz", simple_ct((24, 24, 12)), ras_affine())
        raw = (data / "scan.nii.gz").read_bytes()
        (data / "scan.nii.gz").write_bytes(raw[: len(raw) // 2])
    code, err = _run(["plan", str(data), str(tmp_path / "run")], capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("screener: error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "plans.json").exists()
    # the run folder it created is gone, unless it holds the fingerprint cache of a case it read
    left = (
        sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "run").rglob("*"))
        if (tmp_path / "run").exists()
        else None
    )
    if setup == "corrupt":
        assert left and all(p.startswith("run/.cache") for p in left), left
    else:
        assert left is None, f"a refused plan left {left} behind"


def test_unwritable_run_dir(ct_folder, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _run(["plan", str(ct_folder), str(blocker / "run")], capsys)
    assert code == 2 and "cannot create folder" in err and str(blocker) in err


def test_each_call_logs_to_its_own_stderr(tmp_path, monkeypatch):
    """main() called twice in one process (a notebook, a script): each call's log messages reach
    the sys.stderr of that call, and the root logger is left as it was found."""
    import numpy as np
    from conftest import ras_affine, write_nifti

    for sub, arr in (
        ("pred", np.linspace(0, 1, 512, dtype=np.float32)),
        ("labels", (np.arange(512) % 7 == 0).astype(np.uint8)),
    ):
        (tmp_path / sub).mkdir()
        write_nifti(tmp_path / sub / "case.nii.gz", arr.reshape(8, 8, 8), ras_affine(), dtype=arr.dtype)
    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    for _ in range(2):
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "labels")]) == 0
        assert "evaluated case:" in stream.getvalue(), stream.getvalue()
        stream.close()  # as pytest closes a finished test's capture
    assert (root.handlers, root.level) == before


def test_preprocess_without_plans(tmp_path, capsys):
    code, err = _run(["preprocess", str(tmp_path)], capsys)
    assert code == 2 and "plans file not found" in err


@pytest.mark.slow
def test_console_script_plans_and_preprocesses(ct_folder, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "screener_plans.cli"]
    p = subprocess.run(
        cmd
        + [
            "plan",
            str(ct_folder),
            str(run),
            "--device",
            "cpu",
            "--workers",
            "1",
            "--set",
            "steps.density=5",
            "--set",
            "seed=3",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert "planned 4 cases" in p.stderr
    import json

    plans = json.loads((run / "plans.json").read_text())
    assert plans["steps"]["density"] == 5 and plans["seed"] == 3
    p = subprocess.run(cmd + ["preprocess", str(run), "--workers", "1"], capture_output=True, text=True)
    assert p.returncode == 0 and "preprocessed 4 case(s)" in p.stderr, p.stderr
    p = subprocess.run(cmd + ["plan", str(tmp_path / "nope"), str(run)], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "does not exist" in p.stderr


@pytest.mark.slow
def test_plan_and_train_trains_what_the_density_needs_and_resumes(ct_folder, tmp_path):
    """`screener plan-and-train` in one line: CT intensity + prior given the masked condition
    trains condition and density only, both learn, it calibrates, and a re-run resumes."""
    import json

    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "screener_plans.cli",
        "plan-and-train",
        str(ct_folder),
        str(run),
        *QUICK_PLAN_AND_TRAIN,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not (run / "descriptor").exists()
    for stage in ("condition", "density"):
        assert (run / stage / "models" / "model.pt").exists()
        log = [json.loads(line) for line in (run / stage / "logs" / "train_log.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == 40 and log[-1]["loss"] < log[0]["loss"], (stage, log)
    cfg = json.loads((run / "density" / "models" / "density_config.json").read_text())
    assert (cfg["features"], cfg["intensity_prior"], cfg["condition"]) == ("intensity", True, "masked")
    assert json.loads((run / "calibration.json").read_text())["threshold"] > 0
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0 and "condition already trained" in p.stderr and "density already trained" in p.stderr
    bad_cmd = [str(tmp_path / "run2") if c == str(run) else "descriptor" if c == "intensity" else c for c in cmd]
    bad = subprocess.run(bad_cmd, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "needs the CT intensity among the scored features" in bad.stderr
    assert not (tmp_path / "run2" / "preprocessed").exists()  # refused before any work


def test_unknown_option_is_refused_before_the_command_runs(tmp_path, capsys):
    """Fire would run `calibrate` (rewriting calibration.json) and only then complain."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "calibration.json").write_text('{"threshold": 1.0}')
    code, err = _run(["calibrate", str(run), "--max-case", "3"], capsys)
    assert code == 2 and "unknown option --max-case for `screener calibrate`" in err and "--max-cases" in err
    assert (run / "calibration.json").read_text() == '{"threshold": 1.0}'
    code, err = _run(["zoo", "export", str(run), "--device", "gpu"], capsys)
    assert code == 2 and "unknown option --device for `screener zoo export`" in err
    assert not (run / "models").exists()
    code, err = _run(
        ["predict", str(run), str(run), str(tmp_path / "out"), "--overwrite=true", "--nooverwrite"], capsys
    )
    assert "unknown option" not in err  # --flag=value and fire's --noflag are known spellings


@pytest.mark.parametrize(
    "args,message",
    [
        (["make-synthetic", "{tmp}/syn", "--cases", "abc"], "--cases must be an integer, got 'abc'"),
        (["plan", "{tmp}", "{tmp}/run", "--memory-gb", "-4"], "--memory-gb must be a number > 0, got -4"),
        (["plan", "{tmp}", "{tmp}/run", "--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["plan-and-train", "{tmp}", "{tmp}/run", "--budget-minutes", "abc"], "--budget-minutes must be a number"),
        (["plan-and-train", "{tmp}", "{tmp}/run", "--budget-minutes", "1"], "leaves no time for training"),
        (["calibrate", "{tmp}/run", "--max-cases", "0"], "--max-cases must be an integer >= 1, got 0"),
    ],
)
def test_option_values_are_checked_before_any_work(tmp_path, capsys, args, message):
    code, err = _run([a.format(tmp=tmp_path) for a in args], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert sorted(tmp_path.iterdir()) == []  # nothing written, not even a run folder


def test_version(capsys):
    import screener_plans

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"screener {screener_plans.__version__} (MONAI ")
