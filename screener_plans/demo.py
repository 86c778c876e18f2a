"""`screener demo`: the whole product on synthetic CT in one command, within 15 minutes on 2 CPUs.

Synthetic data set -> plan-and-train (time-budgeted) -> predict on held-out labeled scans ->
evaluate inside the body -> a metrics table and the paths of the overlay pictures.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("screener")

DEMO_CASES = 32


def write_body_masks(images_dir: Path, out_dir: Path) -> Path:
    """Body masks of the test scans: metrics are computed inside the body, not over air."""
    import nibabel as nib

    from screener_plans.data.body import body_mask
    from screener_plans.data.geometry import from_ras, to_ras
    from screener_plans.io_utils import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(images_dir.glob("*.nii.gz")):
        target = out_dir / path.name
        if target.exists():
            continue
        img = nib.load(str(path))
        ras, _, ornt = to_ras(np.asarray(img.dataobj, dtype=np.float32), img.affine)
        mask = from_ras(body_mask(ras).astype(np.uint8), ornt)
        with atomic_path(target, suffix=".nii.gz") as tmp:
            nib.save(nib.Nifti1Image(mask, img.affine), tmp)
    return out_dir


def format_table(result: dict) -> str:
    m = result["metrics"]
    rows = ["| metric | value |", "|---|---|"]
    rows += [
        f"| AUROC | {m['auroc']:.3f} |",
        f"| AUROC up to FPR 0.3 | {m['auroc_fpr03']:.3f} |",
        f"| AUPRO up to FPR 0.3 | {m['aupro_fpr03']:.3f} |",
    ]
    return "\n".join(rows)


def run_demo(
    out_dir="screener_demo", budget_minutes: float = 10.5, cases: int | None = None, device: str = "auto"
) -> str:
    """Run the demo end to end in ``out_dir``; returns the report printed to the console."""
    from screener_plans.inference.predict import predict
    from screener_plans.metrics import evaluate
    from screener_plans.pipeline import plan_and_train
    from screener_plans.synthetic.phantoms import make_synthetic_dataset

    t0 = time.monotonic()
    out = Path(out_dir)
    data = out / "data"
    if not (data / "dataset.json").exists():
        make_synthetic_dataset(data, cases=int(cases or DEMO_CASES), seed=0)
    run_dir = out / "run"
    plan_and_train(data / "train", run_dir, budget_minutes=budget_minutes, device=device)
    preds = out / "predictions"
    predict(run_dir, data / "test" / "images", preds, device=device)
    masks = write_body_masks(data / "test" / "images", out / "body_masks")
    result = evaluate(preds, data / "test" / "labels", mask_dir=masks)
    from screener_plans.io_utils import write_json

    write_json(out / "metrics.json", result)
    pictures = sorted(str(p) for p in preds.glob("*.png"))
    minutes = (time.monotonic() - t0) / 60
    lines = [
        f"Screener demo finished in {minutes:.1f} min ({out})",
        "",
        "Voxel-level metrics inside the body on held-out synthetic test scans:",
        format_table(result),
        "",
        f"anomaly maps and regions: {preds}",
        "pictures:",
    ] + [f"  {p}" for p in pictures]
    lines += ["", f"metrics (with per-case numbers): {out / 'metrics.json'}"]
    return "\n".join(lines)


def load_metrics(out_dir) -> dict:
    return json.loads((Path(out_dir) / "metrics.json").read_text())
