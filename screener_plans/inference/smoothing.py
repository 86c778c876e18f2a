"""Gaussian smoothing of an anomaly map inside the body (normalised convolution).

A voxel's NLL is noisy at voxel scale while lesions span several voxels, so averaging each score
with its neighbours' ranks lesions above isolated high-scoring normal voxels (anomalib smooths its
maps the same way). Only body voxels are averaged: the weights are renormalised by the smoothed
body mask, so the air around the body never leaks into the skin's scores.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_in_body(score: np.ndarray, body: np.ndarray | None, sigma_mm: float, spacing) -> np.ndarray:
    """``score`` averaged with a Gaussian of ``sigma_mm`` over body voxels; the outside unchanged."""
    score = np.asarray(score, dtype=np.float32)
    if not sigma_mm or sigma_mm <= 0:
        return score
    sigma = [float(sigma_mm) / float(s) for s in spacing]
    if body is None:
        return ndimage.gaussian_filter(score, sigma, mode="nearest").astype(np.float32, copy=False)
    inside = np.asarray(body) > 0
    weight = ndimage.gaussian_filter(inside.astype(np.float32), sigma, mode="constant")
    total = ndimage.gaussian_filter(np.where(inside, score, 0.0).astype(np.float32), sigma, mode="constant")
    out = score.copy()
    ok = inside & (weight > 1e-6)
    out[ok] = total[ok] / weight[ok]
    return out
