#!/usr/bin/env bash
# The whole test suite: lint, format, type check, then pytest (which starts the real Kafka broker
# for the tests that need it and stops it at the end; see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/lint.sh
# The browser test (tests/statecast/test_demo.py) drives Debian's Chromium through chromedriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test: installing Debian's chromium and chromium-driver for the browser test" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      chromium chromium-driver >/dev/null
  else
    echo "test: the browser test needs chromium and chromedriver" \
      "(Debian: sudo apt-get install chromium chromium-driver)" >&2
  fi
fi
# Kernel tests run the Triton code through its CPU interpreter; there is no GPU here.
export TRITON_INTERPRET=1
exec .venv/bin/python -m pytest "$@"
