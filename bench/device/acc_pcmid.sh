#!/bin/bash
# Session 13 (docs/RESULTS.md, eleventh section), call 5: the rest of the lookback-96 grid
# (H = 192 and 336, all three datasets) under the recipe with a linear map per channel. Weather's
# fits travel in .bench_data/rpc32mid (float32 copies); ETT's are made on the device by each run
# (seconds; all three fits together would not fit in the 64 MiB carry).
# Run on the lent GPU: bash bench/device/sweep.sh bash bench/device/acc_pcmid.sh, carrying
# .whl_acc, .bench_data/rpc32mid and the two .csv.xz files.
PART=l96 HORIZONS="192 336" RD=.bench_data/rpc32mid TAG=pc T=${T:-420} TE=${TE:-120} \
  bash bench/device/acc_grid.sh
