#!/usr/bin/env bash
# Sets up everything statecast needs on a fresh machine; a second run does nothing and is quick.
#   - .venv in the repo with the locked dependencies (requirements.lock) and statecast itself
#   - the pinned Apache Kafka broker's jars, resolved from Maven Central (deploy/kafka/kafka.sh)
# Packages are cached by uv in ~/.cache/uv, so a fresh clone installs from the cache.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
python=${PYTHON:-python3}

"$python" -c 'import sys; assert sys.version_info >= (3, 11), "statecast needs Python >= 3.11"' \
  || { echo "setup: Python >= 3.11 is required (set PYTHON=...)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
[ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q "uv==$UV_VERSION"

stamp=.venv/.statecast-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing locked dependencies into .venv (first run downloads ~3 GB for torch)" >&2
  .venv/bin/uv pip install --python .venv/bin/python -q -r requirements.lock
  .venv/bin/uv pip install --python .venv/bin/python -q --no-deps -e .
  echo "$want" > "$stamp"
fi

deploy/kafka/kafka.sh fetch
