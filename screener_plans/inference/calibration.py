"""Calibrate the suspicious-region threshold on training scans: a high quantile of body scores;
``calibration.json`` (written, checked against the run's present parts, read) lives here too.

Training scans are (mostly) normal, so e.g. the 99.9th percentile of their body-voxel scores
is a threshold that flags about 0.1% of normal tissue. The quantile is computed in one pass
over the score maps with a fixed histogram (the metrics' ``ScoreBinning``), so memory does not
grow with the number of cases and no case is scored twice.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from screener_plans.errors import ScreenerError
from screener_plans.inference.sliding import build_inferer
from screener_plans.inference.smoothing import smooth_in_body
from screener_plans.io_utils import write_json
from screener_plans.layout import calibration_path, plans_file
from screener_plans.metrics.binning import DEFAULT_BINS, ScoreBinning, ScoreRange
from screener_plans.progress import Progress

logger = logging.getLogger("screener.predict")

# Without a given range the bins are fitted to the first map and cover its median +- this many
# of its interquartile ranges. asinh binning is logarithmic away from the median, so the wide
# range costs few bins: with 2^18 bins the resolution is ~1e-6 IQR near the median and ~2e-4
# relative far from it. Later scores beyond the range land in the end bins (still counted).
_RANGE_IQRS = 1e6
_CHUNK = 2**22


class ScoreQuantile:
    """Streaming quantiles of scores over many volumes, with a fixed-size histogram.

    ``lo, hi`` given: bins uniform over ``[lo, hi]``. Otherwise the bins are fitted to the first
    update (robust asinh bins, see ``ScoreBinning.robust``) over a range wide enough for any
    later map. Quantiles are exact up to the width of the bin they fall in (``bin_width``),
    and always lie within the observed finite min and max.
    """

    def __init__(self, lo: float | None = None, hi: float | None = None, bins: int = DEFAULT_BINS):
        self.bins = int(bins)
        self.binning: ScoreBinning | None = None
        if lo is not None or hi is not None:
            if lo is None or hi is None:
                raise ScreenerError("ScoreQuantile needs both lo and hi, or neither")
            self.binning = ScoreBinning(lo, hi, self.bins)
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.min, self.max = np.inf, -np.inf

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def _fit(self, values: np.ndarray) -> ScoreBinning:
        summary = ScoreRange()
        summary.update(values)
        if summary.hi > summary.lo:
            fitted = summary.binning(self.bins)
            center, scale = fitted.center, fitted.scale
        else:  # a constant map (or only infinities) says nothing about the scores' scale
            center = float(summary.lo) if np.isfinite(summary.lo) else 0.0
            scale = 1e-3 * max(1.0, abs(center))
        spread = 0.0 if not summary.hi > summary.lo else summary.hi - summary.lo
        iqr = scale * 100.0  # the robust core is 1% of the IQR
        # The floor keeps later maps in range when the first one is (nearly) constant.
        reach = max(_RANGE_IQRS * iqr, 2.0 * spread, _RANGE_IQRS * max(1.0, abs(center)))
        return ScoreBinning(center - reach, center + reach, self.bins, center=center, scale=scale)

    def update(self, scores: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add the scores where ``mask > 0`` (all when None). Raises ScreenerError on NaN."""
        scores = np.asanyarray(scores)
        if scores.dtype.kind not in "fiub":
            raise ScreenerError(f"scores must be numeric, got dtype {scores.dtype}")
        if mask is not None:
            mask = np.asanyarray(mask)
            if mask.shape != scores.shape:
                raise ScreenerError(f"mask shape {mask.shape} != scores shape {scores.shape}")
            values = scores[mask > 0]
        else:
            values = scores.reshape(-1)
        if values.size == 0:
            return
        if values.dtype.kind == "f" and np.isnan(values).any():
            raise ScreenerError("scores contain NaN")
        if values.dtype.kind != "f":
            values = values.astype(np.float64)
        if self.binning is None:
            self.binning = self._fit(values)
        counts = np.zeros(self.bins, dtype=np.int64)
        for start in range(0, values.size, _CHUNK):
            part = values[start : start + _CHUNK]
            counts += np.bincount(self.binning.index(part), minlength=self.bins)
            finite = part[np.isfinite(part)]
            if finite.size:
                self.min = min(self.min, float(finite.min()))
                self.max = max(self.max, float(finite.max()))
        self.counts += counts

    def merge(self, other: ScoreQuantile) -> None:
        """Add another accumulator's counts (same bins required)."""
        if other.binning is None:
            return
        if self.binning is None:
            self.binning = other.binning
        elif not self.binning.same_as(other.binning):
            raise ValueError("cannot merge ScoreQuantile accumulators with different bins")
        self.counts += other.counts
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    def edges(self, k: np.ndarray) -> np.ndarray:
        """Score at the lower boundary of bin(s) ``k`` (``k = bins`` is the top boundary)."""
        b = self.binning
        t = b._t_lo + np.asarray(k, dtype=np.float64) / b._per_unit
        return t if b.scale is None else b.center + b.scale * np.sinh(t)

    def bin_width(self, value: float) -> float:
        """Width of the bin holding ``value``: the quantiles' resolution there."""
        k = int(self.binning.index(np.asarray([value], dtype=np.float64))[0])
        lo, hi = self.edges(np.array([k, k + 1]))
        return float(hi - lo)

    def _order_statistic(self, rank: np.ndarray, cum: np.ndarray) -> np.ndarray:
        """Value of the voxel of 0-based ``rank`` in sorted order, placed evenly within its bin."""
        k = np.minimum(np.searchsorted(cum, rank, side="right"), self.bins - 1)
        before = np.where(k > 0, cum[np.maximum(k - 1, 0)], 0)
        frac = (rank - before + 0.5) / np.maximum(self.counts[k], 1)
        lo, hi = self.edges(k), self.edges(k + 1)
        return lo + np.clip(frac, 0.0, 1.0) * (hi - lo)

    def quantile(self, q):
        """The ``q``-quantile(s) of the scores seen, defined like ``np.quantile`` (linear).

        The two voxels whose values ``np.quantile`` interpolates are each located within their
        bin, so the result is within one bin width of the exact quantile.
        """
        if self.n == 0:
            raise ScreenerError("no scores to compute a quantile from (empty maps or masks)")
        q_arr = np.asarray(q, dtype=np.float64)
        if np.isnan(q_arr).any() or np.any((q_arr < 0) | (q_arr > 1)):
            raise ScreenerError(f"quantile must be in [0, 1], got {q}")
        cum = np.cumsum(self.counts)
        position = q_arr * (self.n - 1)
        below = np.floor(position)
        weight = position - below
        above = np.minimum(below + 1, self.n - 1)
        value = (1 - weight) * self._order_statistic(below, cum) + weight * self._order_statistic(above, cum)
        if np.isfinite(self.min):
            value = np.clip(value, self.min, self.max)
        return float(value) if value.ndim == 0 else value


