#!/bin/bash
# Session 14 (docs/RESULTS.md, twelfth section), call 2: weather's full-history cell (L=336,
# H=96) as call 1 (acc_hedge.sh) ran ETT's: the grid's recipe with a map per channel, the
# diagonal SSM and rwkv7 side by side, the online path under both rules from one pass.
# Run on the lent GPU: bash bench/device/sweep.sh bash bench/device/acc_hedgew.sh, carrying
# .whl_acc, .bench_data/rpclw (the fit in float64: the online fit starts from it) and weather's
# .csv.xz.
G="PART=long DATASETS=weather HORIZONS=96 ONLINE=1 TE_OMP=6 RD=.bench_data/rpclw"
mkdir -p $OUT/d $OUT/r
env $G OUT=$OUT/d RUN=d TAG=pc T=${TL:-300} TE=${TEL:-280} bash bench/device/acc_grid.sh \
  > /tmp/d.txt 2>&1 &
env $G OUT=$OUT/r RUN=r TAG=pcr KIND=rwkv7 T=${TL:-300} TE=${TEL:-280} \
  bash bench/device/acc_grid.sh > /tmp/r.txt 2>&1 &
wait
cat /tmp/d.txt /tmp/r.txt
