#!/usr/bin/env bash
# Set up, then run the main job on the embedded default ensemble (digits).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/enserve demo
.venv/bin/enserve predict examples/digits --input examples/digits/samples.npy
