#!/bin/bash
# Session 12 (docs/RESULTS.md, tenth section): the H=96 cells' `rc3shg` seeds 0-2 of acc_grid.sh,
# at lookback 96 and at the longer lookback, trained and scored as the grid trains them, with their
# weights brought back (ens_l96.tgz, ens_long.tgz: the --save-dir folders) so that what is done
# after training (the online fit, the online backbone weight) runs on any machine.
# Run on the lent GPU: bash bench/device/sweep.sh bash bench/device/acc_weights.sh, carrying
# .whl_acc, .bench_data/r96, .bench_data/rfh and the two .csv.xz files.
mkdir -p $OUT/l96 $OUT/long
OUT=$OUT/l96 PART=l96 HORIZONS=96 RD=.bench_data/r96 T=${T:-300} TE=${TE:-120} \
  bash bench/device/acc_grid.sh > /tmp/l96.txt 2>&1 &
OUT=$OUT/long PART=long HORIZONS=96 RD=.bench_data/rfh T=${T:-300} TE=${TE:-200} \
  bash bench/device/acc_grid.sh > /tmp/long.txt 2>&1 &
wait
cat /tmp/l96.txt /tmp/long.txt
tar czf $OUT/ens_l96.tgz -C /tmp ens_l96
tar czf $OUT/ens_long.tgz -C /tmp ens_long
ls -l $OUT $OUT/*
