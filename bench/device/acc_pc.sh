#!/bin/bash
# Session 13 (docs/RESULTS.md, eleventh section): the grid's recipe (acc_grid.sh) with a linear map
# per channel (--per-channel: each channel's map pulled toward the shared fit, the pull chosen on
# validation, pipelines/linear_fit.py), seeds 0-2 and their mean, at lookback 96: ETTh1 and
# ETTm1 at H = 96 and 720, weather at H = 96 (call 1). CELLS=w720 (call 2): weather H=720, whose
# fit does not fit in the same 64 MiB carry, with the diagonal SSM and with rwkv7. The fits travel in .bench_data/rpc32 (bench/device/fits32.py
# of the --ridge-linear --per-channel fits).
# Run on the lent GPU: bash bench/device/sweep.sh bash bench/device/acc_pc.sh, carrying
# .whl_acc, .bench_data/rpc32 and the two .csv.xz files.
G="PART=l96 RD=.bench_data/rpc32 EXTRA=--per-channel TAG=pc T=${T:-420} TE=${TE:-120}"
mkdir -p $OUT/ett $OUT/w
if [ "$CELLS" = w720 ]; then
  # Its fit in .bench_data/rpc32w; the diagonal SSM and rwkv7 (the tenth section's best kind
  # there) side by side.
  mkdir -p $OUT/wr
  env $G RD=.bench_data/rpc32w OUT=$OUT/w DATASETS=weather HORIZONS=720 RUN=w \
    bash bench/device/acc_grid.sh > /tmp/w.txt 2>&1 &
  env $G RD=.bench_data/rpc32w OUT=$OUT/wr DATASETS=weather HORIZONS=720 RUN=wr KIND=rwkv7 \
    TAG=pcr bash bench/device/acc_grid.sh > /tmp/wr.txt 2>&1 &
  wait
  cat /tmp/w.txt /tmp/wr.txt
  exit
fi
env $G OUT=$OUT/ett DATASETS="ETTh1 ETTm1" HORIZONS="96 720" RUN=ett \
  bash bench/device/acc_grid.sh > /tmp/ett.txt 2>&1 &
env $G OUT=$OUT/w DATASETS=weather HORIZONS=96 RUN=w bash bench/device/acc_grid.sh > /tmp/w.txt 2>&1 &
wait
cat /tmp/ett.txt /tmp/w.txt
