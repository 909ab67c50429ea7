#!/bin/bash
# Here-side preparation for the accuracy runs on the lent GPU (docs/RESULTS.md). The device gets
# the repository only: ../shared/data does not travel and it has no polars. This makes the two
# git-ignored folders that the device calls carry:
#   .bench_data/  ETTm1.csv.xz and weather.csv.xz from ../shared/data (ETTh1 is data/ETTh1.csv);
#                 the closed-form linear fits go to .bench_data/ridge (bench.accuracy --ridge-dir)
#   .whl_acc/     polars' wheels for the device's Python 3.12
# Then, on the device: bash bench/device/sweep.sh bash bench/device/acc_sweepN.sh
# (carry [".whl_acc", ".bench_data"]). The acc_sweepN.sh scripts are kept as they ran, one per
# device call (docs/RESULTS.md names each), so they repeat each other on purpose.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.bench_data/' .git/info/exclude || echo /.bench_data/ >> .git/info/exclude
grep -qx '/.whl_acc/' .git/info/exclude || echo /.whl_acc/ >> .git/info/exclude
mkdir -p .bench_data .whl_acc
for name in ETTm1 weather; do
  [ -f ".bench_data/$name.csv.xz" ] || xz -9 -c "../shared/data/$name.csv" > ".bench_data/$name.csv.xz"
done
ls .whl_acc/polars-*.whl >/dev/null 2>&1 || python3 -m pip download --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl_acc polars==2.1.0 polars-runtime-32==2.1.0
ls -l .bench_data .whl_acc
