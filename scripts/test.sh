#!/usr/bin/env bash
# Set up, then run every check CI runs: ruff, mypy and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ENSERVE_EXTRAS=dev,ray bash scripts/setup.sh  # Ray: the scale-out tests (docs/scale-out.md)
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
