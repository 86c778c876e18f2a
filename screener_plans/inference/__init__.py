"""Sliding-window anomaly maps, mapping back to the input grid, regions, overlays, calibration."""

from screener_plans.inference import features, loader, predict, sliding  # noqa: F401  (bundle configs import these)
