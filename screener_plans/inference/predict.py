"""Anomaly prediction for a file or a folder of CT scans.

Each case is read, preprocessed exactly as in training, scored with a sliding window, mapped
back onto its own grid and written as ``<case>.nii.gz``, ``<case>_regions.json`` and
``<case>.png``. Finished cases are skipped on a re-run, so an interrupted folder resumes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from screener_plans.device import launch_rank_world
from screener_plans.errors import BadCaseError, ScreenerError

# the calibration names stay importable from here: scripts and the inference bundle use them
from screener_plans.inference.calibration import (  # noqa: F401
    CALIBRATION_CASES,
    calibrate,
    calibration_is_current,
    calibration_path,
    load_threshold,
    smooth_mm,
)
from screener_plans.inference.executors import InlineExecutor, overlap_io
from screener_plans.inference.sliding import build_inferer
from screener_plans.inference.smoothing import smooth_in_body
from screener_plans.io_utils import ensure_writable_dir, sweep_stale_temporaries
from screener_plans.layout import plans_file
from screener_plans.options import as_bool
from screener_plans.progress import Progress

logger = logging.getLogger("screener.predict")


class Predictor:
    """Scores scans with a trained run; ``run(input, output_dir)`` handles a file or a folder.

    Over a folder, the next case is read and preprocessed in a background thread while the
    current one is scored, and finished maps are written in another thread while the next one
    is scored, where that work has a core of its own: on a GPU, or on a CPU with more cores than
    PyTorch's threads (``overlap=None`` decides so; elsewhere it would only slow the scoring).
    Under ``torchrun`` each rank takes every WORLD_SIZE-th case (on its own GPU), so every case
    is written exactly once; the summaries are gathered on every rank.
    """

    def __init__(
        self,
        run_dir,
        plans: dict,
        scorer,
        device,
        threshold: float | None = None,
        skip_bad: bool = True,
        overwrite: bool = False,
        progress: bool = True,
        overlap: bool | None = None,
        inferer=None,
    ):
        self.run_dir, self.plans, self.device = Path(run_dir), plans, torch.device(device)
        self.overlap = overlap_io(self.device) if overlap is None else bool(overlap)
        self.scorer = scorer.to(self.device).eval()
        self.inferer = inferer if inferer is not None else build_inferer(plans, self.device)
        self.threshold = threshold
        self.model_id = model_fingerprint(self.scorer, threshold)
        self.skip_bad, self.overwrite = as_bool(skip_bad, "skip_bad"), as_bool(overwrite, "overwrite")
        self.progress = bool(progress)

    def done(self, out_dir: Path, name: str) -> bool:
        return all((out_dir / f"{name}{suffix}").exists() for suffix in (".nii.gz", "_regions.json", ".png"))

    def _check_not_another_models(self, out_dir: Path, names: list[str]) -> None:
        """Refuse to mix in outputs of another model that a re-run would otherwise keep."""
        for name in names:
            try:
                written = json.loads((out_dir / f"{name}_regions.json").read_text()).get("model_id")
            except (OSError, ValueError, AttributeError):
                written = None  # unreadable, or written before outputs carried a model id: kept
            if written is not None and written != self.model_id:
                raise ScreenerError(
                    f"{out_dir / (name + '_regions.json')}: written by another model (or another "
                    "calibration); pass --overwrite true to replace this folder's outputs, or "
                    "choose another output folder"
                )

    def load(self, case) -> dict:
        """Read, check and preprocess one case (thread-safe: no torch, no shared state)."""
        from screener_plans.data.checks import validate_ct
        from screener_plans.data.preprocess import preprocess_image
        from screener_plans.data.readers import read_case

        t0 = time.perf_counter()
        img = validate_ct(read_case(case))
        t_read = time.perf_counter()
        image, mask, meta = preprocess_image(img, self.plans)
        return {
            "case": case,
            "img": img,
            "image": image,
            "mask": mask,
            "meta": meta,
            "timing": {"read": t_read - t0, "preprocess": time.perf_counter() - t_read},
        }

    def score(self, loaded: dict) -> dict:
        """Sliding-window NLL on the preprocessed grid, then back onto the input's own grid."""
        from screener_plans.inference.restore import to_original_grid

        t0 = time.perf_counter()
        image, mask, meta = loaded["image"], loaded["mask"], loaded["meta"]
        score = self.inferer(self.scorer, image, meta["crop_origin_mm"], meta["spacing"], self.device)
        score = smooth_in_body(score, mask, smooth_mm(self.plans), meta["spacing"])
        t_inf = time.perf_counter()
        loaded["original"] = to_original_grid(score, mask, meta)
        loaded["threshold"] = (
            self.threshold if self.threshold is not None else float(np.quantile(score[mask > 0], 0.999))
        )
        loaded["timing"].update(sliding_window=t_inf - t0, resample_back=time.perf_counter() - t_inf)
        loaded["cache_shape"] = list(image.shape)
        for key in ("image", "mask"):  # free the preprocessed arrays before the write
            loaded.pop(key)
        return loaded

    def write(self, scored: dict, out_dir: Path) -> dict:
        from screener_plans.inference.writer import write_case_outputs

        t0 = time.perf_counter()
        case, img = scored["case"], scored["img"]
        result = write_case_outputs(
            out_dir,
            case.name,
            scored["original"],
            img.affine,
            img.array,
            scored["threshold"],
            extra={
                "source": str(case.path),
                "threshold_calibrated": self.threshold is not None,
                "model_id": self.model_id,
            },
        )
        result["timing"] = {**scored["timing"], "write": time.perf_counter() - t0}
        result["cache_shape"] = scored["cache_shape"]
        result["case"] = case.name
        return result

    def predict_case(self, case, out_dir: Path) -> dict:
        """One case, start to end, in this thread; the result holds per-phase ``timing``."""
        return self.write(self.score(self.load(case)), out_dir)

    def run(self, input_path, output_dir) -> dict:
        from concurrent.futures import ThreadPoolExecutor

        from screener_plans.data.readers import find_cases

        cases, bad = find_cases(input_path, with_bad=True)
        if not cases and not bad:
            raise ScreenerError(f"{input_path}: no images found")
        _refuse_overwriting_inputs(cases, Path(output_dir))
        out_dir = ensure_writable_dir(output_dir)
        sweep_stale_temporaries(out_dir)  # left by a run killed mid-write
        if self.threshold is None:
            logger.warning(
                "%s has no calibration.json: region threshold falls back to each scan's 99.9th "
                "percentile (run `screener calibrate %s`)",
                self.run_dir,
                self.run_dir,
            )
        rank, world = launch_rank_world()
        cases, bad = cases[rank::world], bad[rank::world]
        summary = {"done": [], "skipped_existing": [], "errors": [{"path": b.path, "problem": b.reason} for b in bad]}
        if bad and not self.skip_bad:
            raise ScreenerError(f"{bad[0].path}: {bad[0].reason}")
        bar = Progress(len(cases), "predict", enabled=self.progress and rank == 0)
        todo = []
        for case in cases:
            if not self.overwrite and self.done(out_dir, case.name):
                summary["skipped_existing"].append(case.name)
                bar.skip()
            else:
                todo.append(case)
        self._check_not_another_models(out_dir, summary["skipped_existing"])

        def finish(write) -> None:
            res = write.result()
            summary["done"].append(
                {"case": res["case"], "n_regions": len(res.get("regions", [])), "timing": res["timing"]}
            )
            bar.update()

        def executor(name, deferred):
            # in line, a load waits until its result is wanted, so one scan at a time is in memory
            return ThreadPoolExecutor(1, name) if self.overlap else InlineExecutor(deferred)

        with executor("screener-load", True) as loader, executor("screener-write", False) as writer:
            upcoming = loader.submit(self.load, todo[0]) if todo else None
            pending = None
            for i in range(len(todo)):
                current = upcoming
                upcoming = loader.submit(self.load, todo[i + 1]) if i + 1 < len(todo) else None
                try:
                    loaded = current.result()
                except BadCaseError as e:
                    if not self.skip_bad:
                        raise
                    summary["errors"].append({"path": e.path, "problem": e.reason})
                    bar.update()
                    continue
                scored = self.score(loaded)
                if pending is not None:
                    finish(pending)
                pending = writer.submit(self.write, scored, out_dir)
            if pending is not None:
                finish(pending)
        summary = _gather(summary, world)
        for e in summary["errors"]:
            logger.warning("skipped %s: %s", e["path"], e["problem"])
        if summary["errors"] and not summary["done"] and not summary["skipped_existing"]:
            raise ScreenerError(
                f"no case could be scored; first: {summary['errors'][0]['path']}: {summary['errors'][0]['problem']}"
            )
        return summary


