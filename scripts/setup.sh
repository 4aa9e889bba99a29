#!/usr/bin/env bash
# Create the project-local virtual environment and install enserve with its dev tools.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
# ENSERVE_EXTRAS picks the optional extras (default: dev; scripts/test.sh adds ray).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extras="${ENSERVE_EXTRAS:-dev}"
stamp=.venv/.enserve-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
missing=0
for extra in ${extras//,/ }; do
  case " $have " in *" $extra "*) ;; *) missing=1 ;; esac
done
if [ "${have%% *}" != "$want" ] || [ "$missing" = 1 ]; then
  .venv/bin/pip install --disable-pip-version-check -q -e ".[$extras]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import enserve, torch, onnxruntime"
  installed=$extras
  if [ "${have%% *}" = "$want" ]; then
    case "$have" in *" "*) installed="$installed ${have#* }" ;; esac
  fi
  echo "$want $(echo ${installed//,/ } | tr ' ' '\n' | sort -u | tr '\n' ' ')" > "$stamp"
fi
