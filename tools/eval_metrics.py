"""Copy the default configuration's benchmark numbers into the shipped bundles' ``eval_metrics``.

    python tools/eval_metrics.py test=OUT_TEST/quality.json [dev=OUT_DEV/quality.json] [real=...]

Each ``SET=quality.json`` (written by ``tools/bench_quality.py``) replaces that set's entry in
``eval_metrics`` of the inference and density bundles' ``metadata.json``; sets not given keep
their entry. The row taken is the one the run's plans default to, so the numbers always belong
to the configuration ``plan-and-train`` plans.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ("screener_inference", "screener_density")
SETS = {
    "dev": "dev phantoms (standard family, seed 7; every choice is made here)",
    "test": "test phantoms (shifted family, seed 31; never tuned on)",
    "real": "four real CTs with tumour masks, trained on transductively",
}


def entry(report: dict) -> dict:
    """The default row of one quality report: pooled metrics, per-kind AUROC, training minutes."""
    default = report["plans"]["default"]
    row = next((r for r in report["rows"] if r["variant"] == default), None)
    if row is None:
        raise SystemExit(
            f"error: the report has no row for its default configuration {default!r} (run it without --only)"
        )
    return {
        "configuration": default,
        "preset": report["plans"]["preset"],
        **{k: report["plans"][k] for k in ("windows_hu", "smooth_mm") if k in report["plans"]},
        "command": report["command"],
        **{k: None if v is None else round(v, 3) for k, v in row["metrics"].items()},
        "mean_case_auroc_by_kind": {
            k: None if v["mean_case_auroc"] is None else round(v["mean_case_auroc"], 3)
            for k, v in row["per_kind"].items()
        },
        "train_minutes": None if row["train_minutes"] is None else round(row["train_minutes"], 1),
    }


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    updates = {}
    for arg in argv:
        name, sep, path = arg.partition("=")
        if not sep or name not in SETS:
            raise SystemExit(f"error: {arg!r}: expected SET=quality.json with SET one of {', '.join(SETS)}")
        updates[name] = {"data": SETS[name], **entry(json.loads(Path(path).read_text()))}
    for bundle in BUNDLES:
        meta_file = ROOT / "bundles" / bundle / "configs" / "metadata.json"
        meta = json.loads(meta_file.read_text())
        metrics = dict(meta.get("eval_metrics") or {})
        metrics.setdefault(
            "protocol",
            "tools/bench_quality.py (docs/benchmarks.md): voxels inside the body; auroc_fpr03 and aupro_fpr03 "
            "are the areas up to a false-positive rate of 0.3, divided by 0.3; 2 CPU cores",
        )
        metrics.update(updates)
        meta["eval_metrics"] = metrics
        tmp = meta_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=4) + "\n")
        tmp.replace(meta_file)
        print(f"{meta_file.relative_to(ROOT)}: eval_metrics for {', '.join(updates)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
