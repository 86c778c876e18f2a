"""Random block masking of a crop, for the masking-invariant condition model (paper: 60% of
24^3 blocks). Each crop of a pair gets its own mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from screener_plans.errors import ScreenerError

__all__ = ["block_mask", "apply_block_mask"]


def block_mask(crop_size: Sequence[int], block_size, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Bool (X, Y, Z) mask, True = masked, made of whole blocks of a randomly offset grid.

    The grid of ``block_size`` (int or 3 ints) blocks is shifted by a random offset in
    [0, block) per axis, so block borders do not coincide with the crop's; exactly
    ``round(ratio * n_blocks)`` of the grid's blocks (including partial edge blocks) are masked,
    so the masked voxel fraction is ``ratio`` on average, varying with the edge blocks.
    """
    crop = np.asarray([int(c) for c in crop_size])
    block = np.broadcast_to(np.asarray(block_size, dtype=np.intp), (3,))
    if crop.shape != (3,) or np.any(crop < 1) or np.any(block < 1):
        raise ScreenerError(
            f"block_mask: expected positive crop_size (3) and block_size, got {crop_size}, {block_size}"
        )
    if not 0.0 <= ratio <= 1.0:
        raise ScreenerError(f"mask ratio: expected a fraction in [0, 1], got {ratio}")
    offset = rng.integers(0, block)
    n_blocks = (crop + offset + block - 1) // block
    chosen = np.zeros(int(np.prod(n_blocks)), bool)
    chosen[rng.permutation(chosen.size)[: int(round(ratio * chosen.size))]] = True
    chosen = chosen.reshape(n_blocks)
    idx = [(np.arange(crop[a]) + offset[a]) // block[a] for a in range(3)]
    return chosen[np.ix_(*idx)]


def apply_block_mask(crop, mask, fill: float = 0.0):
    """(1, X, Y, Z) crop + (X, Y, Z) mask -> (2, X, Y, Z): masked crop (masked voxels set to
    ``fill``; 0 = the bottom of the CT window, like air/padding) and the mask as float 0/1.

    Works on numpy arrays or torch tensors (returns the same kind, float32).
    """
    if isinstance(crop, torch.Tensor):
        m = torch.as_tensor(mask, device=crop.device).to(torch.bool)
        if crop.ndim == 3:
            crop = crop[None]
        if crop.shape[0] != 1:
            raise ScreenerError(f"apply_block_mask: expected a one-channel crop (1, X, Y, Z), got {tuple(crop.shape)}")
        m = m.reshape(crop.shape[-3:])
        img = torch.where(m, torch.full_like(crop[0], fill, dtype=torch.float32), crop[0].float())
        return torch.stack([img, m.float()])
    crop = np.asarray(crop, dtype=np.float32)
    if crop.ndim == 3:
        crop = crop[None]
    m = np.asarray(mask, dtype=bool).reshape(crop.shape[-3:])
    if crop.shape[0] != 1:
        raise ScreenerError(f"apply_block_mask: expected a one-channel crop (1, X, Y, Z), got {crop.shape}")
    img = np.where(m, np.float32(fill), crop[0])
    return np.stack([img, m.astype(np.float32)])
