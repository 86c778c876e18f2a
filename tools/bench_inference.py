"""Benchmark whole-scan inference: seconds per CT by phase, pipeline overhead, peak memory.

A synthetic chest CT of 512x512x300 voxels at 0.7x0.7x1.25 mm is written once. For each preset a
run is planned on it and given untrained weights (speed does not depend on what was learned),
then, in a fresh process per preset:

1. end to end: ``screener predict``'s own per-case path (read, preprocess, sliding window,
   resample back, write NIfTI + regions JSON + PNG), each phase timed;
2. bare forward: the three networks (descriptor, condition, density) alone over the same
   windows, same batch size, no stitching, no I/O; measured alternately with (1), repeat by
   repeat, so that drift of a shared machine moves both alike;
3. overhead = end-to-end / bare forward (target <= 1.3 at overlap 0.25);
4. peak RSS of the process (target < 4 GB on CPU) and peak GPU memory where a GPU is used;
5. archive throughput: ``screener predict`` over a folder of ``--folder-scans`` copies, seconds
   and overhead per scan, with background threads that read/preprocess the next scan and write
   the previous one while the current one is scored, and without (the row marked is what
   ``screener predict`` does on this machine: threads only where they have a core of their own).

    python tools/bench_inference.py --presets tiny --device cpu --out /tmp/screener_bench_inference
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np, torch
from monai.inferers import sliding_window_inference
from screener_plans.data.readers import find_cases
from screener_plans.device import amp_dtype, autocast, resolve_device
from screener_plans.inference.loader import load_scorer
from screener_plans.inference.executors import overlap_io
from screener_plans.inference.calibration import load_threshold
from screener_plans.inference.predict import Predictor
from screener_plans.memory import peak_rss_mb, reset_peak_rss
from screener_plans.planning.plans import load_plans

run, scan, out, device, repeats = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
folder_scans = int(sys.argv[6])
plans = load_plans(run / "plans.json")
device = resolve_device(device)
predictor = Predictor(run, plans, load_scorer(run, plans), device, threshold=load_threshold(run),
                      overwrite=True, progress=False)
case = find_cases(scan)[0]
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def end_to_end():
    t0 = time.perf_counter()
    res = predictor.predict_case(case, out)
    sync()
    return time.perf_counter() - t0, res["timing"], res


ends = [end_to_end()]  # the first pass also warms up kernels and allocators
shape = tuple(ends[0][2]["cache_shape"])

# bare forward of the three networks over the same windows
roi = tuple(plans["crop_size"])
padded = tuple(max(s, r) for s, r in zip(shape, roi))
bs = int(plans["inference"]["sw_batch_size"])
windows = []  # MONAI's own window grid, counted with a no-op predictor
sliding_window_inference(torch.zeros((1, 1) + padded), roi, 1, lambda w: windows.append(1) or w,
                         overlap=plans["inference"]["overlap"], mode=plans["inference"]["blend"])
scorer = predictor.scorer
x = torch.rand((bs, 1) + roi, device=device)
origins = torch.zeros(bs, 3, device=device)
spacing = torch.ones(bs, 3, device=device)
dtype = amp_dtype(device, plans["amp"])
n_batches = -(-len(windows) // bs)


@torch.no_grad()
def bare_forward():
    with autocast(device, dtype):
        sync()
        t0 = time.perf_counter()
        for _ in range(n_batches):
            scorer(x, origins, spacing)
        sync()
    return time.perf_counter() - t0


with torch.no_grad(), autocast(device, dtype):
    scorer(x, origins, spacing)  # warm-up
# alternate the two measurements, so that a machine that slows down or speeds up during the
# run (shared cores) moves both alike and their ratio holds
times = [bare_forward()]
for _ in range(1, repeats):
    ends.append(end_to_end())
    times.append(bare_forward())
total, timing = min(ends, key=lambda e: e[0])[:2]
forward = min(times)
peak_case = peak_rss_mb()

# archive throughput: ``screener predict`` over a folder of N copies, the way it runs here
# (background reading/writing threads overlapping the scoring, or not: ``overlap_io``), and the
# other way for comparison
folder = folder_other = None
if folder_scans > 0:
    src = out.parent / (out.name + "_folder_in")
    src.mkdir(parents=True, exist_ok=True)
    for i in range(folder_scans):
        link = src / f"scan_{i:03d}.nii.gz"
        if not link.exists():
            link.symlink_to(scan.resolve())
    predictor.progress = False

    def over_folder(overlap):
        predictor.overlap = overlap
        reset_peak_rss()
        t0 = time.perf_counter()
        summary = predictor.run(src, out.parent / (out.name + "_folder_out"))
        wall = time.perf_counter() - t0
        assert len(summary["done"]) == folder_scans, summary
        return {"scans": folder_scans, "background_threads": overlap, "wall_s": wall,
                "per_scan_s": wall / folder_scans, "overhead": wall / folder_scans / forward,
                "peak_rss_mb": peak_rss_mb()}

    chosen = overlap_io(device)
    folder, folder_other = over_folder(chosen), over_folder(not chosen)

print("RESULT " + json.dumps({
    "folder": folder, "folder_other": folder_other, "peak_rss_case_mb": peak_case,
    "end_to_end_s": total, "phases_s": timing, "bare_forward_s": forward, "overhead": total / forward,
    "windows": len(windows), "sw_batch_size": bs, "cache_shape": list(shape), "crop": list(roi),
    "peak_rss_mb": peak_rss_mb(),
    "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    "device": str(device), "threads": torch.get_num_threads()}))
"""


