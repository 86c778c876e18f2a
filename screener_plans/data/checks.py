"""Sanity checks that tell a CT volume from things that are not one (2D, 4D, MRI, raw DICOM...)."""

from __future__ import annotations

import numpy as np

from screener_plans.data.readers import CaseImage
from screener_plans.errors import BadCaseError

MIN_SIDE = 8  # voxels; thinner than this is a slice or a localizer, not a volume
MAX_SPACING_MM = 20.0


def squeeze_to_3d(case: CaseImage) -> CaseImage:
    """Drop singleton trailing axes (NIfTI stores some volumes as X*Y*Z*1); refuse 2D and 4D."""
    arr = case.array
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim > 3:
        raise BadCaseError(case.path, f"{arr.ndim}D image of shape {tuple(arr.shape)}; expected one 3D CT volume")
    if arr.ndim < 3 or min(arr.shape) < MIN_SIDE:
        raise BadCaseError(
            case.path,
            f"2D image or too few slices (shape {tuple(arr.shape)}); "
            f"expected a 3D CT volume at least {MIN_SIDE} voxels on each side",
        )
    case.array = arr
    return case


def _mm(spacing) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in spacing) + "]"


def check_geometry(case: CaseImage) -> None:
    """Refuse zero, negative, non-finite or absurd voxel spacings."""
    spacing = case.spacing
    pixdim = case.meta.get("pixdim")
    if pixdim is not None and len(pixdim) >= 4 and np.any(np.asarray(pixdim[1:4], dtype=float) <= 0):
        raise BadCaseError(
            case.path, f"invalid voxel spacing {list(np.round(pixdim[1:4], 4))} in the header (must be positive)"
        )
    if not np.all(np.isfinite(case.affine)):
        raise BadCaseError(case.path, "affine contains non-finite values")
    if np.any(spacing <= 1e-6):
        raise BadCaseError(case.path, f"invalid voxel spacing {_mm(spacing)} mm (zero)")
    if np.any(spacing > MAX_SPACING_MM):
        raise BadCaseError(
            case.path,
            f"implausible voxel spacing {_mm(spacing)} mm (more than {MAX_SPACING_MM:g} mm); check the header",
        )


def check_intensities(case: CaseImage) -> None:
    """Refuse non-finite, constant and non-HU intensities with a reason a user can act on."""
    arr = case.array
    finite = np.isfinite(arr)
    if not finite.all():
        n = int(arr.size - finite.sum())
        raise BadCaseError(case.path, f"contains {n} NaN/inf voxels")
    lo, hi = float(arr.min()), float(arr.max())
    if hi - lo < 1e-3:
        raise BadCaseError(case.path, f"constant volume (every voxel is {lo:g})")
    if case.meta.get("modality") and case.meta["modality"].upper() != "CT":
        raise BadCaseError(case.path, f"DICOM modality is {case.meta['modality']}, not CT")
    if lo >= -200:
        if case.meta.get("dicom_rescale") is False:
            raise BadCaseError(
                case.path,
                f"DICOM without RescaleSlope/RescaleIntercept: stored values [{lo:g}, {hi:g}] are not Hounsfield units",
            )
        raise BadCaseError(
            case.path,
            f"intensities [{lo:g}, {hi:g}] do not look like CT in Hounsfield units "
            "(no air near -1000 HU): MRI, raw DICOM values or a normalized image?",
        )
    if lo < -4000 or hi > 40000:
        raise BadCaseError(case.path, f"intensities [{lo:g}, {hi:g}] are outside any CT range")


def validate_ct(case: CaseImage) -> CaseImage:
    """Run every check; returns the (squeezed) case or raises ``BadCaseError``."""
    squeeze_to_3d(case)
    check_geometry(case)
    check_intensities(case)
    return case
