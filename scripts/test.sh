#!/usr/bin/env bash
# Set up, then run every check CI runs: ruff, mypy and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ENSERVE_EXTRAS=dev,ray bash scripts/setup.sh  # Ray: the scale-out tests (docs/scale-out.md)
bash scripts/setup_browser.sh || echo "setup_browser: could not install Chromium; the browser test will say so" >&2
# Where this script could install Chromium (root with apt-get, as in CI) the browser test must run.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export ENSERVE_REQUIRE_BROWSER=1
fi
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
