"""Colour augmentation and block masking."""

import numpy as np
import pytest
import torch

from screener_plans.data.augment import ColorAugment
from screener_plans.data.masking import apply_block_mask, block_mask
from screener_plans.errors import ScreenerError


def smooth_crop(shape=(24, 24, 24), seed=0):
    g = np.indices(shape, dtype=np.float32) / np.float32(shape[0])
    noise = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return (0.5 + 0.3 * np.sin(4 * g[0]) * np.cos(3 * g[1]) + 0.1 * noise).astype(np.float32)[None]


def test_augment_deterministic_shape_dtype_and_changes():
    crop = smooth_crop()
    before = crop.copy()
    aug = ColorAugment(p=1.0)
    a = aug(crop, np.random.default_rng(4))
    b = aug(crop, np.random.default_rng(4))
    c = aug(crop, np.random.default_rng(5))
    np.testing.assert_array_equal(crop, before)  # input untouched
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == crop.shape and a.dtype == np.float32
    assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert np.abs(a - crop).mean() > 1e-3
    t = aug(torch.from_numpy(crop), np.random.default_rng(4))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), a)
    assert aug(crop[0], np.random.default_rng(4)).shape == crop.shape[1:]


def test_augment_p0_is_identity_and_each_op_acts():
    crop = smooth_crop()
    np.testing.assert_array_equal(ColorAugment(p=0.0)(crop, np.random.default_rng(0)), crop)
    off = dict(brightness=None, contrast=None, gamma=None, noise_std=None, blur_sigma=None, sharpen=None)
    ops = {
        "brightness": dict(brightness=0.1),
        "contrast": dict(contrast=(0.5, 0.6)),
        "gamma": dict(gamma=(1.5, 2.0)),
        "noise": dict(noise_std=(0.05, 0.05)),
        "blur": dict(blur_sigma=(1.0, 1.0)),
    }
    for name, kw in ops.items():
        out = ColorAugment(p=1.0, **{**off, **kw})(crop, np.random.default_rng(1))
        assert np.abs(out - crop).max() > 1e-3, name
    noisy = ColorAugment(p=1.0, **{**off, "noise_std": (0.05, 0.05)})(crop, np.random.default_rng(1))
    assert abs(float((noisy - crop).std()) - 0.05) < 0.005
    low = ColorAugment(p=1.0, **{**off, "contrast": (0.5, 0.5)})(crop, np.random.default_rng(1))
    assert abs(low.std() / crop.std() - 0.5) < 0.01
    blurred = ColorAugment(p=1.0, **{**off, "blur_sigma": (1.0, 1.0)})(crop, np.random.default_rng(1))
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.7 * np.abs(np.diff(crop, axis=1)).mean()
    # sharpening (chosen with even odds against blur) increases local differences
    sharp = [
        ColorAugment(p=1.0, **{**off, "blur_sigma": (1.0, 1.0), "sharpen": (1.0, 1.0)})(crop, np.random.default_rng(s))
        for s in range(8)
    ]
    rough = [np.abs(np.diff(x, axis=1)).mean() / np.abs(np.diff(crop, axis=1)).mean() for x in sharp]
    assert max(rough) > 1.3 and min(rough) < 0.7


def test_augment_bad_config():
    with pytest.raises(ScreenerError, match="contrast"):
        ColorAugment(contrast=(1.2, 0.8))
    with pytest.raises(ScreenerError, match="p"):
        ColorAugment(p=1.5)


def block_boundaries_share_residue(mask, block):
    for axis in range(3):
        change = np.flatnonzero(np.any(np.diff(mask, axis=axis), axis=tuple(a for a in range(3) if a != axis))) + 1
        if len(change) and len(set(change % block)) != 1:
            return False
    return True


def test_block_mask_fraction_and_structure():
    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(200):
        m = block_mask((40, 36, 30), 8, 0.6, rng)
        assert m.shape == (40, 36, 30) and m.dtype == bool
        assert block_boundaries_share_residue(m, 8)
        fractions.append(m.mean())
    assert abs(np.mean(fractions) - 0.6) < 0.02
    assert np.std(fractions) > 0  # offsets vary
    # paper setting: 60% of 24^3 blocks on a 96^3 crop; anisotropic blocks; extremes
    m = block_mask((96, 96, 96), 24, 0.6, rng)
    assert block_boundaries_share_residue(m, 24) and 0.3 < m.mean() < 0.9
    assert block_mask((16, 16, 16), (4, 8, 2), 0.0, rng).sum() == 0
    assert block_mask((16, 16, 16), (4, 8, 2), 1.0, rng).all()
    np.testing.assert_array_equal(
        block_mask((20,) * 3, 6, 0.5, np.random.default_rng(3)), block_mask((20,) * 3, 6, 0.5, np.random.default_rng(3))
    )
    with pytest.raises(ScreenerError):
        block_mask((8, 8, 8), 4, 1.5, rng)


def test_block_mask_exact_block_count():
    # with a zero offset and a divisible crop every block is whole: count is exact
    class ZeroOffset:
        def __init__(self):
            self.rng = np.random.default_rng(0)

        def integers(self, low, high):
            return np.zeros(3, int)

        def permutation(self, n):
            return self.rng.permutation(n)

    m = block_mask((16, 16, 16), 4, 0.25, ZeroOffset())
    assert m.sum() == 16 * 4**3


@pytest.mark.parametrize("as_torch", [False, True])
def test_apply_block_mask(as_torch):
    crop = smooth_crop((12, 12, 12))
    m = block_mask((12, 12, 12), 4, 0.5, np.random.default_rng(0))
    x = torch.from_numpy(crop) if as_torch else crop
    out = apply_block_mask(x, m, fill=0.0)
    out = out.numpy() if as_torch else out
    assert out.shape == (2, 12, 12, 12) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1], m.astype(np.float32))
    assert np.all(out[0][m] == 0)
    np.testing.assert_array_equal(out[0][~m], crop[0][~m])
    assert np.all(apply_block_mask(crop, m, fill=0.5)[0][m] == 0.5)
