#!/usr/bin/env bash
# The whole test suite: lint, format, type check, then pytest (which starts the real Kafka broker
# for the tests that need it and stops it at the end; see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/lint.sh
# Kernel tests run the Triton code through its CPU interpreter; there is no GPU here.
export TRITON_INTERPRET=1
exec .venv/bin/python -m pytest "$@"
