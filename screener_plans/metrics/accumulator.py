"""Streaming, binned AUROC / partial AUROC / AUPRO over many 3D volumes.

Three fixed histograms over score bins replace a global sort: negative-voxel counts,
positive-voxel counts, and the sum over ground-truth regions of (region voxels in the bin /
region size). PRO(t) is the mean over regions of each region's fraction of voxels scoring
>= t, so the third histogram, cumulated from the top and divided by the number of regions,
is the PRO curve: memory is O(bins) whatever the number of regions or voxels.

Accuracy: curve points at bin boundaries are exact (the binning is monotone); each bin is
treated like a run of tied scores, i.e. joined by a straight segment, which is what sklearn
does for true ties. Between two boundaries the exact curve is monotone, so it stays in the
box spanned by the two points, and the area error per bin is at most half the box
(dFPR x dTPR / 2). ``error_bounds()`` returns the sum of these boxes; with the default 2^18
robust bins it is typically < 1e-4.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from screener_plans.errors import ScreenerError
from screener_plans.metrics.binning import DEFAULT_BINS, ScoreBinning, ScoreRange

MAX_FPR = 0.3

# Voxels handled per step inside one volume: bounds temporaries to ~100 MB.
_CHUNK_VOXELS = 2**22


def _slabs(shape: tuple[int, ...], axis: int, chunk: int = _CHUNK_VOXELS):
    """Index tuples cutting an array of ``shape`` into slabs along ``axis``."""
    per_slice = max(1, math.prod(shape) // max(shape[axis], 1))
    step = max(1, chunk // per_slice)
    for start in range(0, shape[axis], step):
        index = [slice(None)] * len(shape)
        index[axis] = slice(start, start + step)
        yield tuple(index)


def partial_area(x: np.ndarray, y: np.ndarray, max_x: float = 1.0) -> tuple[float, float]:
    """Normalised area under the piecewise-linear curve (x, y) for x in [0, max_x], and its bound.

    ``x`` must be non-decreasing from 0. The curve is interpolated linearly at exactly ``max_x``.
    Returns ``(area / max_x, error_bound / max_x)`` where the bound assumes the exact curve is
    monotone between consecutive points (half the box per full segment, the whole box for the
    segment cut at ``max_x``).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    dx, dy = np.diff(x), np.diff(y)
    k = int(np.searchsorted(x, max_x, side="right")) - 1  # last point with x <= max_x
    area = float(np.sum(dx[:k] * (y[1 : k + 1] + y[:k]) * 0.5))
    bound = float(np.sum(dx[:k] * np.abs(dy[:k]))) * 0.5
    if k < len(x) - 1 and x[k] < max_x:
        width = max_x - x[k]
        y_cut = y[k] + dy[k] * (width / dx[k])
        area += width * 0.5 * (y[k] + y_cut)
        bound += width * abs(dy[k])
    return float(area / max_x), float(bound / max_x)


