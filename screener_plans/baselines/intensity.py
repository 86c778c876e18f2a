"""Intensity-only density baseline: score = -log p(HU) of each voxel, ignoring all context.

``p`` is a histogram of body-voxel intensities over the preprocessed training cache, with one
bin per Hounsfield unit of the plans' window. The cache stores window-scaled values in [0, 1]
(float16), so a bin is ``1 / (hi - lo)`` wide on that scale; values clipped to the window's
ends land in the first and last bin, which then hold "at or below lo" and "at or above hi".
The interior is Gaussian-smoothed (float16 storage leaves some 1-HU bins empty near the top
of the window, and CT noise makes a few HU of smoothing harmless) and floored, so no intensity
gets an infinite score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from screener_plans.errors import ScreenerError
from screener_plans.io_utils import atomic_path


def intensity_path(run_dir) -> Path:
    return Path(run_dir) / "baselines" / "intensity.npz"


def bin_index(values, n_bins: int) -> np.ndarray:
    """Bin of each window-scaled value in [0, 1] (float32 arithmetic, as in ``IntensityScorer``)."""
    v = np.asarray(values, dtype=np.float32)
    idx = np.floor(v * np.float32(n_bins)).astype(np.int64)
    return np.clip(idx, 0, n_bins - 1)


class IntensityScorer(nn.Module):
    """``forward(window (B,1,X,Y,Z), origin_mm, spacing) -> -log p`` per voxel: a lookup table.

    Same call signature as Screener's scorer, so ``Predictor``, ``calibrate`` and
    ``ScorerInferer`` use it unchanged.
    """

    def __init__(self, neg_log_prob: np.ndarray):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(np.asarray(neg_log_prob, dtype=np.float32)))

    def forward(self, image: torch.Tensor, origin_mm: torch.Tensor = None, spacing: torch.Tensor = None):
        n = self.table.numel()
        idx = torch.floor(image.float() * n).long().clamp_(0, n - 1)
        return self.table[idx]


class IntensityBaseline:
    """Histogram density of body-voxel intensities; ``counts`` has one bin per HU of ``window``."""

    def __init__(self, counts: np.ndarray, window, smooth_hu: float = 2.0, floor: float = 1e-7):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.window = [float(window[0]), float(window[1])]
        self.smooth_hu, self.floor = float(smooth_hu), float(floor)
        self.n_cases: int | None = None  # training cases behind the histogram, when fitted here
        if self.counts.ndim != 1 or self.counts.size < 1 or self.counts.sum() <= 0:
            raise ScreenerError("intensity baseline: the histogram is empty (no body voxels)")
        self.prob = self._probabilities()
        self.neg_log_prob = (-np.log(self.prob)).astype(np.float32)

    @property
    def n_bins(self) -> int:
        return int(self.counts.size)

    def _probabilities(self) -> np.ndarray:
        from scipy.ndimage import gaussian_filter1d

        c = self.counts.astype(np.float64)
        sigma = self.smooth_hu * self.n_bins / (self.window[1] - self.window[0])
        if sigma > 0 and c.size > 3:
            # The end bins hold everything clipped to the window: not 1-HU bins, so not smoothed
            # (spreading their spikes would inflate the density just inside the window).
            c[1:-1] = gaussian_filter1d(c[1:-1], sigma, mode="nearest")
        p = c / c.sum()
        p = np.maximum(p, self.floor)
        return p / p.sum()

    @classmethod
    def fit(
        cls, run_dir, plans: dict, max_cases: int | None = None, smooth_hu: float = 2.0, floor: float = 1e-7
    ) -> IntensityBaseline:
        """Histogram of body voxels over the run's preprocessed training cases (the first ``max_cases``)."""
        from screener_plans.data.dataset import training_cases
        from screener_plans.data.preprocess import load_case

        lo, hi = plans["intensity"]["window"]
        n_bins = max(1, int(round(hi - lo)))
        names = training_cases(run_dir, plans)
        if max_cases:
            names = names[: int(max_cases)]
        counts = np.zeros(n_bins, dtype=np.int64)
        for name in names:
            image, mask, _ = load_case(run_dir, name)
            body = np.asarray(image)[np.asarray(mask) > 0]
            counts += np.bincount(bin_index(body, n_bins), minlength=n_bins)
        out = cls(counts, (lo, hi), smooth_hu=smooth_hu, floor=floor)
        out.n_cases = len(names)
        return out

    def score_cache(self, image_cache: np.ndarray) -> np.ndarray:
        """-log p of every voxel of a window-scaled volume (float32, same shape)."""
        return self.neg_log_prob[bin_index(image_cache, self.n_bins)]

    def scorer(self) -> IntensityScorer:
        """The baseline as a scorer module (eval mode) for ``Predictor`` / ``ScorerInferer``."""
        return IntensityScorer(self.neg_log_prob).eval()

    def save(self, path) -> Path:
        path = Path(path)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(
                tmp,
                counts=self.counts,
                window=np.asarray(self.window, dtype=np.float64),
                smooth_hu=np.float64(self.smooth_hu),
                floor=np.float64(self.floor),
            )
        return path

    @classmethod
    def load(cls, path) -> IntensityBaseline:
        path = Path(path)
        try:
            with np.load(path) as z:
                return cls(z["counts"], z["window"].tolist(), smooth_hu=float(z["smooth_hu"]), floor=float(z["floor"]))
        except (OSError, KeyError, ValueError) as e:
            raise ScreenerError(f"{path}: cannot load the intensity baseline ({e})") from None