def _refuse_overwriting_inputs(cases, out_dir: Path) -> None:
    """An output folder that holds the input scans would have them replaced by their maps."""
    import os

    if not out_dir.is_dir():
        return
    inputs = {os.path.realpath(c.path) for c in cases if c.kind == "file"}
    for case in cases:
        for suffix in (".nii.gz", "_regions.json", ".png"):
            target = out_dir / f"{case.name}{suffix}"
            if target.exists() and os.path.realpath(target) in inputs:
                raise ScreenerError(
                    f"{out_dir}: the output folder holds the input scan {target}, which its anomaly "
                    "map would replace; choose another output folder"
                )


def model_fingerprint(scorer: torch.nn.Module, threshold: float | None) -> str:
    """A short hash of the weights and the region threshold, recorded in every ``_regions.json``,
    so that a re-run skips only the cases this same model scored."""
    import hashlib

    h = hashlib.sha1(repr(None if threshold is None else float(threshold)).encode())
    weights_id = getattr(scorer, "weights_id", None)
    if weights_id:  # the same weights eager, in a bundle or traced: one model
        h.update(weights_id.encode())
        return h.hexdigest()[:16]
    for key, value in sorted(scorer.state_dict().items()):
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _gather(summary: dict, world: int) -> dict:
    """Every rank's summary merged (under torchrun), so each rank reports the whole job."""
    if world <= 1:
        return summary
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="gloo")
    parts = [None] * world
    dist.all_gather_object(parts, summary)
    if created:
        dist.destroy_process_group()
    merged = {key: [item for part in parts for item in part[key]] for key in summary}
    merged["done"].sort(key=lambda d: d["case"])
    return merged


