#!/usr/bin/env bash
# The quick benchmark on a GPU machine, with replicas pinned to the GPUs.
#
#   bench/device.sh [REPLICAS] [OUT]      # default: one replica per visible GPU
#
# Needs the project installed with the dev extras and a CUDA build of torch (`make setup-dev` on a
# GPU machine: the benchmark's report needs matplotlib from the dev extras; PyPI's torch for Linux
# is a CUDA build, see the top of the Makefile) and nvidia-smi. It:
#   1. records the GPUs (nvidia-smi) in OUT/gpus.csv;
#   2. starts bertserve with --device cuda --replicas N on the random bert-base checkpoint and
#      checks through GetModelInfo that every replica is READY on a distinct CUDA device (with
#      fewer GPUs than replicas, replicas share GPUs through fractional --gpus-per-replica);
#   3. runs `python -m bench --quick --device cuda` (bertserve against the in-process pipeline
#      on the GPU; Ray Serve is skipped: its baseline is written for CPU replicas) into OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
GPUS=$(nvidia-smi -L | wc -l)
REPLICAS=${1:-$GPUS}
OUT=${2:-bench/results/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$OUT/gpus.csv"
"$PY" -m bench.device_check --replicas "$REPLICAS" --gpus "$GPUS" --out "$OUT/replicas.json"
"$PY" -m bench --quick --device cuda --replicas "$REPLICAS" --skip ray-serve --out "$OUT"
echo "results: $OUT/results.md"
