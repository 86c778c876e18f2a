"""Evaluate a folder of anomaly maps against a folder of ground-truth masks."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np

from screener_plans.errors import BadCaseError, ScreenerError
from screener_plans.metrics.accumulator import VoxelMetricAccumulator
from screener_plans.metrics.binning import DEFAULT_BINS, ScoreRange

logger = logging.getLogger(__name__)

_SUFFIXES = (".nii.gz", ".nii")


def _nifti_cases(folder: Path, what: str) -> dict[str, Path]:
    """``{case: path}`` for every ``<case>.nii.gz`` / ``<case>.nii`` directly inside ``folder``."""
    if folder.is_file():
        raise ScreenerError(f"{folder}: is a file; give the folder of {what} files (<case>.nii.gz)")
    if not folder.is_dir():
        raise ScreenerError(f"{folder}: {what} folder does not exist")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in _SUFFIXES if path.name.endswith(s)), None)
        if suffix is None or path.name.startswith(".") or path.is_dir():
            continue
        if not path.is_file():
            raise BadCaseError(path, "cannot be read (a broken link or not a regular file)")
        case = path.name[: -len(suffix)]
        if case in cases:
            raise ScreenerError(f"{folder}: {what} for case '{case}' exists twice ({cases[case].name} and {path.name})")
        cases[case] = path
    if not cases:
        raise ScreenerError(f"{folder}: no {what} files (*.nii.gz or *.nii)")
    return cases


def _spatial_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:  # (X, Y, Z, 1) maps are common
        shape = shape[:-1]
    return shape


def _open(path: Path):
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for broken files
        raise BadCaseError(path, f"cannot read NIfTI ({exc})") from None


def _load(path: Path) -> np.ndarray:
    img = _open(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise BadCaseError(path, f"cannot read image data ({exc})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.dtype.kind not in "fiub":
        raise BadCaseError(path, f"image data must be numeric, got dtype {data.dtype}")
    return data


def _load_label(path: Path) -> np.ndarray:
    """A label map: non-negative integers (0 normal, > 0 lesion); anything else is refused."""
    data = _load(path)
    if data.size and (float(data.min()) < 0 or not np.array_equal(data, np.round(data))):
        raise BadCaseError(
            path,
            f"not a label mask (values from {float(data.min()):g} to {float(data.max()):g}; "
            "expected 0 for normal and positive integers for lesions)",
        )
    return data


def _check_shapes(pred: Path, label: Path, mask: Path | None) -> None:
    label_img = _open(label)
    pred_img = _open(pred)
    pairs = [(pred, pred_img)] + ([(mask, _open(mask))] if mask is not None else [])
    for path, img in pairs:
        if _spatial_shape(img.shape) != _spatial_shape(label_img.shape):
            raise ScreenerError(
                f"shape mismatch: {path} has shape {tuple(img.shape)} but {label} has shape {tuple(label_img.shape)}"
            )
    if not np.allclose(pred_img.affine, label_img.affine, atol=1e-3):
        logger.warning("%s and %s have different affines; comparing voxel by voxel", pred, label)


def _refuse_ct_volume(pred: Path, case: str, scores: np.ndarray) -> None:
    """A folder of CT scans passed as predictions would give plausible-looking numbers."""
    if (pred.parent / f"{case}_regions.json").exists() or not scores.size:
        return  # written by `screener predict`
    low, high = float(scores.min()), float(scores.max())
    if low <= -900 and high >= 100:
        raise ScreenerError(
            f"{pred}: looks like a CT scan, not an anomaly map (values from {low:g} to "
            f"{high:g}, like Hounsfield units); pass the folder `screener predict` wrote"
        )


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _summary(acc: VoxelMetricAccumulator) -> dict:
    result = {key: _number(value) for key, value in acc.compute().items()}
    # n_lesions: the labelled lesions (connected regions of the label masks); n_regions is the
    # same number under its first name, kept for scripts that read it
    result.update(
        n_regions=acc.n_regions,
        n_lesions=acc.n_regions,
        n_voxels=acc.n_positive + acc.n_negative,
        n_positive=acc.n_positive,
    )
    reason = acc.undefined_reason()
    if reason is not None:
        result["note"] = reason
    return result


def evaluate(pred_dir, labels_dir, mask_dir=None, bins: int = DEFAULT_BINS, only_predicted: bool = False) -> dict:
    """Voxel AUROC, AUROC up to FPR 0.3 and AUPRO up to FPR 0.3 of anomaly maps.

    Pairs ``pred_dir/<case>.nii[.gz]`` with every ``labels_dir/<case>.nii[.gz]`` (label > 0 is
    anomalous) and, if given, ``mask_dir/<case>.nii[.gz]`` (only voxels with mask > 0 count).
    A label without a map is an error, unless ``only_predicted``; maps without a label are not
    evaluated (both are named in a warning). Two passes over the predictions: the first finds
    the pooled score range and bulk for the bins, the second fills one accumulator per case,
    each merged into the pooled one. Returns ``{"metrics": pooled, "cases": {case: metrics,
    n_regions, n_lesions, n_voxels, n_positive[, note]}, "n_cases", "unlabelled_predictions",
    "unpredicted_labels", "n_voxels", "n_positive", "n_regions", "n_lesions", "binning":
    {"bins", "error_bound"}}``; undefined per-case metrics are None.
    """
    pred_dir, labels_dir = Path(pred_dir), Path(labels_dir)
    labels = _nifti_cases(labels_dir, "label")
    preds = _nifti_cases(pred_dir, "prediction")
    masks = _nifti_cases(Path(mask_dir), "mask") if mask_dir is not None else None
    cases = []
    unpredicted = sorted(set(labels) - set(preds)) if only_predicted else []
    if unpredicted:
        logger.warning(
            "%d of %d labelled cases have no map in %s and are not evaluated: %s%s",
            len(unpredicted),
            len(labels),
            pred_dir,
            ", ".join(unpredicted[:5]),
            ", ..." if len(unpredicted) > 5 else "",
        )
        if len(unpredicted) == len(labels):
            raise ScreenerError(f"{pred_dir}: no map for any labelled case of {labels_dir}")
    for case, label in labels.items():
        if case in unpredicted:
            continue
        if case not in preds:
            raise ScreenerError(
                f"{label}: no prediction {pred_dir / (case + '.nii.gz')} (pass --only-predicted "
                "true to evaluate the cases that have one)"
            )
        if masks is not None and case not in masks:
            raise ScreenerError(f"{label}: no evaluation mask {Path(mask_dir) / (case + '.nii.gz')}")
        cases.append((case, preds[case], label, None if masks is None else masks[case]))
    unlabelled = sorted(set(preds) - set(labels))
    if unlabelled:  # a label missing for a prediction is easy to miss in the pooled numbers
        logger.warning(
            "%d of %d predictions in %s have no label in %s and are not evaluated: %s%s",
            len(unlabelled),
            len(preds),
            pred_dir,
            labels_dir,
            ", ".join(unlabelled[:5]),
            ", ..." if len(unlabelled) > 5 else "",
        )

    score_range = ScoreRange()
    for case, pred, label, mask in cases:
        _check_shapes(pred, label, mask)
        scores = _load(pred)
        _refuse_ct_volume(pred, case, scores)
        if mask is not None:
            scores = scores[_load(mask) > 0]
        try:
            score_range.update(scores)
        except ScreenerError as exc:
            raise BadCaseError(pred, str(exc)) from None
        del scores

    pooled = VoxelMetricAccumulator.from_binning(score_range.binning(bins))
    per_case = {}
    for case, pred, label, mask in cases:
        acc = pooled.empty_like()
        try:
            acc.update(_load(pred), _load_label(label), None if mask is None else _load(mask))
        except BadCaseError:
            raise
        except ScreenerError as exc:
            raise BadCaseError(pred, str(exc)) from None
        per_case[case] = _summary(acc)
        pooled.merge(acc)
        logger.info("evaluated %s: %s", case, per_case[case])

    reason = pooled.undefined_reason()
    if reason is not None:
        raise ScreenerError(f"{labels_dir}: cannot evaluate, {reason} in any case")
    result = _summary(pooled)
    return {
        "metrics": {key: result[key] for key in ("auroc", "auroc_fpr03", "aupro_fpr03")},
        "cases": per_case,
        "n_cases": len(per_case),
        "unlabelled_predictions": unlabelled,
        "unpredicted_labels": unpredicted,
        "n_voxels": result["n_voxels"],
        "n_positive": result["n_positive"],
        "n_regions": result["n_regions"],
        "n_lesions": result["n_lesions"],
        "binning": {
            "bins": pooled.binning.bins,
            "error_bound": {k: _number(v) for k, v in pooled.error_bounds().items()},
        },
    }
