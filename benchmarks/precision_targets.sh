#!/usr/bin/env bash
# Issue 12 measurements: reduced precision on examples/imagenet6 and the digits demo.
# imagenet6: profile (onnx fp32 + the reduced variants this machine enables, admitted on
# 512 synthetic calibration rows), then one bench invocation with enserve's mixed-precision
# plan, enserve's own fp32 plan (baseline fp32) and the naive eager loop at batch 8
# (baseline sequential), side by side. Results: benchmarks/results/precision-*.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ENSERVE=${ENSERVE:-.venv/bin/enserve}
OUT=benchmarks/results
mkdir -p "$OUT"
$ENSERVE info --json > "$OUT/precision-machine.json"
$ENSERVE profile examples/imagenet6 --variants onnx --batch-sizes 1,8 --shares 1,2 \
  --repeats 5 --fusion off --no-progress --out "$OUT/precision-imagenet6-profile.json"
$ENSERVE plan --profile "$OUT/precision-imagenet6-profile.json" --fusion off \
  --out "$OUT/precision-imagenet6-plan.json"
$ENSERVE plan --profile "$OUT/precision-imagenet6-profile.json" --fusion off --precision fp32 \
  --out "$OUT/precision-imagenet6-plan-fp32.json"
$ENSERVE bench examples/imagenet6 --profile "$OUT/precision-imagenet6-profile.json" \
  --fusion off --concurrency 16 --duration ${DURATION:-20} --warmup 4 --rounds ${ROUNDS:-1} \
  --baseline fp32 sequential --out "$OUT/precision-imagenet6-bench.json"
$PY benchmarks/precision_digits.py --json > "$OUT/precision-digits.json"
