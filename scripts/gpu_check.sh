#!/usr/bin/env bash
# One short run of every GPU-side measurement: imagenet6 fp32 vs fp16/bf16, CUDA streams with
# one host-to-device copy per batch, the share search (ESEN, MPS started here where allowed)
# vs the default, outputs vs the reference. Without CUDA: "no GPU here" and exit 0.
# Usage: bash scripts/gpu_check.sh [--batch 32] [--repeats 20] [--jobs 30] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 || [ -e /dev/nvidia0 ]; then
    bash scripts/setup.sh
  else
    echo "no GPU here: no NVIDIA driver (nvidia-smi, /dev/nvidia0) and no .venv; nothing measured"
    exit 0
  fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 900 "$PY" benchmarks/gpu_check.py "$@"