def make_scan(folder: Path, shape, spacing) -> Path:
    import nibabel as nib

    from screener_plans.synthetic.phantoms import make_phantom

    path = folder / "scan.nii.gz"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        ph = make_phantom(7, lesions=True, shape=tuple(shape), spacing=tuple(spacing))
        nib.save(nib.Nifti1Image(ph.hu, ph.affine), str(path))
        print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return path


def bench_preset(
    preset: str, scan: Path, out: Path, device: str, repeats: int, overrides: dict, folder_scans: int = 0
) -> dict:
    from screener_plans.engines.untrained import write_untrained_run
    from screener_plans.planning.planner import plan

    run = out / f"run_{preset}"
    plans = plan(
        scan.parent,
        out / f"planned_{preset}",
        device=device if device != "auto" else "cpu",
        workers=1,
        progress=False,
        overrides={"preset": preset, **overrides},
    )
    write_untrained_run(run, plans)
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            WORKER,
            str(run),
            str(scan),
            str(out / f"pred_{preset}"),
            device,
            str(repeats),
            str(folder_scans),
        ],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    result = json.loads([line for line in p.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
    return {"preset": preset, "spacing": plans["spacing"], **result}


def table(rows: list[dict]) -> str:
    lines = [
        "| preset | device | cache shape | windows | end to end (s) | read | preprocess | sliding window | "
        "resample back | write | bare forward (s) | overhead | peak RSS (GB) | peak GPU (GB) |",
        "|---" * 14 + "|",
    ]
    for r in rows:
        ph = r["phases_s"]
        gpu = f"{r['peak_gpu_mb'] / 1024:.2f}" if r["peak_gpu_mb"] is not None else "-"
        lines.append(
            f"| {r['preset']} | {r['device']} | {'x'.join(map(str, r['cache_shape']))} | {r['windows']} | "
            f"{r['end_to_end_s']:.1f} | {ph['read']:.1f} | {ph['preprocess']:.1f} | "
            f"{ph['sliding_window']:.1f} | {ph['resample_back']:.1f} | {ph['write']:.1f} | "
            f"{r['bare_forward_s']:.1f} | {r['overhead']:.2f} | {r.get('peak_rss_case_mb', r['peak_rss_mb']) / 1024:.2f} | "
            f"{gpu} |"
        )
    folders = [r for r in rows if r.get("folder")]
    if folders:
        lines += [
            "",
            "| preset | device | folder of | background read/write threads | wall (s) | per scan (s) | "
            "bare forward (s) | overhead per scan | peak RSS (GB) |",
            "|---" * 9 + "|",
        ]
        for r in folders:
            for f, note in ((r["folder"], " (what predict does here)"), (r.get("folder_other"), "")):
                if f is None:
                    continue
                lines.append(
                    f"| {r['preset']} | {r['device']} | {f['scans']} | "
                    f"{'yes' if f['background_threads'] else 'no'}{note} | {f['wall_s']:.1f} | "
                    f"{f['per_scan_s']:.1f} | {r['bare_forward_s']:.1f} | {f['overhead']:.2f} | "
                    f"{f.get('peak_rss_mb', r['peak_rss_mb']) / 1024:.2f} |"
                )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    ap.add_argument("--spacing", type=float, nargs=3, default=[0.7, 0.7, 1.25])
    ap.add_argument("--repeats", type=int, default=2, help="passes per measurement; the fastest counts")
    ap.add_argument("--set", action="append", default=[], help="plans override key=value (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/screener_bench_inference"))
    ap.add_argument(
        "--folder-scans",
        type=int,
        default=3,
        help="also time `screener predict` over a folder of this many copies (0: skip)",
    )
    args = ap.parse_args()
    from screener_plans.planning.plans import parse_overrides

    scan = make_scan(args.out / "scan", args.shape, args.spacing)
    rows = [
        bench_preset(p, scan, args.out, args.device, args.repeats, parse_overrides(args.set), args.folder_scans)
        for p in args.presets.split(",")
    ]
    report = {"scan": {"shape": args.shape, "spacing": args.spacing}, "rows": rows}
    (args.out / "bench_inference.json").write_text(json.dumps(report, indent=2))
    print(table(rows))
    print(f"\nJSON: {args.out / 'bench_inference.json'}")


if __name__ == "__main__":
    main()
