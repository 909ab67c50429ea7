#!/bin/bash
# Session 13 (docs/RESULTS.md, eleventh section), call 6: call 1's cells (acc_pc.sh: ETTh1 and
# ETTm1 at H = 96 and 720, weather at H = 96, lookback 96) with the rwkv7 backbone, so that the
# recipe's kind is chosen on val in every goal cell, as it was at weather H=720 (call 2).
# Run on the lent GPU: bash bench/device/sweep.sh bash bench/device/acc_pcr.sh, carrying
# .whl_acc, .bench_data/rpc32 and the two .csv.xz files.
G="PART=l96 RD=.bench_data/rpc32 KIND=rwkv7 TAG=pcr T=${T:-420} TE=${TE:-120}"
mkdir -p $OUT/ett $OUT/w
env $G OUT=$OUT/ett DATASETS="ETTh1 ETTm1" HORIZONS="96 720" RUN=ett \
  bash bench/device/acc_grid.sh > /tmp/ett.txt 2>&1 &
env $G OUT=$OUT/w DATASETS=weather HORIZONS=96 RUN=w bash bench/device/acc_grid.sh > /tmp/w.txt 2>&1 &
wait
cat /tmp/ett.txt /tmp/w.txt
