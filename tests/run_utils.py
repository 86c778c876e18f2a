"""A trained-run layout holding random weights: enough for tests of I/O, zoo and error handling."""

from __future__ import annotations

from pathlib import Path

from screener_plans.engines.untrained import write_untrained_run


def make_random_run(root: Path, plans: dict, condition: str = "masked", density: str = "flow", **options) -> Path:
    """``root/run_<condition>`` with plans, three stages' random weights and a calibration;
    ``options``: ``features``, ``intensity_prior`` (default: the plans')."""
    return write_untrained_run(Path(root) / f"run_{condition}", plans, condition, density, **options)
