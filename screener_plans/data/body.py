"""Body mask: the largest connected component of HU > -500 with holes filled slice by slice."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BODY_HU = -500.0


def body_mask(hu: np.ndarray, threshold: float = BODY_HU) -> np.ndarray:
    """Boolean body mask of a RAS-ordered HU volume (X, Y, Z).

    Holes are filled in axial slices only: lungs are open to the outside through the airway
    in 3D, but closed inside every axial slice of the chest.
    """
    fg = hu > threshold
    if not fg.any():
        return fg
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        fg = labels == int(sizes.argmax())
    del labels
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(fg, structure=in_plane)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(start, stop) voxel indices of the mask's bounding box, grown by ``margin`` and clipped."""
    if not mask.any():
        return tuple(0 for _ in mask.shape), tuple(mask.shape)
    start, stop = [], []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        start.append(max(0, int(idx[0]) - margin))
        stop.append(min(mask.shape[ax], int(idx[-1]) + 1 + margin))
    return tuple(start), tuple(stop)
