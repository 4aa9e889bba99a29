#!/usr/bin/env bash
# The issue-4 target measurements on examples/imagenet6 (each bounded to a few minutes).
# Results: benchmarks/results/*.json and benchmarks/results/imagenet6-sweep.png
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=".venv/bin/enserve bench examples/imagenet6"
PLAN=${PLAN:-benchmarks/plans/imagenet6-greedy.json}
LATENCY_PLAN=${LATENCY_PLAN:-benchmarks/plans/imagenet6-greedy-latency.json}
mkdir -p benchmarks/results
.venv/bin/python benchmarks/ipc_overhead.py --json > benchmarks/results/ipc-overhead.json
$BENCH --plan "$PLAN" --concurrency 16 --duration 20 --warmup 4 --rounds 3 \
  --baseline sequential sequential-fast --out benchmarks/results/imagenet6-throughput.json
$BENCH --plan "$LATENCY_PLAN" --concurrency 1 --duration 15 --warmup 3 --rounds 3 \
  --baseline naive --out benchmarks/results/imagenet6-latency-b1.json
$BENCH --plan "$PLAN" --sweep --levels 1,4,16 --duration 10 --warmup 3 \
  --baseline sequential-fast --plot benchmarks/results/imagenet6-sweep.png \
  --out benchmarks/results/imagenet6-sweep.json