def calibrate_threshold(score_maps, quantile: float = 0.999, bins: int = DEFAULT_BINS) -> dict:
    """Threshold = the ``quantile`` of body-voxel scores over training cases.

    ``score_maps`` yields score arrays or ``(score, body_mask)`` pairs (only ``mask > 0``
    counts), e.g. a generator running the scorer case by case. Returns ``{"threshold",
    "quantile", "n_voxels", "n_cases", "resolution"}`` (``resolution``: bin width at the
    threshold, the bound on its error), ready for ``RUN/calibration.json``.
    """
    if not 0.0 < float(quantile) < 1.0:
        raise ScreenerError(f"calibration quantile must be in (0, 1), got {quantile}")
    acc = ScoreQuantile(bins=bins)
    n_cases = 0
    for item in score_maps:
        if isinstance(item, (tuple, list)):
            score, mask = item
        else:
            score, mask = item, None
        acc.update(score, mask)
        n_cases += 1
    if acc.n == 0:
        raise ScreenerError(f"cannot calibrate the threshold: no training scores ({n_cases} case(s), no body voxels)")
    threshold = acc.quantile(float(quantile))
    return {
        "threshold": float(threshold),
        "quantile": float(quantile),
        "n_voxels": acc.n,
        "n_cases": n_cases,
        "resolution": acc.bin_width(threshold),
    }


# ----------------------------------------------------------------------------- a run's calibration.json


