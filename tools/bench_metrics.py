"""Benchmark the streaming metrics on synthetic volumes (default 10 x 216^3 ~ 10^8 voxels).

Each volume gets random float32 scores, planted spherical lesions (scored higher) and a few
far outliers; volumes are generated in memory one at a time (never written to disk) and fed
through the same two passes as ``evaluate``: score range/bulk, then one accumulator per case
merged into the pooled one. Prints one JSON line with timings (generation excluded) and the
peak resident memory of the process.

    python tools/bench_metrics.py [--volumes 10] [--side 216] [--bins 262144]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from screener_plans.memory import peak_rss_mb
from screener_plans.metrics import DEFAULT_BINS, ScoreRange, VoxelMetricAccumulator


def synthetic_volume(seed: int, side: int, lesions: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Fortran-ordered (like nibabel) float32 scores and uint8 labels with spherical lesions."""
    rng = np.random.default_rng(seed)
    scores = np.asfortranarray(rng.standard_normal((side,) * 3, dtype=np.float32))
    labels = np.zeros((side,) * 3, dtype=np.uint8, order="F")
    for _ in range(lesions):
        radius = int(rng.integers(2, max(3, side // 20)))
        center = rng.integers(radius, side - radius, size=3)
        box = tuple(slice(c - radius, c + radius + 1) for c in center)
        x, y, z = np.ogrid[-radius : radius + 1, -radius : radius + 1, -radius : radius + 1]
        ball = x**2 + y**2 + z**2 <= radius**2
        labels[box][ball] = 1
        scores[box][ball] += np.float32(rng.uniform(0.5, 3.0))
    flat = scores.reshape(-1, order="A")
    flat[rng.integers(0, flat.size, size=5)] = np.float32(1e6)  # density blow-ups
    return scores, labels


def main(volumes: int = 10, side: int = 216, bins: int = DEFAULT_BINS) -> dict:
    timings = {"generate": 0.0, "first_pass": 0.0, "accumulate": 0.0, "compute": 0.0}
    rss_start = peak_rss_mb()

    score_range = ScoreRange()
    for i in range(volumes):
        t0 = time.perf_counter()
        scores, _ = synthetic_volume(i, side)
        t1 = time.perf_counter()
        score_range.update(scores)
        timings["generate"] += t1 - t0
        timings["first_pass"] += time.perf_counter() - t1
        del scores

    pooled = VoxelMetricAccumulator.from_binning(score_range.binning(bins))
    for i in range(volumes):
        t0 = time.perf_counter()
        scores, labels = synthetic_volume(i, side)
        t1 = time.perf_counter()
        case = pooled.empty_like()
        case.update(scores, labels)
        case.compute()  # per-case metrics, as evaluate reports them
        pooled.merge(case)
        timings["generate"] += t1 - t0
        timings["accumulate"] += time.perf_counter() - t1
        del scores, labels

    t0 = time.perf_counter()
    metrics = pooled.compute()
    bounds = pooled.error_bounds()
    timings["compute"] = time.perf_counter() - t0

    voxels = volumes * side**3
    metric_seconds = timings["first_pass"] + timings["accumulate"] + timings["compute"]
    report = {
        "voxels": voxels,
        "volumes": volumes,
        "bins": bins,
        "seconds_metrics": round(metric_seconds, 2),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "voxels_per_second": round(voxels / metric_seconds),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_after_imports_mb": round(rss_start, 1),
        "volume_mb": round(side**3 * 4 / 2**20, 1),
        "n_regions": pooled.n_regions,
        "metrics": {k: round(v, 6) for k, v in metrics.items()},
        "error_bound": {k: float(f"{v:.2e}") for k, v in bounds.items()},
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=10)
    parser.add_argument("--side", type=int, default=216)
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS)
    args = parser.parse_args()
    main(args.volumes, args.side, args.bins)
