"""The bundles' eval_metrics come from the quality benchmark and belong to the planned default."""

import importlib.util
import json
from pathlib import Path

import pytest

from screener_plans.presets import PRESET_PLANS

ROOT = Path(__file__).resolve().parent.parent


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(default="masked_flow_descstructure"):
    row = {
        "metrics": {"auroc": 0.81234, "auroc_fpr03": 0.5, "aupro_fpr03": None},
        "per_kind": {"liver_mass": {"mean_case_auroc": 0.55555, "n_cases": 3}},
        "train_minutes": 29.04,
    }
    return {
        "command": "python tools/bench_quality.py --split dev",
        "plans": {"default": default, "preset": "tiny"},
        "rows": [{"variant": "intensity", **row, "metrics": {"auroc": 0.9}}, {"variant": default, **row}],
    }


def test_the_default_row_is_taken_and_rounded():
    entry = _tool("eval_metrics").entry(_report())
    assert entry["configuration"] == "masked_flow_descstructure"
    assert entry["auroc"] == 0.812 and entry["aupro_fpr03"] is None
    assert entry["mean_case_auroc_by_kind"] == {"liver_mass": 0.556}
    assert entry["train_minutes"] == 29.0


def test_a_report_without_its_default_row_is_refused():
    report = _report()
    report["rows"] = report["rows"][:1]
    with pytest.raises(SystemExit, match="no row for its default"):
        _tool("eval_metrics").entry(report)


@pytest.mark.parametrize("bundle", ["screener_inference", "screener_density"])
def test_shipped_eval_metrics_describe_the_cpu_default(bundle):
    """Changing the tiny default without re-running the benchmark leaves stale figures: caught here."""
    bq = _tool("bench_quality")
    d = PRESET_PLANS["tiny"]["density"]
    default = bq.variant_name(d["condition"], d["kind"], d["features"], d["intensity_prior"])
    metrics = json.loads((ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())["eval_metrics"]
    assert {"dev", "test", "real"} <= set(metrics)
    for name in ("dev", "test", "real"):
        assert metrics[name]["configuration"] == default, name
        assert 0.0 <= metrics[name]["auroc"] <= 1.0
        if "windows_hu" in metrics[name]:  # recorded by benchmark runs since 2026-12-04
            assert metrics[name]["windows_hu"] == PRESET_PLANS["tiny"]["windows_hu"], name