def predict(
    run_dir,
    input_path,
    output_dir,
    device="auto",
    skip_bad: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    torchscript=None,
) -> dict:
    """Score a file or folder with the trained run (or fetched model) in ``run_dir``.

    ``torchscript``: True for ``run_dir/models/model.ts``, or the path of a TorchScript export.
    """
    from screener_plans.device import resolve_device
    from screener_plans.inference.loader import load_run_scorer
    from screener_plans.planning.plans import load_plans

    plans = load_plans(plans_file(run_dir))
    device = resolve_device(device)
    scorer = load_run_scorer(run_dir, plans, torchscript)
    predictor = Predictor(
        run_dir,
        plans,
        scorer,
        device,
        load_threshold(run_dir),
        skip_bad=skip_bad,
        overwrite=overwrite,
        progress=progress,
    )
    return predictor.run(input_path, output_dir)


def format_summary(summary: dict) -> str:
    """One line per outcome for the console."""
    if launch_rank_world()[0] != 0:  # under torchrun every rank holds the merged summary; rank 0 prints it
        return ""
    lines = [
        f"scored {len(summary['done'])} case(s), {len(summary['skipped_existing'])} already done, "
        f"{len(summary['errors'])} skipped"
    ]
    for d in summary["done"]:
        t = d["timing"]
        lines.append(
            f"  {d['case']}: {d['n_regions']} region(s), {sum(t.values()):.1f} s "
            f"(read {t['read']:.1f}, preprocess {t['preprocess']:.1f}, sliding window {t['sliding_window']:.1f}, "
            f"back to input grid {t['resample_back']:.1f}, write {t['write']:.1f})"
        )
    for e in summary["errors"]:
        lines.append(f"  skipped {e['path']}: {e['problem']}")
    return "\n".join(lines)
