"""Dataset fingerprint: per-case geometry and body-voxel HU statistics, cached per case.

Each case is read in a worker process (one volume in memory per worker). Per-case results are
cached under ``RUN_DIR/.cache/fingerprint`` keyed by path, size and mtime, so re-running on a
grown archive reads only the new scans. Pooled HU statistics come from a bounded random sample
of body voxels per case, kept as a 1-HU histogram so memory does not grow with the case count.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from screener_plans.data.body import body_mask, bounding_box
from screener_plans.data.checks import validate_ct
from screener_plans.data.geometry import to_ras
from screener_plans.data.readers import CaseSource, find_cases, read_case
from screener_plans.errors import BadCaseError, ScreenerError
from screener_plans.io_utils import make_dirs, write_json
from screener_plans.layout import fingerprint_file
from screener_plans.parallel import default_workers, map_cases
from screener_plans.progress import Progress

FINGERPRINT_VERSION = 1
HIST_LO, HIST_HI = -1024, 4096  # 1-HU bins; values outside are clipped into the end bins
SAMPLE_PER_CASE = 50_000
MAX_MASK_SIDE = 256  # body masks for the fingerprint are computed on a grid no finer than this in-plane


def _case_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:4], "little")


def fingerprint_image(name: str, hu: np.ndarray, affine: np.ndarray) -> dict:
    """Fingerprint of one HU volume in file order with its RAS affine."""
    ras, ras_affine, ornt = to_ras(hu, affine)
    spacing = np.sqrt((ras_affine[:3, :3] ** 2).sum(axis=0))
    direction = ras_affine[:3, :3] / spacing
    oblique = bool(np.abs(np.abs(direction) - np.eye(3)).max() > 1e-3)
    # The mask only needs to be coarse here; stride in-plane so huge scans stay cheap.
    stride = max(1, int(np.ceil(max(ras.shape[0], ras.shape[1]) / MAX_MASK_SIDE)))
    small = ras[::stride, ::stride, :]
    mask = body_mask(small)
    n_body_small = int(mask.sum())
    if n_body_small == 0:
        raise BadCaseError(name, "no body found (no connected region above -500 HU)")
    start, stop = bounding_box(mask)
    scale = np.array([stride, stride, 1])
    bbox_shape = [int(min(ras.shape[a], (stop[a] - start[a]) * scale[a])) for a in range(3)]
    body_vals = small[mask]
    rng = np.random.default_rng(_case_seed(name))
    sample = body_vals if body_vals.size <= SAMPLE_PER_CASE else rng.choice(body_vals, SAMPLE_PER_CASE, replace=False)
    hist_idx = np.clip(np.round(sample).astype(np.int64), HIST_LO, HIST_HI - 1) - HIST_LO
    hist = np.bincount(hist_idx, minlength=HIST_HI - HIST_LO)
    nz = np.flatnonzero(hist)
    p = np.percentile(body_vals, [0.5, 50, 99.5])
    return {
        "name": name,
        "shape": [int(s) for s in ras.shape],
        "spacing": [float(s) for s in spacing],
        "orientation": "".join(_axcodes(affine)),
        "oblique": oblique,
        "body_voxels": int(n_body_small * stride * stride),
        "body_fraction": float(n_body_small / small.size),
        "body_bbox_shape": bbox_shape,
        "hu": {
            "mean": float(body_vals.mean(dtype=np.float64)),
            "std": float(body_vals.std(dtype=np.float64)),
            "min": float(body_vals.min()),
            "max": float(body_vals.max()),
            "p00_5": float(p[0]),
            "median": float(p[1]),
            "p99_5": float(p[2]),
        },
        "sample": {
            "n": int(sample.size),
            "sum": float(sample.sum(dtype=np.float64)),
            "sumsq": float(np.square(sample, dtype=np.float64).sum()),
            "hist_index": nz.tolist(),
            "hist_count": hist[nz].tolist(),
        },
    }


def _axcodes(affine):
    from nibabel.orientations import aff2axcodes

    return tuple(c or "?" for c in aff2axcodes(affine))


def fingerprint_case(case: CaseSource) -> dict:
    """Read, validate and fingerprint one case; bad cases come back as ``{"error": ...}``."""
    try:
        img = validate_ct(read_case(case))
        fp = fingerprint_image(case.name, img.array, img.affine)
        if img.meta.get("series_note"):
            fp["note"] = img.meta["series_note"]
    except BadCaseError as e:
        return {"name": case.name, "path": case.path, "error": e.reason}
    except MemoryError:
        return {"name": case.name, "path": case.path, "error": "out of memory while reading"}
    fp["path"] = case.path
    from screener_plans.memory import peak_rss_mb

    fp["worker_peak_rss_mb"] = peak_rss_mb()
    return fp


def _cache_file(cache_dir: Path, case: CaseSource) -> Path:
    key = hashlib.sha1(os.path.abspath(case.path).encode()).hexdigest()[:20]
    return cache_dir / f"{case.name}-{key}.json"


def _load_cached(cache_dir: Path, case: CaseSource, signature: dict) -> dict | None:
    path = _cache_file(cache_dir, case)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if cached.get("version") != FINGERPRINT_VERSION or cached.get("signature") != signature:
        return None
    return cached["fingerprint"]


def compute_fingerprints(
    cases: list[CaseSource], cache_dir: Path, workers: int = 0, progress: bool = True
) -> list[dict]:
    """Fingerprint ``cases`` in parallel, reusing cached results whose file did not change."""
    make_dirs(cache_dir)
    results: dict[str, dict] = {}
    todo = []
    for case in cases:
        try:
            sig = case.signature()
        except OSError as e:
            results[case.name] = {"name": case.name, "path": case.path, "error": f"cannot be read ({e.strerror})"}
            continue
        cached = _load_cached(cache_dir, case, sig)
        if cached is not None:
            results[case.name] = cached
        else:
            todo.append((case, sig))
    bar = Progress(len(todo), "fingerprint", enabled=progress)
    workers = workers or default_workers()

    def _store(case, sig, fp):
        results[case.name] = fp
        write_json(_cache_file(cache_dir, case), {"version": FINGERPRINT_VERSION, "signature": sig, "fingerprint": fp})
        bar.update()

    signatures = dict((case.name, sig) for case, sig in todo)
    map_cases(
        fingerprint_case,
        [case for case, _ in todo],
        workers,
        on_result=lambda case, fp: _store(case, signatures[case.name], fp),
        on_error=lambda case, e: {
            "name": case.name,
            "path": case.path,
            "error": f"worker failed ({type(e).__name__}: {e})",
        },
    )
    return [results[c.name] for c in cases]


def pooled_statistics(fingerprints: list[dict]) -> dict:
    """Pooled body-HU percentiles (0.5, 99.5), mean and std over the per-case samples."""
    hist = np.zeros(HIST_HI - HIST_LO, dtype=np.int64)
    n, s, ss = 0, 0.0, 0.0
    for fp in fingerprints:
        smp = fp["sample"]
        np.add.at(hist, np.asarray(smp["hist_index"], dtype=np.int64), np.asarray(smp["hist_count"], dtype=np.int64))
        n += smp["n"]
        s += smp["sum"]
        ss += smp["sumsq"]
    if n == 0:
        raise ScreenerError("no body voxels in any case; cannot derive intensity statistics")
    mean = s / n
    var = max(0.0, ss / n - mean * mean)
    return {
        "n_samples": int(n),
        "mean": float(mean),
        "std": float(np.sqrt(var)),
        "p00_5": hist_percentile(hist, 0.5),
        "p99_5": hist_percentile(hist, 99.5),
    }


def hist_percentile(hist: np.ndarray, q: float) -> float:
    """Percentile of 1-HU-binned integer samples, matching numpy's 'linear' method on the sample."""
    total = int(hist.sum())
    pos = q / 100.0 * (total - 1)
    cum = np.cumsum(hist)
    lo = int(np.searchsorted(cum, np.floor(pos) + 1))
    hi = int(np.searchsorted(cum, np.ceil(pos) + 1))
    frac = pos - np.floor(pos)
    return float(HIST_LO + lo + frac * (hi - lo))


