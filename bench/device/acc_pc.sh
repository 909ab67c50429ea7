#!/bin/bash
# Session 13 (docs/RESULTS.md, eleventh section): the grid's recipe (acc_grid.sh) with a linear map
# per channel (--per-channel: each channel's map pulled toward the shared fit, the pull chosen on
# validation, pipelines/linear_fit.py), seeds 0-2 and their mean, at lookback 96 and H = 96 and
# 720 on all three datasets. The fits travel in .bench_data/rpc32 (bench/device/fits32.py of the
# --ridge-linear --per-channel fits).
# Run on the lent GPU: bash bench/device/sweep.sh bash bench/device/acc_pc.sh, carrying
# .whl_acc, .bench_data/rpc32 and the two .csv.xz files.
PART=l96 HORIZONS="${HORIZONS:-96 720}" RD=.bench_data/rpc32 EXTRA=--per-channel TAG=pc T=${T:-420} \
  TE=${TE:-120} bash bench/device/acc_grid.sh
