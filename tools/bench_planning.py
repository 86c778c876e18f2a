"""Benchmark planning and preprocessing on synthetic CT: cases/s and peak memory.

Plans and preprocesses growing subsets (default 50 and 200 cases) of one synthetic data set and
reports, per subset: seconds and cases/s for `plan` (fingerprint) and `preprocess`, the peak
RSS of the main process and of the largest worker. Peak memory must not grow with the number
of cases: one volume is in memory per worker.

    python tools/bench_planning.py --cases 200 --workers 2 --out /tmp/screener_bench_planning
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_subset(data: Path, n: int, work: Path, workers: int) -> dict:
    """Plan + preprocess the first ``n`` cases in a fresh process, measuring time and memory."""
    subset = work / f"data_{n}"
    if subset.exists():
        shutil.rmtree(subset)
    subset.mkdir(parents=True)
    for p in sorted((data / "train").glob("*.nii.gz"))[:n]:
        os.symlink(p.resolve(), subset / p.name)
    run = work / f"run_{n}"
    shutil.rmtree(run, ignore_errors=True)
    code = f"""
import json, time, sys
from screener_plans.memory import peak_rss_mb
from screener_plans.planning.planner import plan
from screener_plans.planning.plans import load_plans
from screener_plans.data.preprocess import preprocess
t0 = time.perf_counter()
plan({str(subset)!r}, {str(run)!r}, device='cpu', workers={workers}, progress=False)
t1 = time.perf_counter()
s = preprocess({str(run)!r}, load_plans({str(run / "plans.json")!r}), workers={workers}, progress=False)
t2 = time.perf_counter()
fp = json.load(open({str(run / "fingerprint.json")!r}))
print(json.dumps({{"plan_s": t1 - t0, "preprocess_s": t2 - t1, "done": s["done"],
                  "main_rss_mb": peak_rss_mb(),
                  "worker_rss_mb": max(fp["worker_peak_rss_mb"], s["worker_peak_rss_mb"])}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r.update(cases=n, plan_cases_per_s=n / r["plan_s"], preprocess_cases_per_s=n / r["preprocess_s"])
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--subsets", type=str, default="50,200")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/screener_bench_planning"))
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    from screener_plans.synthetic.phantoms import make_synthetic_dataset

    data = args.out / "synthetic"
    if not (data / "dataset.json").exists():
        t = time.perf_counter()
        make_synthetic_dataset(data, cases=args.cases + 2, seed=args.seed, test_cases=2, progress=False)
        print(f"generated {args.cases} synthetic cases in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    rows = [run_subset(data, int(n), args.out, args.workers) for n in args.subsets.split(",")]
    print(
        "| cases | plan s | plan cases/s | preprocess s | preprocess cases/s | peak RSS main MB | peak RSS worker MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['cases']} | {r['plan_s']:.1f} | {r['plan_cases_per_s']:.2f} | {r['preprocess_s']:.1f} | "
            f"{r['preprocess_cases_per_s']:.2f} | {r['main_rss_mb']:.0f} | {r['worker_rss_mb']:.0f} |"
        )
    print(json.dumps({"benchmark": "planning", "workers": args.workers, "rows": rows}))


if __name__ == "__main__":
    main()
