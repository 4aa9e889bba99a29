#!/usr/bin/env bash
# Issue 12 measurements: reduced precision on examples/imagenet6 (SPEC=... for another,
# e.g. SPEC=benchmarks/specs/imagenet3) and the digits demo (DIGITS=0 skips it).
# imagenet6: profile (onnx fp32 + the reduced variants this machine enables, admitted on
# 512 synthetic calibration rows), then one bench invocation with enserve's mixed-precision
# plan, enserve's own fp32 plan (baseline fp32) and the naive eager loop at batch 8
# (baseline sequential), side by side. Results: benchmarks/results/precision-*.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ENSERVE=${ENSERVE:-.venv/bin/enserve}
OUT=benchmarks/results
SPEC=${SPEC:-examples/imagenet6}
NAME=$(basename "$SPEC")
mkdir -p "$OUT"
$ENSERVE info --json > "$OUT/precision-machine.json"
$ENSERVE profile "$SPEC" --variants onnx --batch-sizes 1,8 --shares 1,2 \
  --repeats 5 --fusion off --no-progress --out "$OUT/precision-$NAME-profile.json"
$ENSERVE plan --profile "$OUT/precision-$NAME-profile.json" --fusion off \
  --out "$OUT/precision-$NAME-plan.json"
$ENSERVE plan --profile "$OUT/precision-$NAME-profile.json" --fusion off --precision fp32 \
  --out "$OUT/precision-$NAME-plan-fp32.json"
$ENSERVE bench "$SPEC" --profile "$OUT/precision-$NAME-profile.json" \
  --fusion off --concurrency 16 --duration ${DURATION:-20} --warmup 4 --rounds ${ROUNDS:-1} \
  --baseline fp32 sequential --out "$OUT/precision-$NAME-bench.json"
if [ "${DIGITS:-1}" = 1 ]; then
  $PY benchmarks/precision_digits.py --json > "$OUT/precision-digits.json"
fi
