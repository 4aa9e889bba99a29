#!/usr/bin/env bash
# Set up, then run the main job: serve the embedded default ensemble (digits) over the
# Open Inference Protocol and answer real tritonclient requests (HTTP and gRPC).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BACKEND="${ENSERVE_BACKEND:-engine}"

.venv/bin/enserve demo

workdir=$(mktemp -d)
.venv/bin/enserve serve examples --model digits --backend "$BACKEND" --trust-code models.py \
  --http-port 0 --grpc-port 0 --metrics-port 0 \
  --port-file "$workdir/ports.json" --log-level warning &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$workdir"' EXIT

for _ in $(seq 1 240); do
  [ -f "$workdir/ports.json" ] && break
  kill -0 "$server" 2>/dev/null || { echo "enserve serve exited early" >&2; exit 1; }
  sleep 0.5
done
[ -f "$workdir/ports.json" ] || { echo "enserve serve did not start within 120 s" >&2; exit 1; }
read -r http grpc metrics < <(.venv/bin/python -c \
  'import json, sys; p = json.load(open(sys.argv[1])); print(p["http"], p["grpc"], p["metrics"])' \
  "$workdir/ports.json")
echo "serving digits: HTTP 127.0.0.1:$http, gRPC 127.0.0.1:$grpc, metrics 127.0.0.1:$metrics/metrics"
.venv/bin/python examples/client.py --http "127.0.0.1:$http" --grpc "127.0.0.1:$grpc"
