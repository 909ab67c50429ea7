#!/bin/bash
# Session 12 (docs/RESULTS.md, tenth section): the grid's recipe (acc_grid.sh) with the rwkv7
# backbone, seeds 0-2 and their mean: lookback 96 at H = 96 and 720 on all three datasets, and
# the longer lookback at H = 96 on ETTm1 and weather with the full history refitted online
# (ONLINE=1). Both parts run at once.
# Run on the lent GPU: bash bench/device/sweep.sh bash bench/device/acc_rwkv.sh, carrying
# .whl_acc, .bench_data/r96, .bench_data/rfh and the two .csv.xz files.
mkdir -p $OUT/l96 $OUT/long
OUT=$OUT/l96 KIND=rwkv7 PART=l96 HORIZONS="96 720" RD=.bench_data/r96 T=${T:-300} TE=${TE:-120} \
  bash bench/device/acc_grid.sh > /tmp/l96.txt 2>&1 &
OUT=$OUT/long KIND=rwkv7 PART=long HORIZONS=96 DATASETS="ETTm1 weather" ONLINE=1 TE_OMP=4 \
  RD=.bench_data/rfh T=${TL:-240} TE=${TEL:-250} bash bench/device/acc_grid.sh > /tmp/long.txt 2>&1 &
wait
cat /tmp/l96.txt /tmp/long.txt
