#!/bin/bash
# Device-side wrapper (run on the lent GPU from the repository root; bench/device/prepare.sh makes
# what it reads): polars wheels, data, then the command given as arguments.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl_acc/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
mkdir -p /tmp/data && cp data/ETTh1.csv /tmp/data/ && for f in .bench_data/*.xz; do xz -dc $f > /tmp/data/$(basename $f .xz); done
nvidia-smi --query-gpu=name,memory.used --format=csv
"$@"
