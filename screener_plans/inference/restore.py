"""Map maps from the preprocessed (cached) grid back onto the input scan's own voxel grid.

Preprocessing is reorient-to-RAS, resample, crop (see ``data.geometry``); this undoes it in
reverse order: pad the crop back, resample to the RAS shape with the same convention
(trilinear, ``align_corners=False``), then undo the reorientation. Everything is voxel-space,
so oblique scans come out aligned with the input and the input's affine applies unchanged.
"""

from __future__ import annotations

import numpy as np

from screener_plans.data.geometry import from_ras, scale_index
from screener_plans.data.preprocess import resample


def _check_cache_shape(array: np.ndarray, meta: dict, what: str) -> None:
    if tuple(array.shape) != tuple(meta["shape"]):
        raise ValueError(
            f"{what} has shape {tuple(array.shape)}, the cached case {meta.get('name', '')!r} "
            f"has shape {tuple(meta['shape'])}"
        )


def _nearest_indices(meta: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per RAS axis: the nearest cached index of every RAS index, and whether it lies in the crop."""
    index, valid = [], []
    for n_ras, n_res, start, stop in zip(
        meta["ras_shape"], meta["resampled_shape"], meta["crop_start"], meta["crop_stop"]
    ):
        pos = scale_index(np.arange(n_ras), n_ras, n_res)  # continuous index in the resampled grid
        nearest = np.clip(np.floor(pos + 0.5).astype(np.int64), 0, n_res - 1)
        inside = (nearest >= start) & (nearest < stop)
        index.append(np.clip(nearest - start, 0, stop - start - 1))
        valid.append(inside)
    return index, valid


def to_original_mask(mask_cache: np.ndarray, meta: dict) -> np.ndarray:
    """Nearest-neighbour copy of a cached mask (e.g. the body mask) on the input grid (bool)."""
    _check_cache_shape(mask_cache, meta, "mask")
    (ix, iy, iz), (vx, vy, vz) = _nearest_indices(meta)
    # Separable gather: exact nearest neighbour without any full-size float temporaries.
    out = np.asarray(mask_cache)[np.ix_(ix, iy, iz)] > 0
    out &= vx[:, None, None] & vy[None, :, None] & vz[None, None, :]
    return from_ras(out, meta["ornt"])


def to_original_grid(
    score_cache: np.ndarray, body_mask_cache: np.ndarray | None, meta: dict, fill: float | None = None
) -> np.ndarray:
    """Resample a map on the cached grid onto the input scan's grid (float32, ``original_shape``).

    Voxels outside the body (``body_mask_cache == 0``) and outside the crop box get ``fill``
    (default: the map's minimum over the body, i.e. the lowest score). On the input grid the
    body is the nearest-neighbour copy of the cached mask, so the outside is exactly ``fill``;
    inside, trilinear interpolation only blends in ``fill`` within a voxel of the body edge.
    Peak memory is about three output-sized float32 arrays.
    """
    _check_cache_shape(score_cache, meta, "score map")
    score = np.asarray(score_cache, dtype=np.float32)
    body = None
    if body_mask_cache is not None:
        _check_cache_shape(body_mask_cache, meta, "body mask")
        body = np.asarray(body_mask_cache) > 0
    if fill is None:
        inside = score[body] if body is not None and body.any() else score
        fill = float(inside.min()) if inside.size else 0.0
    fill = np.float32(fill)

    padded = np.full(tuple(meta["resampled_shape"]), fill, dtype=np.float32)
    box = tuple(slice(a, b) for a, b in zip(meta["crop_start"], meta["crop_stop"]))
    padded[box] = score if body is None else np.where(body, score, fill)
    lo, hi = float(padded.min()), float(padded.max())
    ras = resample(padded, meta["ras_shape"])
    del padded
    # Interpolation is a convex combination; clipping only removes float rounding, so the
    # outside stays exactly ``fill`` and nothing drops below the lowest score.
    np.clip(ras, lo, hi, out=ras)
    if body is not None:
        (ix, iy, iz), (vx, vy, vz) = _nearest_indices(meta)
        # Cut the body one RAS slab at a time: a full-size boolean temporary would cost as much
        # as a quarter of the output for nothing.
        for i in range(ras.shape[0]):
            if not vx[i]:
                ras[i] = fill
                continue
            plane = body[ix[i]][np.ix_(iy, iz)] & vy[:, None] & vz[None, :]
            ras[i][~plane] = fill
    out = from_ras(ras, meta["ornt"])
    if tuple(out.shape) != tuple(meta["original_shape"]):  # guards a corrupt meta.json
        raise ValueError(f"restored shape {out.shape} != original shape {tuple(meta['original_shape'])}")
    return out.astype(np.float32, copy=False)