def _read_calibration(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        float(data["threshold"])
        return data
    except (ValueError, KeyError, OSError, TypeError) as e:
        raise ScreenerError(f"{path}: unreadable calibration ({e}); delete it and run `screener calibrate`") from None


def _made_with_present_density(run_dir, calibration: dict) -> bool:
    from screener_plans.engines.models import file_digest, model_path

    recorded = calibration.get("density_model")
    now = file_digest(model_path(run_dir, "density")) if recorded is not None else None
    return recorded is None or now is None or recorded == now


def smooth_mm(plans: dict) -> float:
    """Sigma (mm) of the maps' smoothing in the body; calibration records it with the threshold."""
    return float(plans["inference"].get("smooth_mm", 0.0))


def _planned_smoothing(run_dir) -> float:
    from screener_plans.planning.plans import load_plans

    return smooth_mm(load_plans(plans_file(run_dir)))


def _made_with_present_smoothing(run_dir, calibration: dict) -> bool:
    recorded = calibration.get("smooth_mm")  # not recorded (hand-made or older): not checked
    return recorded is None or float(recorded) == _planned_smoothing(run_dir)


def calibration_is_current(run_dir) -> bool:
    """Whether calibration.json exists and was made with the run's present density model and the
    plans' map smoothing."""
    path = calibration_path(run_dir)
    if not path.exists():
        return False
    calibration = _read_calibration(path)
    return _made_with_present_density(run_dir, calibration) and _made_with_present_smoothing(run_dir, calibration)


def load_threshold(run_dir) -> float | None:
    """The region threshold calibrated on the training data, or None when not calibrated yet."""
    path = calibration_path(run_dir)
    if not path.exists():
        return None
    calibration = _read_calibration(path)
    if not _made_with_present_density(run_dir, calibration):
        raise ScreenerError(
            f"{path}: calibrated with another density model than the run's present one; "
            f"run `screener calibrate {run_dir}`"
        )
    if not _made_with_present_smoothing(run_dir, calibration):
        raise ScreenerError(
            f"{path}: calibrated with maps smoothed by {calibration.get('smooth_mm', 0.0)} mm, the plans say "
            f"inference.smooth_mm {_planned_smoothing(run_dir)}; "
            f"run `screener calibrate {run_dir}`"
        )
    return float(calibration["threshold"])


CALIBRATION_CASES = 4  # what `plan-and-train` and `screener calibrate` both score by default


def calibrate(
    run_dir,
    plans: dict | None = None,
    scorer=None,
    device="auto",
    max_cases: int = CALIBRATION_CASES,
    quantile: float | None = None,
    progress: bool = True,
) -> dict:
    """Score up to ``max_cases`` training scans and store the body-voxel score quantile as threshold."""
    from screener_plans.data.dataset import training_cases
    from screener_plans.data.preprocess import load_case
    from screener_plans.device import resolve_device
    from screener_plans.inference.loader import load_scorer
    from screener_plans.planning.plans import load_plans

    plans = plans or load_plans(plans_file(run_dir))
    device = resolve_device(device)
    scorer = (scorer or load_scorer(run_dir, plans)).to(device)
    inferer = build_inferer(plans, device)
    quantile = quantile or plans["inference"]["region_threshold_quantile"]
    names = training_cases(run_dir, plans)
    rng = np.random.default_rng(plans["seed"])
    chosen = [names[i] for i in sorted(rng.choice(len(names), size=min(max_cases, len(names)), replace=False))]
    bar = Progress(len(chosen), "calibrate", enabled=progress)

    def maps():
        for name in chosen:
            image, mask, meta = load_case(run_dir, name)
            score = inferer(scorer, image, meta["crop_origin_mm"], meta["spacing"], device)
            yield smooth_in_body(score, mask, smooth_mm(plans), meta["spacing"]), np.asarray(mask) > 0
            bar.update()

    result = calibrate_threshold(maps(), quantile=quantile)
    from screener_plans.engines.models import file_digest, model_path

    result = {
        **result,
        "cases": chosen,
        "density_model": file_digest(model_path(run_dir, "density")),
        "smooth_mm": smooth_mm(plans),
    }
    write_json(calibration_path(run_dir), result)
    logger.info(
        "calibrated region threshold %.4g (body-voxel quantile %g over %d training cases)",
        result["threshold"],
        quantile,
        len(chosen),
    )
    return result
