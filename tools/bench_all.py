"""The whole benchmark suite in one command: the six figures of the performance issue, side by side.

Runs, one after the other on this machine, the four benchmark tools and gathers their results:

1. whole-scan inference (512x512x300 at 0.7x0.7x1.25 mm): seconds per CT and per phase;
2. pipeline overhead: end to end / bare forward of the three networks (target <= 1.3);
3. training: steps/s, pairs/s, data-wait share per stage (target: data wait < 10%);
4. planning and preprocessing: cases/s on synthetic cases;
5. metrics: time and peak memory for 10^8 voxels;
6. peak memory of whole-scan inference (target < 4 GB RAM on CPU; GPU memory where used).

Prints one summary table (figure, value, target, met?) and writes OUT/bench_all.json with every
tool's full result. Each tool can also be run on its own (see its docstring).

    python tools/bench_all.py --device cpu --out /tmp/screener_bench_all
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent


def _run(args: list[str]) -> str:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{p.stderr[-3000:]}")
    print(f"[bench_all] {Path(args[0]).name} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return p.stdout


def _last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--presets", default="tiny", help="inference presets (base,tiny on a GPU)")
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--plan-cases", type=int, default=200)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run on small inputs (checks the suite works; the numbers mean little)",
    )
    ap.add_argument("--out", type=Path, default=Path("/tmp/screener_bench_all"))
    args = ap.parse_args()
    small = ["--shape", "128", "128", "80", "--spacing", "2.8", "2.8", "4.7", "--repeats", "1"] if args.quick else []
    if args.quick:
        args.train_steps, args.plan_cases = min(args.train_steps, 4), min(args.plan_cases, 8)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    _run(
        [
            str(TOOLS / "bench_inference.py"),
            "--presets",
            args.presets,
            "--device",
            args.device,
            "--out",
            str(out / "inference"),
            *small,
        ]
    )
    inference = json.loads((out / "inference" / "bench_inference.json").read_text())
    training = _last_json(
        _run(
            [
                str(TOOLS / "bench_training.py"),
                "--presets",
                "tiny",
                "--steps",
                str(args.train_steps),
                "--device",
                args.device,
                "--out",
                str(out / "training"),
            ]
        )
    )
    planning = _last_json(
        _run(
            [
                str(TOOLS / "bench_planning.py"),
                "--cases",
                str(args.plan_cases),
                "--subsets",
                str(args.plan_cases),
                "--out",
                str(out / "planning"),
            ]
        )
    )
    metrics = _last_json(
        _run([str(TOOLS / "bench_metrics.py"), *(["--volumes", "2", "--side", "64"] if args.quick else [])])
    )

    rows = []
    for r in inference["rows"]:
        p = r["preset"]
        rows.append(
            (
                f"1. whole-scan inference, {p}, s/CT",
                f"{r['end_to_end_s']:.1f}",
                "< 2 s on one H100/H200 (base)" if r["device"].startswith("cuda") else "-",
                None,
            )
        )
        rows.append((f"2. pipeline overhead, {p}", f"{r['overhead']:.2f}", "<= 1.3", r["overhead"] <= 1.3))
        if r.get("folder"):
            f = r["folder"]
            rows.append(
                (
                    f"2. pipeline overhead per scan over a folder of {f['scans']}, {p}",
                    f"{f['overhead']:.2f}",
                    "<= 1.3",
                    f["overhead"] <= 1.3,
                )
            )
        mem = r["peak_rss_mb"] / 1024
        rows.append(
            (f"6. peak RAM of inference, {p}, GB", f"{mem:.2f}", "< 4", mem < 4 if r["device"] == "cpu" else None)
        )
        if r.get("peak_gpu_mb") is not None:
            rows.append((f"6. peak GPU memory, {p}, GB", f"{r['peak_gpu_mb'] / 1024:.2f}", "-", None))
    for r in training["rows"]:
        pairs = f", {r['pairs_per_s']:.0f} pairs/s" if r.get("pairs_per_s") else ""
        rows.append(
            (
                f"3. training {r['stage']}, steps/s{', pairs/s' if pairs else ''}",
                f"{r['steps_per_s']:.2f}{pairs}",
                "-",
                None,
            )
        )
        rows.append(
            (f"3. training {r['stage']}, data wait", f"{100 * r['data_wait']:.1f}%", "< 10%", r["data_wait"] < 0.10)
        )
    for r in planning["rows"]:
        rows.append((f"4. planning, {r['cases']} cases, cases/s", f"{r['plan_cases_per_s']:.2f}", "-", None))
        rows.append((f"4. preprocessing, {r['cases']} cases, cases/s", f"{r['preprocess_cases_per_s']:.2f}", "-", None))
    rows.append((f"5. metrics, {metrics['voxels']:.2g} voxels, s", f"{metrics['seconds_metrics']:.1f}", "-", None))
    rows.append(("5. metrics, peak RSS, MB", f"{metrics['peak_rss_mb']:.0f}", "bounded", None))

    print("| figure | value | target | met |")
    print("|---|---|---|---|")
    for name, value, target, met in rows:
        print(f"| {name} | {value} | {target} | {'-' if met is None else ('yes' if met else 'NO')} |")
    report = {
        "device": args.device,
        "inference": inference,
        "training": training,
        "planning": planning,
        "metrics": metrics,
    }
    (out / "bench_all.json").write_text(json.dumps(report, indent=2))
    print(f"\nJSON: {out / 'bench_all.json'}")


if __name__ == "__main__":
    main()
