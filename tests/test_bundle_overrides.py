"""A misspelled override on `python -m monai.bundle run` is refused before anything runs."""

import subprocess
import sys
from pathlib import Path

import pytest

from screener_plans.bundle_overrides import refuse_unknown_overrides, unknown_overrides

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
TRAIN = str(BUNDLES / "screener_condition" / "configs" / "train.yaml")
MULTI = str(BUNDLES / "screener_condition" / "configs" / "multi_gpu_train.yaml")


@pytest.mark.parametrize(
    "argv",
    [
        ["--config_file", TRAIN, "--plans_file", "p.json", "--max_steps", "3", "--device", "cpu"],
        ["--config_file", TRAIN, "--plans-file", "p.json", "--output-dir=o", "--resume", "false"],  # fire's spellings
        ["--config_file", f"['{TRAIN}','{MULTI}']", "--meta_file", "m.json", "--run_id", "run"],  # MONAI's own
        ["--config_file", TRAIN, "--network_def#stage", "x", "--_meta_#version", "1"],  # nested ids
    ],
)
def test_known_overrides_pass(argv):
    assert unknown_overrides(argv) == []


@pytest.mark.parametrize("config_file", [TRAIN, f"['{TRAIN}','{MULTI}']", f"{TRAIN},{MULTI}"])
def test_misspelled_override_is_named_with_its_likely_meaning(config_file):
    found = unknown_overrides(["--config_file", config_file, "--plans_file", "p.json", "--max_step", "3"])
    assert [(key, close) for key, close, _ in found] == [("max_step", ["max_steps"])]
    assert "max_steps" in found[0][2] and "network_def" not in found[0][2]  # settings, not components


def test_only_monai_bundle_commands_are_checked():
    refuse_unknown_overrides(["screener", "train", "--config_file", TRAIN, "--max_step", "3"])  # not ours to check
    main = str(Path("site-packages") / "monai" / "bundle" / "__main__.py")
    refuse_unknown_overrides(
        [main, "verify_net_in_out", "network_def", "--config_file", TRAIN, "--p", "2", "--plans_file", "p.json"]
    )  # verify_net_in_out's own arguments pass
    with pytest.raises(SystemExit):
        refuse_unknown_overrides(
            [main, "verify_net_in_out", "network_def", "--config_file", TRAIN, "--plans_fil", "p.json"]
        )


@pytest.mark.slow
def test_bundle_run_with_a_misspelled_override_stops_with_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            TRAIN,
            "--plans_file",
            str(tmp_path / "plans.json"),
            "--max_step",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [errors[0]] and "--max_step is not a setting" in errors[0] and "--max_steps?" in errors[0]
    assert "Traceback" not in proc.stderr and "plans file not found" not in proc.stderr  # stopped first
