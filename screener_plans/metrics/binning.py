"""Score binning for the streaming metrics.

Anomaly scores are unbounded floats (negative log-likelihoods): their bulk may sit anywhere,
and a few voxels can be orders of magnitude away from it. Bins uniform in the raw score would
let one far outlier squeeze the bulk into a handful of bins, so the robust binning is uniform
in ``asinh((score - center) / scale)``: linear within about ``scale`` of ``center``, logarithmic
beyond (a fixed number of bins per decade of distance). Any monotone binning gives exact curve
points at the bin boundaries; the binning only decides how many voxels share a bin, and the
resulting error is bounded a posteriori (see ``accumulator.VoxelMetricAccumulator``).
"""

from __future__ import annotations

import numpy as np

from screener_plans.errors import ScreenerError

DEFAULT_BINS = 2**18

# The linear core of the robust binning is this fraction of the sample's interquartile range:
# small enough that the bulk gets thousands of bins per IQR, and the price is only a few log
# decades more of range to cover.
_CORE_FRACTION_OF_IQR = 0.01


class ScoreBinning:
    """Monotone map from scores to bin indices ``0 .. bins-1`` over the range ``[lo, hi]``.

    ``scale=None`` gives bins uniform in the score; ``scale > 0`` gives bins uniform in
    ``asinh((score - center) / scale)``. Scores outside ``[lo, hi]`` (including +-inf) go to the
    end bins, which keeps the ordering and only coarsens those bins.
    """

    def __init__(
        self, lo: float, hi: float, bins: int = DEFAULT_BINS, center: float | None = None, scale: float | None = None
    ):
        lo, hi, bins = float(lo), float(hi), int(bins)
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
            raise ScreenerError(f"score range must be finite with lo <= hi, got ({lo}, {hi})")
        if bins < 1:
            raise ScreenerError(f"bins must be >= 1, got {bins}")
        if scale is not None and not (np.isfinite(scale) and scale > 0):
            raise ScreenerError(f"binning scale must be a positive finite number, got {scale}")
        self.lo, self.hi, self.bins = lo, hi, bins
        self.scale = None if scale is None else float(scale)
        self.center = float(0.5 * (lo + hi) if center is None else center)
        t_lo, t_hi = self._transform_scalar(lo), self._transform_scalar(hi)
        if not t_hi > t_lo:  # a single score value: any positive width puts it in bin 0
            t_hi = t_lo + 1.0
        self._t_lo = t_lo
        self._per_unit = bins / (t_hi - t_lo)

    @classmethod
    def robust(cls, lo: float, hi: float, sample: np.ndarray, bins: int = DEFAULT_BINS) -> ScoreBinning:
        """asinh binning centred on the sample median, linear core 1% of the sample IQR wide."""
        sample = np.asarray(sample, dtype=np.float64).ravel()
        sample = sample[np.isfinite(sample)]
        lo, hi = float(lo), float(hi)
        if sample.size == 0:
            return cls(lo, hi, bins)
        q25, center, q75 = np.quantile(sample, [0.25, 0.5, 0.75])
        spread = q75 - q25
        if not spread > 0:  # more than half the sample tied: fall back to the wider quantiles
            q01, q99 = np.quantile(sample, [0.01, 0.99])
            spread = q99 - q01
        if not spread > 0:
            spread = hi - lo
        scale = _CORE_FRACTION_OF_IQR * spread
        # A core narrower than float32 resolution at the bulk would only waste bins.
        scale = max(scale, 1e-6 * abs(center), 1e-30)
        return cls(lo, hi, bins, center=float(center), scale=scale)

    def _transform_scalar(self, value: float) -> float:
        if self.scale is None:
            return float(value)
        return float(np.arcsinh((value - self.center) / self.scale))

    def same_as(self, other: ScoreBinning) -> bool:
        return (self.lo, self.hi, self.bins, self.center, self.scale) == (
            other.lo,
            other.hi,
            other.bins,
            other.center,
            other.scale,
        )

    def index(self, scores: np.ndarray) -> np.ndarray:
        """Bin index (intp) of every score; NaN must be excluded by the caller."""
        scores = np.asarray(scores)
        # float32 arithmetic is ~3x faster and finer than the bins; float64 input keeps float64.
        ftype = np.float64 if scores.dtype == np.float64 else np.float32
        if self.scale is None:
            t = np.subtract(scores, ftype(self.lo), dtype=ftype)
            t *= ftype(self._per_unit)
        else:
            t = np.subtract(scores, ftype(self.center), dtype=ftype)
            t *= ftype(1.0 / self.scale)
            np.arcsinh(t, out=t)
            t -= ftype(self._t_lo)
            t *= ftype(self._per_unit)
        # Clip in float before the cast: casting inf or huge values to int is undefined.
        np.clip(t, 0, self.bins - 1, out=t)
        return t.astype(np.intp)


class ScoreRange:
    """First pass over the scores: finite min/max and a bounded sample for the robust binning.

    Each update contributes an evenly strided subset; when the pooled sample exceeds
    ``max_sample`` values every other one is dropped, so memory stays bounded for any number
    of volumes. The sample only sets the binning's centre and scale, so it need not be exact.
    """

    def __init__(self, per_update: int = 8192, max_sample: int = 2**20):
        self.per_update, self.max_sample = int(per_update), int(max_sample)
        self.lo, self.hi = np.inf, -np.inf
        self.count = 0
        self._parts: list[np.ndarray] = []
        self._n_sample = 0

    def update(self, scores: np.ndarray) -> None:
        """Add scores (any shape). Raises ScreenerError on NaN."""
        flat = np.asarray(scores).ravel()
        if flat.size == 0:
            return
        if flat.dtype.kind not in "fiub":
            raise ScreenerError(f"scores must be numeric, got dtype {flat.dtype}")
        if flat.dtype.kind == "f" and np.isnan(flat).any():
            raise ScreenerError("scores contain NaN")
        finite = flat
        if flat.dtype.kind == "f":
            is_finite = np.isfinite(flat)
            if not is_finite.all():
                finite = flat[is_finite]
        self.count += flat.size
        if finite.size == 0:
            return
        self.lo = min(self.lo, float(finite.min()))
        self.hi = max(self.hi, float(finite.max()))
        step = max(1, finite.size // self.per_update)
        part = np.array(finite[step // 2 :: step], dtype=np.float64)
        self._parts.append(part)
        self._n_sample += part.size
        if self._n_sample > self.max_sample:
            merged = np.concatenate(self._parts)[::2]
            self._parts, self._n_sample = [merged], merged.size

    @property
    def sample(self) -> np.ndarray:
        return np.concatenate(self._parts) if self._parts else np.zeros(0)

    def binning(self, bins: int = DEFAULT_BINS) -> ScoreBinning:
        """Robust binning over the observed range (a dummy range if only +-inf were seen)."""
        if not self.lo <= self.hi:
            return ScoreBinning(0.0, 1.0, bins)
        return ScoreBinning.robust(self.lo, self.hi, self.sample, bins)
