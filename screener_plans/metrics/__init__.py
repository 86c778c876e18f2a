"""Anomaly-segmentation metrics for 3D volumes: AUROC, AUROC up to FPR 0.3, AUPRO up to FPR 0.3.

Streaming and binned (no global sort), so they scale to 10^8+ voxels in bounded memory.
"""

from screener_plans.metrics.accumulator import MAX_FPR, VoxelMetricAccumulator, partial_area
from screener_plans.metrics.binning import DEFAULT_BINS, ScoreBinning, ScoreRange
from screener_plans.metrics.evaluate import evaluate
from screener_plans.metrics.functional import accumulate, aupro, auroc, partial_auroc

__all__ = [
    "DEFAULT_BINS",
    "MAX_FPR",
    "ScoreBinning",
    "ScoreRange",
    "VoxelMetricAccumulator",
    "accumulate",
    "aupro",
    "auroc",
    "evaluate",
    "partial_area",
    "partial_auroc",
]
