#!/usr/bin/env bash
# One prepared GPU check (issue #6): whole-scan inference at the base and tiny presets with AMP,
# training pairs/s and GPU memory. Run from the repository root on a machine with a CUDA GPU:
#   bash tools/bench_gpu.sh [OUT_DIR]
# Writes OUT_DIR/bench_inference.json, OUT_DIR/training/bench_training.json and
# OUT_DIR/sw_batch_N/bench_inference.json (base preset with N windows per batch: the plans' GPU
# default of 4 is a guess until this sweep has run) and prints the tables.
set -euo pipefail
OUT=${1:-/tmp/screener_bench_gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python tools/bench_inference.py --presets base,tiny --device cuda --repeats 3 --out "$OUT"
python tools/bench_training.py --presets base --steps 40 --device cuda --out "$OUT/training"
for N in 8 16; do
  python tools/bench_inference.py --presets base --device cuda --repeats 2 --folder-scans 0 \
      --set inference.sw_batch_size=$N --out "$OUT/sw_batch_$N"
done
