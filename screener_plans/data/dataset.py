"""Training datasets over the preprocessing cache.

Item ``i`` is a pure function of (seed, rank, i): which case, where the crops fall and how they
are augmented. A resumed run therefore sees exactly the samples the uninterrupted run would
have seen, whatever the number of loader workers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from screener_plans.data.preprocess import cached_cases, load_case
from screener_plans.errors import ScreenerError


class CaseCache:
    """Memory-mapped cached cases, opened lazily once per worker process."""

    def __init__(self, run_dir, names):
        self.run_dir, self.names = str(run_dir), list(names)
        self._open: dict[str, dict] = {}

    def __len__(self) -> int:
        return len(self.names)

    def get(self, index: int) -> dict:
        name = self.names[index]
        if name not in self._open:
            image, mask, meta = load_case(self.run_dir, name)
            self._open[name] = {
                "image": image,
                "mask": mask,
                "spacing": meta["spacing"],
                "origin_mm": meta["crop_origin_mm"],
                "name": name,
            }
        return self._open[name]


def training_cases(run_dir, plans) -> list[str]:
    """Cached cases for training; a clear error when preprocessing has not run."""
    names = cached_cases(run_dir, plans)
    if not names:
        raise ScreenerError(f"{run_dir}: no preprocessed cases for these plans; run `screener preprocess {run_dir}`")
    return names


class _IndexedDataset(Dataset):
    def __init__(self, run_dir, plans, length: int, seed: int | None = None, rank: int = 0, names=None):
        self.cases = CaseCache(run_dir, names or training_cases(run_dir, plans))
        self.length = int(length)
        self.seed = int(plans["seed"] if seed is None else seed)
        self.rank = int(rank)

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt, self.rank, int(index)])


class PairDataset(_IndexedDataset):
    """Positive pairs for the descriptor (1 channel) or condition (masked image + mask) model."""

    def __init__(self, run_dir, plans, length: int, stage: str = "descriptor", **kw):
        from screener_plans.data.pairs import PairSampler

        super().__init__(run_dir, plans, length, **kw)
        masked = stage == "condition"
        self.salt = 1 if masked else 0
        self.sampler = PairSampler(
            crop_size=plans["crop_size"],
            n_positions=plans["pairs_per_crop"],
            scale_range=tuple(plans["crop_scale"]),
            augment=color_augment(plans),
            mask_block_size=plans["masking"]["block_size"] if masked else None,
            mask_ratio=plans["masking"]["ratio"] if masked else 0.0,
        )

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index, self.salt)
        case = self.cases.get(int(rng.integers(len(self.cases))))
        out = self.sampler(case, rng=rng)
        return {"crops": out["crops"], "positions": out["positions"]}


def color_augment(plans: dict):
    """The plans' colour augmentation, converted from HU to the [0, 1] window scale."""
    from screener_plans.data.augment import ColorAugment

    aug = plans["augment"]
    lo, hi = plans["intensity"]["window"]
    per_hu = 1.0 / (hi - lo)
    c = aug["contrast"]
    return ColorAugment(
        brightness=aug["brightness_hu"] * per_hu,
        contrast=(1 - c, 1 + c),
        gamma=(1 - c, 1 / (1 - c)),
        noise_std=(0.0, aug["noise_hu"] * per_hu),
        blur_sigma=(0.0, aug["blur_sigma"]),
        sharpen=(0.0, 0.5),
    )


def random_crop(image, mask, crop_size, rng: np.random.Generator):
    """A crop of ``crop_size`` that contains a random body voxel (zero-padded at the borders).

    Returns (crop float32 (1, *crop_size), start index of the crop in the cached volume).
    """
    shape = np.asarray(image.shape)
    crop = np.asarray(crop_size)
    body = np.flatnonzero(np.asarray(mask[::4, ::4, ::4]).ravel())
    if body.size:
        centre = np.array(np.unravel_index(int(rng.choice(body)), mask[::4, ::4, ::4].shape)) * 4
    else:
        centre = shape // 2
    lo = np.minimum(np.maximum(centre - rng.integers(0, crop), 0), np.maximum(shape - crop, 0))
    lo = np.where(shape < crop, -((crop - shape) // 2), lo)
    return crop_at(image, lo, crop_size)[None], lo


def crop_at(volume, start, crop_size, dtype=np.float32) -> np.ndarray:
    """The ``crop_size`` block of ``volume`` from index ``start`` (zero outside the volume)."""
    out = np.zeros(tuple(crop_size), dtype=dtype)
    src = tuple(slice(max(a, 0), min(a + c, n)) for a, c, n in zip(start, crop_size, volume.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, start))
    out[dst] = np.asarray(volume[src], dtype=dtype)
    return out


class CropDataset(_IndexedDataset):
    """Random crops at the cached resolution, with their position in mm (for sin-cos conditions).

    With ``anomalies`` (settings of ``data/anomalies.py``; ``{}`` for its defaults) each crop gets
    synthetic anomalies painted in (a crop of another random place lends the foreign ones) and the
    item holds their soft mask as ``target`` (1, X, Y, Z): the contrastive density's training data.
    """

    def __init__(self, run_dir, plans, length: int, anomalies: dict | None = None, **kw):
        super().__init__(run_dir, plans, length, **kw)
        self.plans_crop = tuple(plans["crop_size"])
        self.anomalies = None
        if anomalies is not None:
            from screener_plans.data.anomalies import SyntheticAnomalies

            self.anomalies = SyntheticAnomalies(plans["intensity"]["window"], **anomalies)

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index, 2)
        case = self.cases.get(int(rng.integers(len(self.cases))))
        crop, start = random_crop(case["image"], case["mask"], self.plans_crop, rng)
        spacing = np.asarray(case["spacing"], dtype=np.float32)
        origin = np.asarray(case["origin_mm"], dtype=np.float32) + start * spacing
        item = {
            "image": torch.from_numpy(crop),
            "origin_mm": torch.from_numpy(origin.astype(np.float32)),
            "spacing": torch.from_numpy(spacing),
        }
        if self.anomalies is not None:
            body = crop_at(case["mask"], start, self.plans_crop, dtype=bool)
            other = self.cases.get(int(rng.integers(len(self.cases))))
            donor, _ = random_crop(other["image"], other["mask"], self.plans_crop, rng)
            image, target = self.anomalies(item["image"][0], body, spacing, rng, donor=torch.from_numpy(donor[0]))
            item["image"], item["target"] = image[None], target[None]
        return item


class ResumableSampler(Sampler):
    """Sequential indices from ``start`` to ``stop``: a resumed run continues where it stopped."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = int(start), int(stop)

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
