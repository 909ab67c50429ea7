#!/bin/bash
# Session 14 (docs/RESULTS.md, twelfth section), call 1: the full-history cells of ETTm1 (L=336)
# and ETTh1 (L=512) at H=96 under the grid's recipe (a map per channel), the diagonal SSM and
# rwkv7 side by side, scored with the linear path refitted online under both rules: the hedge over
# the frozen fit and every half-life (pipelines/online_fit.py, rule "mean") and the half-life best
# on val ("val"), from one pass (bench.accuracy online_scores: the row's online_by_rule and
# online_tried). Same seeds and recipe as the eleventh section's calls, so the trained members
# repeat theirs.
# Run on the lent GPU: bash bench/device/sweep.sh bash bench/device/acc_hedge.sh, carrying
# .whl_acc, .bench_data/rpcl (both fits in float64: the online fit starts from them) and ETTm1's
# .csv.xz.
G="PART=long HORIZONS=96 ONLINE=1 TE_OMP=4 RD=.bench_data/rpcl"
for d in ETTm1 ETTh1; do
  mkdir -p $OUT/$d/d $OUT/$d/r
  env $G DATASETS=$d OUT=$OUT/$d/d RUN=${d}d TAG=pc T=${TL:-290} TE=${TEL:-260} \
    bash bench/device/acc_grid.sh > /tmp/${d}d.txt 2>&1 &
  env $G DATASETS=$d OUT=$OUT/$d/r RUN=${d}r TAG=pcr KIND=rwkv7 T=${TL:-290} TE=${TEL:-260} \
    bash bench/device/acc_grid.sh > /tmp/${d}r.txt 2>&1 &
done
wait
cat /tmp/ETTm1d.txt /tmp/ETTm1r.txt /tmp/ETTh1d.txt /tmp/ETTh1r.txt
