"""Connected suspicious regions of an anomaly map: position, extent, volume and scores."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# Regions smaller than this are dropped by default: about one voxel of the usual 2-3 mm
# inference grid (3 mm cube = 0.027 mL), i.e. single-voxel speckle after upsampling, and well
# below the size of findings that matter for screening (a 4 mm nodule is 0.034 mL).
MIN_REGION_ML = 0.03


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL (|det| of the affine's linear part, mm^3 / 1000)."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def default_min_voxels(affine: np.ndarray, min_volume_ml: float = MIN_REGION_ML) -> int:
    """Smallest region kept by default: ``min_volume_ml`` worth of voxels, at least one."""
    vox = voxel_volume_ml(affine)
    if not vox > 0:
        return 1
    return max(1, int(math.ceil(min_volume_ml / vox - 1e-9)))


def find_regions(
    score: np.ndarray,
    affine: np.ndarray,
    threshold: float,
    min_voxels: int | None = None,
    body_mask: np.ndarray | None = None,
    max_regions: int | None = 100,
    return_total: bool = False,
):
    """26-connected regions of ``score > threshold``, sorted by max score (highest first).

    ``score`` is on the input grid (file voxel order) and ``affine`` maps its voxels to RAS mm.
    Each region is a dict: ``id`` (1 = highest max score), ``centroid_voxel`` and ``centroid_mm``
    (unweighted centre of the region's voxels), ``bbox_voxel`` {"start", "stop"} (stop
    exclusive), ``max_voxel`` (where the max score is), ``volume_ml``, ``max_score``,
    ``mean_score``, ``n_voxels``. Regions with fewer than ``min_voxels`` voxels are dropped
    (default: :data:`MIN_REGION_ML` worth of voxels, at least 1); only voxels in ``body_mask``
    count when one is given; at most ``max_regions`` are returned (None: all). With
    ``return_total=True`` returns ``(regions, number of regions before the cap)``.
    """
    score = np.asarray(score)
    affine = np.asarray(affine, dtype=np.float64)
    if min_voxels is None:
        min_voxels = default_min_voxels(affine)
    fg = score > threshold
    if body_mask is not None:
        fg &= np.asarray(body_mask) > 0
    if not fg.any():
        return ([], 0) if return_total else []
    # Label only the box around the foreground: on a 512x512x300 map with a few findings this
    # is far less work than labelling the whole grid.
    from screener_plans.data.body import bounding_box

    start, stop = bounding_box(fg)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    fg, sub_score = fg[box], score[box]
    labels, n = ndimage.label(fg, structure=np.ones((3, 3, 3), dtype=bool))
    # Per-region statistics from the foreground voxels only (boolean indexing walks both
    # arrays in the same logical order whatever their memory layout).
    lab = labels[fg]
    values = sub_score[fg].astype(np.float64)
    coords = tuple(c + a for c, a in zip(np.nonzero(fg), start))
    del fg, sub_score
    count = np.bincount(lab, minlength=n + 1)[1:]
    total = np.bincount(lab, weights=values, minlength=n + 1)[1:]
    centre = np.stack([np.bincount(lab, weights=c, minlength=n + 1)[1:] for c in coords], axis=1)
    centre /= count[:, None]
    index = np.arange(1, n + 1)
    peak = np.asarray(ndimage.maximum(values, lab, index), dtype=np.float64)
    peak_at = np.asarray(ndimage.maximum_position(values, lab, index), dtype=np.int64).reshape(-1)
    del values

    keep = np.flatnonzero(count >= max(1, int(min_voxels)))
    keep = keep[np.lexsort((-count[keep], -peak[keep]))]  # max score desc, larger first on ties
    n_total = int(keep.size)
    if max_regions is not None:
        keep = keep[: max(0, int(max_regions))]
    boxes = ndimage.find_objects(labels, max_label=n)
    del labels
    vox_ml = voxel_volume_ml(affine)
    centre_mm = centre[keep] @ affine[:3, :3].T + affine[:3, 3]

    regions = []
    for rank, k in enumerate(keep):
        box = tuple(slice(sl.start + a, sl.stop + a) for sl, a in zip(boxes[k], start))
        at = int(peak_at[k])
        regions.append(
            {
                "id": rank + 1,
                "centroid_voxel": [round(float(v), 3) for v in centre[k]],
                "centroid_mm": [round(float(v), 3) for v in centre_mm[rank]],
                "bbox_voxel": {"start": [int(s.start) for s in box], "stop": [int(s.stop) for s in box]},
                "max_voxel": [int(c[at]) for c in coords],
                "volume_ml": float(count[k] * vox_ml),
                "max_score": float(peak[k]),
                "mean_score": float(total[k] / count[k]),
                "n_voxels": int(count[k]),
            }
        )
    return (regions, n_total) if return_total else regions
