#!/usr/bin/env bash
# Install Debian's Chromium (and a font) for the dashboard's browser test, when it is missing.
# Needs root and apt-get (as in CI); elsewhere it says what to do and leaves the test to skip.
# About 30 s on a fresh Debian 12 machine (apt-get update included: ~45 s).
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then exit 0; fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_browser: no Chromium; install Debian's 'chromium' to run the dashboard's browser test" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