class VoxelMetricAccumulator:
    """Accumulates per-bin voxel counts over volumes; ``compute()`` gives the three metrics.

    ``lo, hi``: score range of the bins (scores outside go to the end bins); ``bins``: number
    of bins; ``center, scale``: see ``ScoreBinning`` (``scale=None`` = uniform bins). Labels > 0
    are anomalous; regions for AUPRO are 26-connected components of ``labels > 0`` in each
    volume (instance ids are not used to split touching lesions), restricted to the mask;
    regions of different volumes are distinct and pooled.
    """

    def __init__(
        self, lo: float, hi: float, bins: int = DEFAULT_BINS, center: float | None = None, scale: float | None = None
    ):
        self._init(ScoreBinning(lo, hi, bins, center=center, scale=scale))

    def _init(self, binning: ScoreBinning) -> None:
        self.binning = binning
        self.counts = np.zeros((2, binning.bins), dtype=np.int64)  # [negative, positive]
        self.overlap = np.zeros(binning.bins, dtype=np.float64)  # sum over regions of hist/size
        self.n_regions = 0

    @classmethod
    def from_binning(cls, binning: ScoreBinning) -> VoxelMetricAccumulator:
        acc = cls.__new__(cls)
        acc._init(binning)
        return acc

    @classmethod
    def for_scores(cls, scores, mask=None, bins: int = DEFAULT_BINS) -> VoxelMetricAccumulator:
        """Empty accumulator with robust bins fitted to in-memory scores (one array or a list)."""
        summary = ScoreRange()
        volumes = scores if isinstance(scores, (list, tuple)) else [scores]
        masks = mask if isinstance(mask, (list, tuple)) else [mask] * len(volumes)
        for volume, m in zip(volumes, masks):
            volume = np.asanyarray(volume)
            summary.update(volume if m is None else volume[np.asanyarray(m) > 0])
        return cls.from_binning(summary.binning(bins))

    def empty_like(self) -> VoxelMetricAccumulator:
        """A new empty accumulator with the same bins (e.g. for one case, merged later)."""
        return type(self).from_binning(self.binning)

    def merge(self, other: VoxelMetricAccumulator) -> None:
        """Add another accumulator's voxels and regions (same bins required)."""
        if not self.binning.same_as(other.binning):
            raise ValueError("cannot merge accumulators with different bins")
        self.counts += other.counts
        self.overlap += other.overlap
        self.n_regions += other.n_regions

    @property
    def n_negative(self) -> int:
        return int(self.counts[0].sum())

    @property
    def n_positive(self) -> int:
        return int(self.counts[1].sum())

    def update(self, scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add one volume: scores (float), labels (binary or instance ids), optional eval mask.

        Only voxels with ``mask > 0`` count. Raises ScreenerError (and adds nothing) on NaN
        scores or mismatched shapes. Works in slabs so temporaries stay small.
        """
        scores = np.atleast_1d(np.asanyarray(scores))
        labels = np.atleast_1d(np.asanyarray(labels))
        if scores.shape != labels.shape:
            raise ScreenerError(f"scores shape {scores.shape} != labels shape {labels.shape}")
        if scores.dtype.kind not in "fiub":
            raise ScreenerError(f"scores must be numeric, got dtype {scores.dtype}")
        if mask is not None:
            mask = np.atleast_1d(np.asanyarray(mask))
            if mask.shape != scores.shape:
                raise ScreenerError(f"mask shape {mask.shape} != scores shape {scores.shape}")
        # Slab along the axis that is contiguous in memory (nibabel returns Fortran order).
        fortran = scores.ndim > 1 and scores.flags.f_contiguous and not scores.flags.c_contiguous
        axis = scores.ndim - 1 if fortran else 0

        regions = np.empty(scores.shape, dtype=np.int32, order="F" if fortran else "C")
        structure = np.ones((3,) * scores.ndim, dtype=bool)  # 26-connectivity in 3D
        n_found = ndimage.label(labels > 0, structure=structure, output=regions)
        slabs = list(_slabs(scores.shape, axis))

        order = "F" if fortran else "C"  # one logical order for scores and regions, no copies

        def take(array, index, mask_slab):
            part = array[index]
            return part.ravel(order=order) if mask_slab is None else part[mask_slab]

        sizes = np.zeros(n_found + 1, dtype=np.int64)
        if n_found:
            for index in slabs:
                m = None if mask is None else mask[index] > 0
                sizes += np.bincount(take(regions, index, m), minlength=n_found + 1)
        present = sizes[1:] > 0
        inverse_size = np.zeros(n_found + 1, dtype=np.float64)
        inverse_size[1:][present] = 1.0 / sizes[1:][present]

        bins = self.binning.bins
        counts = np.zeros(2 * bins, dtype=np.int64)
        overlap = np.zeros(bins, dtype=np.float64)
        for index in slabs:
            m = None if mask is None else mask[index] > 0
            s = take(scores, index, m)
            if s.dtype.kind == "f" and np.isnan(s).any():
                raise ScreenerError("scores contain NaN")
            r = take(regions, index, m)
            bin_index = self.binning.index(s)
            positive = r > 0
            counts += np.bincount(bin_index + bins * positive, minlength=2 * bins)
            if n_found:
                overlap += np.bincount(bin_index[positive], weights=inverse_size[r[positive]], minlength=bins)
        # Commit only after the whole volume passed the checks.
        self.counts += counts.reshape(2, bins)
        self.overlap += overlap
        self.n_regions += int(present.sum())

    def undefined_reason(self) -> str | None:
        """Why the metrics are undefined (no positive / no negative voxels), or None."""
        if self.n_positive == 0 and self.n_negative == 0:
            return "no voxels inside the evaluation mask"
        if self.n_positive == 0:
            return "no positive (label > 0) voxels inside the evaluation mask"
        if self.n_negative == 0:
            return "no negative (label 0) voxels inside the evaluation mask"
        return None

    def curves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(FPR, TPR, PRO) at bin boundaries, thresholds descending, starting at (0, 0, 0)."""
        occupied = self.counts.sum(axis=0) > 0  # empty bins add only duplicate points
        neg = self.counts[0, occupied][::-1]
        pos = self.counts[1, occupied][::-1]
        over = self.overlap[occupied][::-1]

        def cumulative(values, total):
            curve = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
            return curve / total if total > 0 else np.full(curve.shape, np.nan)

        # The overlap sums to n_regions up to rounding; dividing by its own running total makes
        # PRO end at exactly 1 (a perfect predictor then scores exactly 1).
        over_total = float(np.cumsum(over)[-1]) if self.n_regions and over.size else 0.0
        return (cumulative(neg, self.n_negative), cumulative(pos, self.n_positive), cumulative(over, over_total))

    def _areas(self, max_fpr: float) -> dict[str, tuple[float, float]]:
        if not 0.0 < max_fpr <= 1.0:
            raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
        nan = (math.nan, math.nan)
        if self.undefined_reason() is not None:
            return {"auroc": nan, "auroc_fpr": nan, "aupro_fpr": nan}
        fpr, tpr, pro = self.curves()
        return {
            "auroc": partial_area(fpr, tpr, 1.0),
            "auroc_fpr": partial_area(fpr, tpr, max_fpr),
            "aupro_fpr": partial_area(fpr, pro, max_fpr) if self.n_regions else nan,
        }

    def compute(self) -> dict[str, float]:
        """``{"auroc", "auroc_fpr03", "aupro_fpr03"}``; NaN where undefined (see undefined_reason)."""
        areas = self._areas(MAX_FPR)
        return {"auroc": areas["auroc"][0], "auroc_fpr03": areas["auroc_fpr"][0], "aupro_fpr03": areas["aupro_fpr"][0]}

    def error_bounds(self) -> dict[str, float]:
        """Upper bounds on |binned - exact| for each metric of ``compute()`` (same keys)."""
        areas = self._areas(MAX_FPR)
        return {"auroc": areas["auroc"][1], "auroc_fpr03": areas["auroc_fpr"][1], "aupro_fpr03": areas["aupro_fpr"][1]}

    def partial_auroc(self, max_fpr: float = MAX_FPR) -> float:
        return self._areas(max_fpr)["auroc_fpr"][0]

    def aupro(self, max_fpr: float = MAX_FPR) -> float:
        return self._areas(max_fpr)["aupro_fpr"][0]
