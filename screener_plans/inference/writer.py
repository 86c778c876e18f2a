"""Write one case's outputs: anomaly map (NIfTI), suspicious regions (JSON), overlay (PNG).

Every file is written under a temporary name and renamed, so an interrupted run never leaves
a half-written output that looks finished.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from screener_plans.inference.nifti_gz import write_nifti_gz
from screener_plans.inference.overlay import render_overlay, save_png
from screener_plans.inference.regions import find_regions
from screener_plans.io_utils import atomic_path, write_json

NIFTI_XFORM_SCANNER = 1


def _jsonable(value):
    """Plain-Python copy of ``value`` (numpy scalars and arrays become numbers and lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def save_nifti(path, array: np.ndarray, affine: np.ndarray) -> str:
    """Write a float32 ``.nii.gz`` with ``affine`` as both sform and qform (scanner), atomically,
    compressed in threads (``nifti_gz``)."""
    affine = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine)
    img.set_sform(affine, code=NIFTI_XFORM_SCANNER)
    # A qform cannot hold shear; the sform above keeps the exact affine either way.
    img.set_qform(affine, code=NIFTI_XFORM_SCANNER)
    img.header.set_xyzt_units("mm")
    with atomic_path(path, suffix=".nii.gz") as tmp:
        write_nifti_gz(tmp, img)
    return str(path)


def write_case_outputs(
    out_dir,
    case_name: str,
    score_original: np.ndarray,
    affine: np.ndarray,
    image_hu_original: np.ndarray,
    threshold: float,
    extra: dict | None = None,
    min_voxels: int | None = None,
    max_regions: int = 100,
) -> dict:
    """Write ``<case>.nii.gz``, ``<case>_regions.json`` and ``<case>.png`` into ``out_dir``.

    ``score_original`` and ``image_hu_original`` are on the input grid with the input's
    ``affine``. The JSON holds ``case``, ``threshold``, the ``extra`` keys, ``n_regions``
    (listed), ``n_regions_total`` (before the ``max_regions`` cap) and ``regions`` (see
    ``regions.find_regions``). The PNG cuts through the top region's max-score voxel, or the
    map's argmax when no region passes the threshold. Returns ``{"nifti", "regions_json",
    "png", "regions"}``.
    """
    out_dir = Path(out_dir)
    extra = dict(extra or {})
    reserved = {"case", "threshold", "n_regions", "n_regions_total", "regions"}
    clash = reserved & set(extra)
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} would overwrite the regions report's own keys")
    score = np.asarray(score_original, dtype=np.float32)
    paths = {
        "nifti": out_dir / f"{case_name}.nii.gz",
        "regions_json": out_dir / f"{case_name}_regions.json",
        "png": out_dir / f"{case_name}.png",
    }
    # the map is compressed in the background while regions and picture are made from it
    with ThreadPoolExecutor(1) as pool:
        nifti = pool.submit(save_nifti, paths["nifti"], score, affine)
        regions, n_total = find_regions(
            score, affine, threshold, min_voxels=min_voxels, max_regions=max_regions, return_total=True
        )
        report = {
            "case": case_name,
            "threshold": float(threshold),
            **_jsonable(extra),
            "n_regions": len(regions),
            "n_regions_total": n_total,
            "regions": regions,
        }
        point = regions[0]["max_voxel"] if regions else None
        picture = render_overlay(image_hu_original, score, affine, point_voxel=point, threshold=threshold)
        nifti.result()
    # the map is on disk before the files that describe it
    write_json(paths["regions_json"], report)
    save_png(paths["png"], picture)
    return {**{k: str(v) for k, v in paths.items()}, "regions": regions}