def build_fingerprint(
    data_dir: str | Path, run_dir: str | Path, workers: int = 0, skip_bad: bool = False, progress: bool = True
) -> dict:
    """Fingerprint every case in ``data_dir`` and write ``RUN_DIR/fingerprint.json``.

    Bad cases (unreadable, not CT, 2D/4D...) stop the run with one message listing them, or are
    skipped with ``skip_bad=True``.
    """
    run_dir = Path(run_dir)
    cases, bad = find_cases(data_dir, with_bad=True)
    if not cases and not bad:
        raise ScreenerError(f"{data_dir}: no images found (expected .nii, .nii.gz, .nrrd, .mha, .mhd or DICOM folders)")
    fps = compute_fingerprints(cases, run_dir / ".cache" / "fingerprint", workers=workers, progress=progress)
    good = [fp for fp in fps if "error" not in fp]
    skipped = [{"path": e.path, "problem": e.reason} for e in bad]
    skipped += [{"path": fp["path"], "problem": fp["error"]} for fp in fps if "error" in fp]
    if skipped and not skip_bad:
        listing = "; ".join(f"{s['path']}: {s['problem']}" for s in skipped[:10])
        more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        stop = "" if (listing + more).endswith(("?", ".")) else "."
        remedy = (
            "Fix or remove them, or re-run with --skip-bad to leave them out"
            if good
            else "None of the cases can be used"
        )
        raise ScreenerError(f"{len(skipped)} case(s) cannot be used: {listing}{more}{stop} {remedy}")
    if not good:
        raise ScreenerError(
            f"{data_dir}: no readable CT images" + (f" ({len(skipped)} bad case(s) skipped)" if skipped else "")
        )
    fingerprint = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "data_dir": str(Path(data_dir).resolve()),
        "n_cases": len(good),
        "skipped": skipped,
        "pooled_hu": pooled_statistics(good),
        "worker_peak_rss_mb": max(fp.get("worker_peak_rss_mb", 0.0) for fp in good),
        "cases": [{k: v for k, v in fp.items() if k not in ("sample", "worker_peak_rss_mb")} for fp in good],
    }
    write_json(fingerprint_file(run_dir), fingerprint)
    return fingerprint
