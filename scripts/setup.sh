#!/usr/bin/env bash
# Create the project-local virtual environment and install enserve with its dev tools.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.enserve-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/pip install --disable-pip-version-check -q -e ".[dev]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import enserve, torch, onnxruntime" 
  echo "$want" > "$stamp"
fi
