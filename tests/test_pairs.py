"""Positive-pair geometry: both crops see the same physical points at the returned positions."""

import numpy as np
import pytest
import torch

from screener_plans.data.augment import ColorAugment
from screener_plans.data.pairs import PairSampler, gather_descriptors, resample_box, sample_pair
from screener_plans.errors import ScreenerError

COEF = np.array([0.011, 0.0037, 0.0213])


def linear_field(shape):
    g = np.indices(shape, dtype=np.float64)
    return (0.1 + np.tensordot(COEF, g, axes=1)).astype(np.float32)


def interior_mask(shape, margin=3):
    m = np.zeros(shape, bool)
    m[tuple(slice(margin, s - margin) for s in shape)] = True
    return m


def source_points(box, positions, crop):
    """Crop index -> source coordinate via the reported box (start edge + (i + 1/2) * scale)."""
    start, stop = box.astype(np.float64)
    scale = (stop - start) / np.asarray(crop)
    return start + (positions.astype(np.float64) + 0.5) * scale


def crop_values(crop, positions):
    feats = torch.from_numpy(crop)[None]  # (1, 1, X, Y, Z)
    return gather_descriptors(feats, torch.from_numpy(positions)[None])[:, 0].numpy()


CASES = [
    # shape, crop, scale_range, isotropic
    ((40, 50, 30), (16, 20, 12), (0.7, 1.5), True),
    ((40, 50, 30), (16, 20, 12), [(0.6, 1.4), (1.0, 1.6), (0.8, 0.9)], False),
    ((12, 44, 9), (16, 16, 16), (0.7, 1.5), False),  # boxes larger than the image on two axes
]


@pytest.mark.parametrize("shape,crop,scale,iso", CASES)
def test_pair_positions_hit_same_points(shape, crop, scale, iso):
    image = linear_field(shape)
    mask = interior_mask(shape)
    rng = np.random.default_rng(1)
    for _ in range(10):
        out = sample_pair(image, mask, crop, scale, 50, rng, isotropic=iso, min_overlap=0.3)
        crops, pos, boxes = out["crops"], out["positions"], out["boxes"]
        assert crops.shape == (2, 1, *crop) and crops.dtype == np.float32
        assert pos.shape == (2, 50, 3) and pos.dtype == np.float32
        assert boxes.shape == (2, 2, 3)
        assert np.all(pos >= 0) and np.all(pos <= np.asarray(crop) - 1)
        p1 = source_points(boxes[0], pos[0], crop)
        p2 = source_points(boxes[1], pos[1], crop)
        np.testing.assert_allclose(p1, p2, atol=2e-3)
        # nearest voxel inside the body mask
        idx = np.rint(p1).astype(int)
        assert mask[idx[:, 0], idx[:, 1], idx[:, 2]].all()
        # trilinear interpolation of a linear field is exact away from the zero padding
        expected = 0.1 + p1 @ COEF
        for k in range(2):
            np.testing.assert_allclose(crop_values(crops[k, 0][None], pos[k]), expected, rtol=1e-3, atol=1e-4)
        # boxes overlap by >= 30% of the smaller box on every axis
        lengths = boxes[:, 1] - boxes[:, 0]
        overlap = np.minimum(boxes[0, 1], boxes[1, 1]) - np.maximum(boxes[0, 0], boxes[1, 0])
        assert np.all(overlap >= 0.3 * lengths.min(0) - 1e-3)
        scales = lengths / np.asarray(crop)
        lo, hi = np.broadcast_to(np.asarray(scale, float).reshape(-1, 2), (3, 2)).T
        assert np.all(scales >= lo - 1e-4) and np.all(scales <= hi + 1e-4)
        if iso and np.ndim(scale) == 1:
            assert np.allclose(scales[:, 0:1], scales, rtol=1e-5)


def test_crops_stay_in_image_when_they_fit_and_cover_it_otherwise():
    shape, crop = (12, 44, 9), (16, 16, 16)
    image, mask = linear_field(shape), interior_mask(shape, 1)
    rng = np.random.default_rng(2)
    edges = np.asarray(shape) - 0.5
    for _ in range(20):
        boxes = sample_pair(image, mask, crop, (0.7, 1.5), 8, rng, isotropic=False)["boxes"]
        for start, stop in boxes:
            fits = stop - start <= np.asarray(shape)
            inside = (start >= -0.5 - 1e-3) & (stop <= edges + 1e-3)
            covers = (start <= -0.5 + 1e-3) & (stop >= edges - 1e-3)
            assert np.all(np.where(fits, inside, covers))


def test_image_smaller_than_crop():
    shape = (6, 9, 5)
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    mask = np.ones(shape, bool)
    out = sample_pair(image, mask, (16, 16, 16), (0.7, 1.5), 20, np.random.default_rng(3))
    assert out["crops"].shape == (2, 1, 16, 16, 16)
    assert np.isfinite(out["crops"]).all() and out["crops"].max() <= 1 and out["crops"].min() >= 0
    assert (out["crops"] == 0).any()  # padding
    assert np.all(out["positions"] >= 0) and np.all(out["positions"] <= 15)


