#!/bin/bash
# Session 13 (docs/RESULTS.md, eleventh section), call 4: weather's full-history cell (L=336,
# H=96) under the grid's recipe, now with a linear map per channel, the linear path refitted
# online per channel (ONLINE=1), the diagonal SSM and rwkv7 side by side.
# Run on the lent GPU: bash bench/device/sweep.sh bash bench/device/acc_pcw.sh, carrying
# .whl_acc, .bench_data/rpclw (the fit in float64: the online fit starts from it) and weather's
# .csv.xz.
G="PART=long DATASETS=weather HORIZONS=96 ONLINE=1 TE_OMP=4 RD=.bench_data/rpclw"
mkdir -p $OUT/d $OUT/r
env $G OUT=$OUT/d RUN=d TAG=pc T=${TL:-300} TE=${TEL:-280} bash bench/device/acc_grid.sh \
  > /tmp/d.txt 2>&1 &
env $G OUT=$OUT/r RUN=r TAG=pcr KIND=rwkv7 T=${TL:-300} TE=${TEL:-280} \
  bash bench/device/acc_grid.sh > /tmp/r.txt 2>&1 &
wait
cat /tmp/d.txt /tmp/r.txt
