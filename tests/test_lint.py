"""The code stays ruff-clean (lint and format, configured in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PATHS = ["screener_plans", "tests", "tools", "setup.py"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_is_clean(command):
    pytest.importorskip("ruff", reason="ruff is in the dev extra: pip install -e '.[dev]'")
    p = subprocess.run([sys.executable, "-m", "ruff", *command, *PATHS], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-1000:]
