"""Voxel-space geometry shared by preprocessing and inference.

Preprocessing is a chain of exact, invertible voxel-space steps: reorient to RAS (axis
permutation and flips), resample by a per-axis scale, crop to the body box. Working in voxel
space keeps oblique scans aligned: the anomaly map is mapped back onto the input's own grid.
"""

from __future__ import annotations

import numpy as np
from nibabel import orientations as nio


def ras_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform taking the image's voxel axes to RAS."""
    return nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt("RAS"))


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient ``array`` to RAS axis order; returns (array, its affine, the transform).

    The result is contiguous in C or Fortran order, whichever the input had: reordering a
    Fortran-ordered NIfTI volume into C order would cost a strided copy of the whole scan
    (2 s for 512x512x300) that nothing downstream needs.
    """
    ornt = ras_transform(affine)
    out = nio.apply_orientation(array, ornt)
    new_affine = affine @ nio.inv_ornt_aff(ornt, array.shape)
    if not (out.flags.c_contiguous or out.flags.f_contiguous):
        out = np.asfortranarray(out) if fortran_ordered(array) else np.ascontiguousarray(out)
    return out, new_affine, ornt


def fortran_ordered(array) -> bool:
    """True for an array laid out in Fortran order only (NIfTI's layout), not also in C order."""
    flags = np.asarray(array).flags
    return flags.f_contiguous and not flags.c_contiguous


def from_ras(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Undo ``to_ras`` for an array on the RAS grid."""
    return np.ascontiguousarray(nio.apply_orientation(array, invert_ornt(ornt)))


def invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``ornt``."""
    ornt = np.asarray(ornt)
    inv = np.zeros_like(ornt)
    for src, (dst, flip) in enumerate(ornt):
        inv[int(dst)] = (src, flip)
    return inv


def resampled_shape(shape, spacing, target_spacing) -> tuple[int, ...]:
    """Shape after resampling from ``spacing`` to ``target_spacing`` (at least one voxel)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


def scale_index(index, old_shape, new_shape):
    """Map continuous voxel indices between two grids covering the same extent.

    Uses the half-voxel-centre convention of ``align_corners=False`` interpolation, the one
    preprocessing resamples with.
    """
    index = np.asarray(index, dtype=np.float64)
    ratio = np.asarray(old_shape, dtype=np.float64) / np.asarray(new_shape, dtype=np.float64)
    return (index + 0.5) / ratio - 0.5


class CaseGeometry:
    """Maps voxel indices between an input scan and its preprocessed (cached) volume.

    Built from the ``meta.json`` that preprocessing writes: orientation transform, RAS shape,
    resampled shape and the body crop box.
    """

    def __init__(self, meta: dict):
        self.ornt = np.asarray(meta["ornt"], dtype=np.float64)
        self.original_shape = tuple(meta["original_shape"])
        self.ras_shape = tuple(meta["ras_shape"])
        self.resampled_shape = tuple(meta["resampled_shape"])
        self.crop_start = np.asarray(meta["crop_start"], dtype=np.float64)
        self.crop_stop = np.asarray(meta["crop_stop"], dtype=np.float64)

    def original_to_ras(self, ijk) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=np.float64)
        out = np.empty_like(ijk)
        for src, (dst, flip) in enumerate(self.ornt):
            v = ijk[..., src]
            out[..., int(dst)] = v if flip > 0 else self.original_shape[src] - 1 - v
        return out

    def ras_to_original(self, ijk) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=np.float64)
        out = np.empty_like(ijk)
        for src, (dst, flip) in enumerate(self.ornt):
            v = ijk[..., int(dst)]
            out[..., src] = v if flip > 0 else self.original_shape[src] - 1 - v
        return out

    def to_cache(self, ijk) -> np.ndarray:
        """Continuous index in the input scan -> continuous index in the cached volume."""
        ras = self.original_to_ras(ijk)
        return scale_index(ras, self.ras_shape, self.resampled_shape) - self.crop_start

    def to_original(self, ijk) -> np.ndarray:
        """Continuous index in the cached volume -> continuous index in the input scan."""
        resampled = np.asarray(ijk, dtype=np.float64) + self.crop_start
        return self.ras_to_original(scale_index(resampled, self.resampled_shape, self.ras_shape))
