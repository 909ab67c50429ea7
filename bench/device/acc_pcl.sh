#!/bin/bash
# Session 13 (docs/RESULTS.md, eleventh section), call 3: ETTm1's full-history cell (L=336, H=96)
# with the grid's recipe and a linear map per channel (--per-channel), the linear path refitted
# online per channel (ONLINE=1), the diagonal SSM and rwkv7 side by side. ETTh1's longer-lookback
# fit keeps the shared map (the per-channel fit validates no better), so its cell is unchanged.
# Run on the lent GPU: bash bench/device/sweep.sh bash bench/device/acc_pcl.sh, carrying
# .whl_acc, .bench_data/rpcl (the fit in float64: the online fit starts from it) and ETTm1's
# .csv.xz.
G="PART=long DATASETS=ETTm1 HORIZONS=96 ONLINE=1 TE_OMP=4 RD=.bench_data/rpcl EXTRA=--per-channel"
mkdir -p $OUT/d $OUT/r
env $G OUT=$OUT/d RUN=d TAG=pc T=${TL:-300} TE=${TEL:-280} bash bench/device/acc_grid.sh \
  > /tmp/d.txt 2>&1 &
env $G OUT=$OUT/r RUN=r TAG=pcr KIND=rwkv7 T=${TL:-300} TE=${TEL:-280} \
  bash bench/device/acc_grid.sh > /tmp/r.txt 2>&1 &
wait
cat /tmp/d.txt /tmp/r.txt
