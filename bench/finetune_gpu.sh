#!/usr/bin/env bash
# Fine-tuning throughput on GPUs: HF Trainer in-process, Ray Train at 1 worker and, with two or more
# GPUs, Ray Train at 2 workers (one GPU each, the same batch per GPU) on the bert-base-cased shape.
#
#   bench/finetune_gpu.sh [OUT]        # default OUT: bench/results/finetune-gpu-<time>
#
# Targets (issue 24): Ray Train at 1 worker >= 0.75x the in-process samples/s; 2 GPUs >= 1.7x one.
# With a single GPU it measures the first figure only and says that the scaling figure needs two.
#
# Needs the project installed with a CUDA build of torch (`make setup` on a GPU machine: PyPI's
# torch for Linux is a CUDA build; that installs ray[train,data], accelerate and datasets too) and
# nvidia-smi. No network is used: the model is random weights of the bert-base-cased shape
# (bench/model.py, cached under ~/.cache/bertserve/bench) and the data is generated. It writes
# OUT/gpus.csv, OUT/finetune.json and OUT/log.txt, and prints the table. fp32 by default; BF16=1
# for bfloat16 mixed precision; STEPS, PER_GPU_BATCH and TOKENS change the run's size.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-bench/results/finetune-gpu-$(date +%Y%m%d-%H%M%S)}
STEPS=${STEPS:-60}
PER_GPU_BATCH=${PER_GPU_BATCH:-32}
TOKENS=${TOKENS:-128}
mkdir -p "$OUT"
GPUS=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$OUT/gpus.csv"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device: install a CUDA build")'
ORDER=0,1
if [ "$GPUS" -ge 2 ]; then
  ORDER=0,1,2
else
  echo "one GPU: measuring in-process against Ray Train at 1 worker; the 2-GPU scaling figure needs two" | tee -a "$OUT/log.txt"
fi
EXTRA=()
if [ "${BF16:-0}" = 1 ]; then EXTRA+=(--bf16); fi
PYTHONUNBUFFERED=1 "$PY" -m bench.finetune_bench --gpus --order "$ORDER" --steps "$STEPS" \
  --per-worker-batch "$PER_GPU_BATCH" --tokens "$TOKENS" --out "$OUT/finetune.json" "${EXTRA[@]}" 2>&1 | tee -a "$OUT/log.txt"
echo "results: $OUT/finetune.json"
