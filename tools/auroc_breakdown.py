"""Where a voxel-level AUROC is lost: by lesion kind and by normal tissue (synthetic data).

1 - AUROC is the share of (lesion voxel, normal voxel) pairs ranked the wrong way round (ties
count half). Every wrong pair has one lesion voxel and one normal voxel, so the loss splits
exactly into per-lesion-kind parts (summed over the lesion voxels of that kind) and, the other
way, into per-normal-tissue parts. The synthetic data set knows both for every voxel: each test
scan is regenerated from its phantom seed in ``dataset.json`` and checked against its label file.

    python tools/auroc_breakdown.py DATA PRED_DIR [PRED_DIR ...] --mask-dir BODY_MASKS
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from screener_plans.synthetic.phantoms import LESION_KINDS

KIND_IDS = {kind: i + 1 for i, kind in enumerate(LESION_KINDS)}  # 0: not a lesion


def auroc_breakdown(scores, lesion, lesion_group, normal_group) -> dict:
    """Exact AUROC of ``scores`` (lesion voxels positive) and its loss split by group.

    ``lesion_group`` / ``normal_group`` give each voxel's group label (used on lesion and
    normal voxels respectively). Returns ``auroc``, ``loss_by_lesion`` and ``loss_by_normal``
    (each summing to 1 - AUROC) and ``auroc_without`` (AUROC with one lesion group left out).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    lesion = np.asarray(lesion, dtype=bool).ravel()
    pos, neg = scores[lesion], np.sort(scores[~lesion])
    if not pos.size or not neg.size:
        raise ValueError("auroc_breakdown needs both lesion and normal voxels")
    pairs = float(pos.size) * neg.size

    def below_and_ties(sorted_other, values):  # per value: other voxels below it, and equal to it
        below, not_above = np.searchsorted(sorted_other, values, "left"), np.searchsorted(sorted_other, values, "right")
        return below, not_above - below

    below, ties = below_and_ties(neg, pos)
    wrong_pos = (neg.size - below - ties) + 0.5 * ties  # per lesion voxel: normal voxels above it
    below, ties = below_and_ties(np.sort(pos), scores[~lesion])
    wrong_neg = below + 0.5 * ties  # per normal voxel: lesion voxels below it
    lg = np.asarray(lesion_group).ravel()[lesion]
    ng = np.asarray(normal_group).ravel()[~lesion]
    by_lesion = {g: float(wrong_pos[lg == g].sum() / pairs) for g in np.unique(lg).tolist()}
    by_normal = {g: float(wrong_neg[ng == g].sum() / pairs) for g in np.unique(ng).tolist()}
    without = {}
    for g in by_lesion:
        keep = lg != g
        if keep.any():
            without[g] = float(1.0 - wrong_pos[keep].sum() / (float(keep.sum()) * neg.size))
    return {
        "auroc": float(1.0 - wrong_pos.sum() / pairs),
        "loss_by_lesion": by_lesion,
        "loss_by_normal": by_normal,
        "auroc_without": without,
    }


def voxel_groups(data: Path, entry: dict, label: np.ndarray, family: str = "standard") -> tuple[np.ndarray, np.ndarray]:
    """(lesion kind id, tissue class) of every voxel of test case ``entry``, regenerated from its
    phantom seed; refuses a phantom whose lesions are not the label file's."""
    from screener_plans.synthetic.phantoms import make_phantom

    tries = ({}, {"shape": tuple(entry["shape"]), "spacing": tuple(entry["spacing"])})
    for kwargs in tries:  # default grid first; a data set made with --shape forced its grid
        ph = make_phantom(int(entry["phantom_seed"]), lesions=True, family=family, **kwargs)
        if ph.lesion_mask.shape == label.shape and np.array_equal(ph.lesion_mask > 0, label > 0):
            kinds = np.array([0] + [KIND_IDS[k] for k in ph.lesion_kinds], dtype=np.uint8)
            return kinds[ph.lesion_instances], ph.tissue
    raise ValueError(f"{data}: test case {entry['case']} cannot be regenerated from its phantom seed")


def load_groups(data: Path, mask_dir: Path | None) -> dict:
    """Per test case: label, body mask, lesion-kind and tissue maps (file voxel order)."""
    import nibabel as nib

    meta = json.loads((data / "dataset.json").read_text())
    cases = {}
    for entry in meta["test"]:
        label = np.asarray(nib.load(data / entry["label"]).dataobj) > 0
        body = (
            np.asarray(nib.load(mask_dir / f"{entry['case']}.nii.gz").dataobj) > 0
            if mask_dir
            else np.ones(label.shape, bool)
        )
        kind, tissue = voxel_groups(data, entry, label, meta.get("family", "standard"))
        cases[entry["case"]] = {"label": label[body], "kind": kind[body], "tissue": tissue[body], "body": body}
    return {"cases": cases, "tissue_names": meta["tissue_classes"]}


def breakdown_of(pred_dir: Path, groups: dict) -> dict:
    """``auroc_breakdown`` of one folder of anomaly maps, with kind and tissue names."""
    import nibabel as nib

    parts = {k: [] for k in ("score", "label", "kind", "tissue")}
    for case, g in groups["cases"].items():
        score = np.asarray(nib.load(pred_dir / f"{case}.nii.gz").dataobj, dtype=np.float32)
        parts["score"].append(score[g["body"]])
        for key in ("label", "kind", "tissue"):
            parts[key].append(g[key])
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    out = auroc_breakdown(cat["score"], cat["label"], cat["kind"], cat["tissue"])
    kind_names = {v: k for k, v in KIND_IDS.items()}
    tissue = groups["tissue_names"]
    out["loss_by_lesion"] = {kind_names.get(k, "other"): v for k, v in out["loss_by_lesion"].items()}
    out["auroc_without"] = {kind_names.get(k, "other"): v for k, v in out["auroc_without"].items()}
    out["loss_by_normal"] = {
        tissue.get(str(k), str(k)): v for k, v in sorted(out["loss_by_normal"].items(), key=lambda kv: -kv[1])
    }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="synthetic data set (screener make-synthetic)")
    ap.add_argument("preds", type=Path, nargs="+", help="folders of anomaly maps of its test scans")
    ap.add_argument("--mask-dir", type=Path, default=None, help="body masks: only these voxels count")
    args = ap.parse_args(argv)
    groups = load_groups(args.data, args.mask_dir)
    print(json.dumps({str(p): breakdown_of(p, groups) for p in args.preds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
