"""Positive pairs for dense self-supervised training: two overlapping crops of one image.

Geometry (all in source voxel index coordinates, voxel ``k`` centred at ``k``): crop ``k`` has
an origin ``o_k`` (source coordinate of its voxel 0) and a per-axis scale ``s_k`` (source voxels
per crop voxel), so crop index ``i`` sits at source coordinate ``o_k + i * s_k``. A crop
therefore covers the box ``[o_k - s_k / 2, o_k + (crop_size - 1/2) * s_k]`` (``crop_size * s_k``
source voxels), reported in ``boxes``. Positions of a pair are sampled inside the part of the
two crops' voxel-centre hulls that overlaps and lies in the body, so every position is in
``[0, crop_size - 1]`` of both crops and can be gathered with ``align_corners=True``.

No flips or axis permutations are applied: descriptors must be equivariant to cropping only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from screener_plans.errors import ScreenerError

__all__ = ["sample_pair", "gather_descriptors", "resample_box", "PairSampler"]


def _as_volume(array, name: str):
    """Accept (X, Y, Z) or (1, X, Y, Z) arrays (also memmaps) without reading them."""
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ScreenerError(f"{name}: expected a 3D array (X, Y, Z), got shape {tuple(array.shape)}")
    return array


def _scale_ranges(scale_range) -> np.ndarray:
    """(lo, hi) for all axes, or one (lo, hi) per axis -> float array (3, 2)."""
    r = np.asarray(scale_range, dtype=np.float64)
    if r.shape == (2,):
        r = np.tile(r, (3, 1))
    if r.shape != (3, 2) or not np.all(r > 0) or not np.all(r[:, 0] <= r[:, 1]):
        raise ScreenerError(f"scale_range: expected 0 < lo <= hi as (lo, hi) or 3 x (lo, hi), got {scale_range}")
    return r


def resample_box(image, origin, scale, crop_size) -> np.ndarray:
    """Trilinearly sample ``image`` at ``origin + i * scale`` for i in the crop grid; 0 outside.

    Only the source sub-block under the box is read (memmaps stay on disk) and cast to float32;
    trilinear interpolation of an axis-aligned box is separable, so it is done as three 1D
    linear interpolations, which is exact and faster than grid_sample / affine_transform.
    """
    image = _as_volume(image, "image")
    origin = np.asarray(origin, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    crop_size = tuple(int(c) for c in crop_size)
    coords = [origin[a] + np.arange(crop_size[a]) * scale[a] for a in range(3)]
    lo = [int(np.floor(x[0])) for x in coords]
    hi = [int(np.floor(x[-1])) + 2 for x in coords]  # exclusive, includes the right neighbour
    src_sl, dst_sl = [], []
    for a in range(3):
        s0, s1 = max(lo[a], 0), min(hi[a], image.shape[a])
        if s1 <= s0:  # box entirely outside the image along this axis
            return np.zeros(crop_size, np.float32)
        src_sl.append(slice(s0, s1))
        dst_sl.append(slice(s0 - lo[a], s1 - lo[a]))
    block = np.zeros([hi[a] - lo[a] for a in range(3)], np.float32)
    block[tuple(dst_sl)] = image[tuple(src_sl)]
    out = block
    # Shrink along the most down-sampled axis first to keep intermediates small.
    for a in np.argsort(-scale, kind="stable"):
        x = coords[a] - lo[a]
        f = np.floor(x).astype(np.intp)
        w = (x - f).astype(np.float32)
        shape = [1, 1, 1]
        shape[a] = len(x)
        left = np.take(out, f, axis=a)
        right = np.take(out, np.minimum(f + 1, out.shape[a] - 1), axis=a)
        left += (right - left) * w.reshape(shape)
        out = left
    return np.ascontiguousarray(out, dtype=np.float32)


def _in_mask(mask, points: np.ndarray) -> np.ndarray:
    """Nearest-voxel mask lookup of float points (m, 3); points outside the image are False."""
    idx = np.rint(points).astype(np.intp)
    inside = np.all((idx >= 0) & (idx < np.asarray(mask.shape)), axis=1)
    out = np.zeros(len(points), bool)
    if inside.any():
        i = idx[inside]
        out[inside] = np.asarray(mask[i[:, 0], i[:, 1], i[:, 2]]).astype(bool)
    return out


def _body_anchor(mask, rng: np.random.Generator, max_tries: int) -> np.ndarray:
    """A uniformly random body voxel, by rejection (cheap, memmap-friendly), else by search."""
    shape = np.asarray(mask.shape)
    for _ in range(max_tries):
        cand = (rng.random((256, 3)) * shape).astype(np.intp)
        hit = np.asarray(mask[cand[:, 0], cand[:, 1], cand[:, 2]]).astype(bool)
        if hit.any():
            return cand[np.argmax(hit)].astype(np.float64)
    # Very sparse masks: fall back to a full scan.
    body = np.argwhere(np.asarray(mask))
    if len(body) == 0:
        raise ScreenerError("mask: body mask is empty, cannot sample a crop pair")
    return body[rng.integers(len(body))].astype(np.float64)


def _place(rng, anchor, lo_edge, hi_edge, length, extra=None):
    """Random box start (edge coordinate) per axis such that the box contains ``anchor``, lies in
    the image when it fits (else covers the image), and satisfies ``extra`` = (lo, hi) bounds.
    Every interval pair intersects (checked in the design), so the result is never empty."""
    lo = anchor - length
    hi = anchor.copy()
    fits = length <= hi_edge - lo_edge
    lo = np.maximum(lo, np.where(fits, lo_edge, hi_edge - length))
    hi = np.minimum(hi, np.where(fits, hi_edge - length, lo_edge))
    if extra is not None:
        lo = np.maximum(lo, extra[0])
        hi = np.minimum(hi, extra[1])
    hi = np.maximum(hi, lo)  # guard against rounding
    return lo + rng.random(3) * (hi - lo)


def sample_pair(
    image,
    mask,
    crop_size: Sequence[int],
    scale_range,
    n_positions: int,
    rng: np.random.Generator,
    *,
    min_overlap: float = 0.3,
    isotropic: bool = True,
    max_tries: int = 16,
) -> dict:
    """Sample two overlapping crops of ``image`` and ``n_positions`` shared points.

    Args:
        image: (X, Y, Z) array in [0, 1] (numpy or memmap, any float dtype).
        mask: (X, Y, Z) body mask (bool/uint8); crops contain a body voxel, positions are in it.
        crop_size: output crop shape (cx, cy, cz).
        scale_range: (lo, hi) or one (lo, hi) per axis: source voxels per crop voxel, drawn
            uniformly per crop. ``isotropic`` shares one uniform draw across axes (with per-axis
            ranges proportional to 1/spacing this gives crops isotropic in mm); otherwise each
            axis is drawn independently.
        n_positions: number of shared points.
        rng: numpy Generator (the only randomness used).
        min_overlap: per axis, the two boxes overlap by at least this fraction of the smaller box.
        max_tries: pair re-draws when the overlap holds too few body points.

    Returns:
        ``crops`` float32 (2, 1, *crop_size), ``positions`` float32 (2, n, 3) in crop index
        space, ``boxes`` float32 (2, 2, 3) box start/stop edges in source voxel coordinates.
        If after ``max_tries`` the overlap never had body voxels enough, the remaining points are
        drawn from the overlap ignoring the mask (keeps training running on odd cases).
    """
    image = _as_volume(image, "image")
    mask = _as_volume(mask, "mask")
    if tuple(image.shape) != tuple(mask.shape):
        raise ScreenerError(f"mask: shape {tuple(mask.shape)} differs from image shape {tuple(image.shape)}")
    crop = np.asarray([int(c) for c in crop_size])
    if crop.shape != (3,) or np.any(crop < 2):
        raise ScreenerError(f"crop_size: expected three sizes >= 2, got {crop_size}")
    if not 0.0 <= min_overlap <= 1.0:
        raise ScreenerError(f"min_overlap: expected a fraction in [0, 1], got {min_overlap}")
    ranges = _scale_ranges(scale_range)
    n = int(n_positions)
    lo_edge, hi_edge = -0.5, np.asarray(image.shape, np.float64) - 0.5

    best = None
    for _pair_try in range(max(1, max_tries)):
        u = np.full(3, rng.random()) if isotropic else rng.random(3)
        s1 = ranges[:, 0] + u * (ranges[:, 1] - ranges[:, 0])
        u = np.full(3, rng.random()) if isotropic else rng.random(3)
        s2 = ranges[:, 0] + u * (ranges[:, 1] - ranges[:, 0])
        len1, len2 = crop * s1, crop * s2
        anchor = _body_anchor(mask, rng, max_tries)
        a1 = _place(rng, anchor, lo_edge, hi_edge, len1)
        m = min_overlap * np.minimum(len1, len2)
        a2 = _place(rng, anchor, lo_edge, hi_edge, len2, extra=(a1 + m - len2, a1 + len1 - m))
        o1, o2 = a1 + s1 / 2, a2 + s2 / 2  # source coordinates of crop voxel 0
        # Sampling region: overlap of the voxel-centre hulls, so positions stay in [0, c-1].
        r_lo = np.maximum(o1, o2)
        r_hi = np.minimum(o1 + (crop - 1) * s1, o2 + (crop - 1) * s2)
        r_hi = np.maximum(r_hi, r_lo)
        found = np.empty((0, 3))
        for _attempt in range(max_tries):
            cand = r_lo + rng.random((max(4 * n, 64), 3)) * (r_hi - r_lo)
            found = np.concatenate([found, cand[_in_mask(mask, cand)]])
            if len(found) >= n:
                break
        if best is None or len(found) > len(best[-1]):
            best = (s1, s2, o1, o2, a1, a2, r_lo, r_hi, found)
        if len(found) >= n:
            break
    s1, s2, o1, o2, a1, a2, r_lo, r_hi, found = best
    if len(found) < n:
        fill = r_lo + rng.random((n - len(found), 3)) * (r_hi - r_lo)
        found = np.concatenate([found, fill])
    points = found[:n]

    crops = np.stack([resample_box(image, o1, s1, crop), resample_box(image, o2, s2, crop)])[:, None]
    positions = np.stack([(points - o1) / s1, (points - o2) / s2])
    # Float round-off must not push a point past the crop's last voxel centre.
    positions = np.clip(positions, 0, crop - 1).astype(np.float32)
    boxes = np.stack([np.stack([a1, a1 + crop * s1]), np.stack([a2, a2 + crop * s2])]).astype(np.float32)
    return {"crops": crops, "positions": positions, "boxes": boxes}


def gather_descriptors(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Trilinearly sample ``features`` (B, d, X, Y, Z) at index-space ``positions`` (B, n, 3).

    Positions are voxel indices of the feature grid (0 .. size-1, align_corners=True). Returns
    (B * n, d), differentiable w.r.t. ``features``; float32 for half-precision inputs.
    """
    if features.ndim != 5 or positions.ndim != 3 or positions.shape[-1] != 3:
        raise ValueError(
            f"expected features (B, d, X, Y, Z) and positions (B, n, 3), got "
            f"{tuple(features.shape)} and {tuple(positions.shape)}"
        )
    if features.shape[0] != positions.shape[0]:
        raise ValueError(f"batch sizes differ: features {features.shape[0]}, positions {positions.shape[0]}")
    if features.dtype not in (torch.float32, torch.float64):
        # Normalised coordinates in half precision are off by ~0.05 voxel at 96^3.
        features = features.float()
    b, d = features.shape[:2]
    n = positions.shape[1]
    size = torch.tensor(features.shape[2:], dtype=features.dtype, device=features.device)
    pos = positions.to(device=features.device, dtype=features.dtype)
    grid = torch.where(size > 1, pos / (size - 1).clamp_min(1) * 2 - 1, torch.zeros_like(pos))
    # grid_sample's last grid dim is (W, H, D) = (Z, Y, X) for our (X, Y, Z) tensors.
    grid = grid.flip(-1).reshape(b, n, 1, 1, 3)
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(b, d, n).transpose(1, 2).reshape(b * n, d)


