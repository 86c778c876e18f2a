"""Benchmark training throughput: steps/s, pairs/s, peak memory and data-wait share per stage.

Each stage runs through its real bundle (`screener train RUN --stage S --max-steps N`) in a fresh
process on a small synthetic data set, for each preset asked for. Steps/s and the share of step
time spent waiting for data come from the run's own progress log (first window dropped as
warm-up); peak memory is the process's max RSS.

    python tools/bench_training.py --presets tiny --steps 60 --out /tmp/screener_bench_training
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RUNNER = """
import sys
from screener_plans.cli import main
from screener_plans.memory import peak_rss_mb
code = main(sys.argv[1:])
print("PEAK_RSS_MB", peak_rss_mb(), file=sys.stderr)
import torch
if torch.cuda.is_available():
    print("PEAK_GPU_MB", torch.cuda.max_memory_allocated() / 2**20, file=sys.stderr)
sys.exit(code)
"""


def bench_stage(run: Path, stage: str, steps: int, device: str) -> dict:
    log = run / stage / "logs" / "train_log.jsonl"
    if (run / stage).exists():
        import shutil

        shutil.rmtree(run / stage)
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            RUNNER,
            "train",
            str(run),
            "--stage",
            stage,
            "--max-steps",
            str(steps),
            "--device",
            device,
        ],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    rss = float([line for line in p.stderr.splitlines() if line.startswith("PEAK_RSS_MB")][-1].split()[1])
    gpu = [float(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("PEAK_GPU_MB")]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steady = records[1:] or records
    steps_per_s = len(steady) / sum(1 / r["steps_per_s"] for r in steady)  # harmonic mean of windows
    data_wait = sum(r["data_wait"] for r in steady) / len(steady)
    return {
        "stage": stage,
        "steps_per_s": steps_per_s,
        "data_wait": data_wait,
        "peak_rss_mb": rss,
        "peak_gpu_mb": gpu[-1] if gpu else None,
        "final_loss": records[-1]["loss"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny")
    ap.add_argument("--stages", default="descriptor,condition,density")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("/tmp/screener_bench_training"))
    args = ap.parse_args()
    from screener_plans.data.preprocess import preprocess
    from screener_plans.planning.planner import plan
    from screener_plans.synthetic.phantoms import make_synthetic_dataset

    data = args.out / "data"
    if not (data / "dataset.json").exists():
        make_synthetic_dataset(data, cases=10, seed=3, test_cases=2, progress=False)
    rows = []
    for preset in args.presets.split(","):
        run = args.out / f"run_{preset}"
        plans = plan(
            data / "train",
            run,
            device=args.device,
            overrides=[f"preset={preset}", "checkpoint_every=1000"],
            progress=False,
        )
        preprocess(run, plans=plans, progress=False)
        for stage in args.stages.split(","):
            r = bench_stage(run, stage, args.steps, args.device)
            batch = plans["density"]["batch_size"] if stage == "density" else plans["batch_size"]
            r.update(
                preset=preset,
                crop=plans["crop_size"],
                batch=batch,
                pairs_per_s=(r["steps_per_s"] * batch * plans["pairs_per_crop"]) if stage != "density" else None,
                voxels_per_s=r["steps_per_s"]
                * batch
                * (2 if stage != "density" else 1)
                * plans["crop_size"][0]
                * plans["crop_size"][1]
                * plans["crop_size"][2],
            )
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    print("| preset | stage | crop | batch | steps/s | pairs/s | Mvoxel/s | data wait | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pairs = f"{r['pairs_per_s']:.0f}" if r["pairs_per_s"] else "-"
        print(
            f"| {r['preset']} | {r['stage']} | {'x'.join(map(str, r['crop']))} | {r['batch']} | "
            f"{r['steps_per_s']:.2f} | {pairs} | {r['voxels_per_s'] / 1e6:.2f} | {100 * r['data_wait']:.1f}% | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    report = {"benchmark": "training", "device": args.device, "rows": rows}
    (args.out / "bench_training.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