def test_float16_memmap_matches_float32(tmp_path):
    shape = (30, 34, 20)
    image = np.random.default_rng(0).random(shape).astype(np.float16)
    np.save(tmp_path / "img.npy", image)
    mm = np.load(tmp_path / "img.npy", mmap_mode="r")
    mask = interior_mask(shape)
    a = sample_pair(mm, mask, (16, 16, 16), (0.7, 1.5), 32, np.random.default_rng(5))
    b = sample_pair(image.astype(np.float32), mask, (16, 16, 16), (0.7, 1.5), 32, np.random.default_rng(5))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_resample_box_identity_and_outside():
    image = np.random.default_rng(0).random((10, 11, 12), dtype=np.float32)
    np.testing.assert_array_equal(resample_box(image, (2, 3, 4), (1, 1, 1), (5, 6, 7)), image[2:7, 3:9, 4:11])
    out = resample_box(image, (-3, 0, 0), (1, 1, 1), (5, 4, 4))
    assert np.all(out[:3] == 0) and np.array_equal(out[3:], image[:2, :4, :4])
    assert not resample_box(image, (50, 0, 0), (1, 1, 1), (4, 4, 4)).any()


def test_positions_only_in_sparse_body():
    shape = (40, 40, 40)
    image = linear_field(shape)
    mask = np.zeros(shape, bool)
    mask[18:22, 5:35, 10:14] = True  # thin slab
    rng = np.random.default_rng(7)
    for _ in range(5):
        out = sample_pair(image, mask, (16, 16, 16), (0.7, 1.5), 64, rng)
        p = np.rint(source_points(out["boxes"][0], out["positions"][0], (16, 16, 16))).astype(int)
        assert mask[p[:, 0], p[:, 1], p[:, 2]].all()


def test_bad_inputs_raise_screener_error():
    image = np.zeros((10, 10, 10), np.float32)
    rng = np.random.default_rng(0)
    with pytest.raises(ScreenerError, match="empty"):
        sample_pair(image, np.zeros_like(image, bool), (8, 8, 8), (1, 1), 4, rng)
    with pytest.raises(ScreenerError, match="shape"):
        sample_pair(image, np.ones((10, 10, 9), bool), (8, 8, 8), (1, 1), 4, rng)
    with pytest.raises(ScreenerError, match="scale_range"):
        sample_pair(image, np.ones_like(image, bool), (8, 8, 8), (1.5, 1.0), 4, rng)


def test_gather_descriptors_integer_and_linear():
    torch.manual_seed(0)
    feats = torch.randn(2, 5, 6, 7, 8, requires_grad=True)
    ints = torch.stack([torch.randint(0, s, (2, 9)) for s in (6, 7, 8)], -1)
    got = gather_descriptors(feats, ints.float())
    want = torch.stack([feats[b, :, ints[b, :, 0], ints[b, :, 1], ints[b, :, 2]].T for b in range(2)]).reshape(18, 5)
    torch.testing.assert_close(got, want)
    # linear in between grid points along each axis
    a = torch.tensor([[[1.0, 2.0, 3.0]]])
    for axis in range(3):
        step = torch.zeros(3)
        step[axis] = 1.0
        pa, pb = a, a + step
        mid = gather_descriptors(feats[:1], a + 0.25 * step)
        torch.testing.assert_close(
            mid, 0.75 * gather_descriptors(feats[:1], pa) + 0.25 * gather_descriptors(feats[:1], pb)
        )
    got.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    half = gather_descriptors(feats.detach().half(), ints.float())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, want.detach().half().float())


def test_pair_sampler_tensors_seeding_and_spacing():
    shape = (40, 40, 30)
    case = {
        "image": np.random.default_rng(0).random(shape, dtype=np.float32),
        "mask": interior_mask(shape, 2),
        "spacing": (1.0, 1.0, 2.0),
    }
    sampler = PairSampler(
        (16, 16, 16), 32, spacing_range=(1.5, 2.5), augment=ColorAugment(), mask_block_size=4, mask_ratio=0.5, seed=3
    )
    torch.manual_seed(0)
    out = sampler(case)
    assert out["crops"].shape == (2, 2, 16, 16, 16) and out["crops"].dtype == torch.float32
    assert out["positions"].shape == (2, 32, 3) and out["boxes"].shape == (2, 2, 3)
    scales = ((out["boxes"][:, 1] - out["boxes"][:, 0]) / 16).numpy()
    mm = scales * np.array([1.0, 1.0, 2.0])
    assert np.allclose(mm, mm[:, :1], rtol=1e-5) and np.all((mm >= 1.5 - 1e-4) & (mm <= 2.5 + 1e-4))
    again = sampler(case)
    assert not torch.equal(again["boxes"], out["boxes"])  # the stream advances
    torch.manual_seed(0)
    fresh = PairSampler(
        (16, 16, 16), 32, spacing_range=(1.5, 2.5), augment=ColorAugment(), mask_block_size=4, mask_ratio=0.5, seed=3
    )
    replay = fresh(case)
    for key in out:
        assert torch.equal(replay[key], out[key])
    sampler.set_random_state(11)
    a = sampler(case)["boxes"]
    sampler.set_random_state(11)
    assert torch.equal(sampler(case)["boxes"], a)
    with pytest.raises(ScreenerError):
        PairSampler((16, 16, 16), 8)


class _Cases(torch.utils.data.Dataset):
    def __init__(self, case, sampler, n):
        self.case, self.sampler, self.n = case, sampler, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.sampler(self.case)


def test_pair_sampler_workers_get_different_streams():
    shape = (30, 30, 30)
    case = {"image": np.zeros(shape, np.float32), "mask": np.ones(shape, bool)}
    ds = _Cases(case, PairSampler((8, 8, 8), 4, scale_range=(0.7, 1.5)), 2)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)
    boxes = [b["boxes"] for b in loader]
    assert not torch.equal(boxes[0], boxes[1])