class PairSampler:
    """Case dict -> positive-pair sample of torch tensors, for use inside a torch/MONAI Dataset.

    ``__call__({"image": (X,Y,Z), "mask": (X,Y,Z)[, "spacing": 3 floats]})`` returns
    ``crops`` float32 (2, C, *crop_size) (colour-augmented if ``augment`` is given; C = 2 with
    block masking: masked image + mask channel), ``positions`` float32 (2, n, 3), ``boxes``
    float32 (2, 2, 3). Crops of a pair are augmented and masked independently.

    Scale: either ``scale_range`` (source voxels per crop voxel) or ``spacing_range`` (crop
    voxel size in mm, e.g. (1.0, 2.0); needs ``spacing`` in the case dict and gives crops
    isotropic in mm).

    Seeding: the numpy Generator is derived from ``seed`` and ``torch.initial_seed()``, so each
    DataLoader worker (and each epoch's fresh workers) gets its own stream, reproducible given
    ``torch.manual_seed``; MONAI's DataLoader calls ``set_random_state`` per worker instead.
    """

    def __init__(
        self,
        crop_size: Sequence[int],
        n_positions: int,
        scale_range=None,
        spacing_range=None,
        min_overlap: float = 0.3,
        isotropic: bool = True,
        augment=None,
        mask_block_size=None,
        mask_ratio: float = 0.0,
        mask_fill: float = 0.0,
        seed: int = 0,
        max_tries: int = 16,
    ):
        if (scale_range is None) == (spacing_range is None):
            raise ScreenerError("pair sampler: give exactly one of scale_range and spacing_range")
        if scale_range is not None:
            _scale_ranges(scale_range)
        elif not (len(spacing_range) == 2 and 0 < spacing_range[0] <= spacing_range[1]):
            raise ScreenerError(f"spacing_range: expected 0 < lo <= hi (mm), got {spacing_range}")
        if mask_ratio and mask_block_size is None:
            raise ScreenerError("pair sampler: mask_ratio given without mask_block_size")
        self.crop_size = tuple(int(c) for c in crop_size)
        self.n_positions = int(n_positions)
        self.scale_range = scale_range
        self.spacing_range = spacing_range
        self.min_overlap = float(min_overlap)
        self.isotropic = bool(isotropic)
        self.augment = augment
        self.mask_block_size = mask_block_size
        self.mask_ratio = float(mask_ratio)
        self.mask_fill = float(mask_fill)
        self.seed = int(seed)
        self.max_tries = int(max_tries)
        self._rng = None
        self._key = None

    def set_random_state(self, seed=None, state=None):
        """Reseed (MONAI DataLoader's per-worker hook); ``state`` may be a numpy Generator."""
        self._rng = state if isinstance(state, np.random.Generator) else np.random.default_rng([self.seed, seed or 0])
        self._key = (os.getpid(), torch.initial_seed())
        return self

    def _generator(self) -> np.random.Generator:
        key = (os.getpid(), torch.initial_seed())
        if self._rng is None or self._key != key:
            self._rng = np.random.default_rng([self.seed, torch.initial_seed() % (2**63)])
            self._key = key
        return self._rng

    def _scales(self, case: Mapping):
        if self.scale_range is not None:
            return self.scale_range
        if "spacing" not in case:
            raise ScreenerError("pair sampler: spacing_range needs 'spacing' in the case dict")
        spacing = np.asarray(case["spacing"], np.float64).reshape(3)
        return np.asarray(self.spacing_range, np.float64)[None, :] / spacing[:, None]

    def __call__(self, case: Mapping, rng: np.random.Generator | None = None) -> dict:
        """Sample one pair; ``rng`` (optional) makes the sample a pure function of the caller's seed."""
        from screener_plans.data.masking import apply_block_mask, block_mask

        rng = self._generator() if rng is None else rng
        out = sample_pair(
            case["image"],
            case["mask"],
            self.crop_size,
            self._scales(case),
            self.n_positions,
            rng,
            min_overlap=self.min_overlap,
            isotropic=self.isotropic,
            max_tries=self.max_tries,
        )
        crops = []
        for k in range(2):
            c = out["crops"][k]
            if self.augment is not None:
                c = self.augment(c, rng)
            if self.mask_block_size is not None:
                m = block_mask(self.crop_size, self.mask_block_size, self.mask_ratio, rng)
                c = apply_block_mask(c, m, fill=self.mask_fill)
            crops.append(c)
        return {
            "crops": torch.from_numpy(np.stack(crops).astype(np.float32, copy=False)),
            "positions": torch.from_numpy(out["positions"]),
            "boxes": torch.from_numpy(out["boxes"]),
        }
