"""Metrics of in-memory arrays, via the streaming accumulator.

``scores`` / ``labels`` (/ ``mask``) are either one array each or equal-length lists of
arrays (volumes), pooled as in ``evaluate``. Results agree with exact (sort-based)
computations to within ``VoxelMetricAccumulator.error_bounds()``.
"""

from __future__ import annotations

from screener_plans.metrics.accumulator import MAX_FPR, VoxelMetricAccumulator
from screener_plans.metrics.binning import DEFAULT_BINS


def accumulate(scores, labels, mask=None, bins: int = DEFAULT_BINS) -> VoxelMetricAccumulator:
    """Accumulator (robust bins fitted to the scores) holding all given volumes."""
    many = isinstance(scores, (list, tuple))
    volumes = list(scores) if many else [scores]
    label_volumes = list(labels) if many else [labels]
    if len(label_volumes) != len(volumes):
        raise ValueError(f"{len(volumes)} score volumes but {len(label_volumes)} label volumes")
    masks = [None] * len(volumes) if mask is None else (list(mask) if many else [mask])
    acc = VoxelMetricAccumulator.for_scores(volumes, masks, bins=bins)
    for s, y, m in zip(volumes, label_volumes, masks):
        acc.update(s, y, m)
    return acc


def auroc(scores, labels, mask=None) -> float:
    """Voxel-level area under the ROC curve (NaN without positives or negatives)."""
    return accumulate(scores, labels, mask).compute()["auroc"]


def partial_auroc(scores, labels, max_fpr: float = MAX_FPR, mask=None) -> float:
    """Area under the ROC curve for FPR in [0, max_fpr], divided by max_fpr (no McClish correction)."""
    return accumulate(scores, labels, mask).partial_auroc(max_fpr)


def aupro(scores, labels, max_fpr: float = MAX_FPR, mask=None) -> float:
    """Area under the per-region-overlap curve for FPR in [0, max_fpr], divided by max_fpr.

    Regions are 26-connected components of ``labels > 0`` (per volume, pooled over volumes).
    """
    return accumulate(scores, labels, mask).aupro(max_fpr)
