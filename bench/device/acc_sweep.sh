#!/bin/bash
# Accuracy sweep 2026-11-29: base (previous recipe) vs new recipe, plus ablations; all diagonal_ssm.
# Run through sweep.sh (polars + data). Rows to $OUT/rows.jsonl, logs to $OUT/log_*.txt.
T=${T:-420}
A="python3 -m bench.accuracy --kind diagonal_ssm --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl"
BASE="--batch-size 64 --epochs 4 --patience 1"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
# ETTh1: 66 steps of 128 per epoch -> 12 epochs ~ 800 steps; ETTm1/weather: 8 epochs of 100 steps.
timeout $T $A --datasets ETTh1 --horizons 96 720 --lookbacks 96 336 --jobs 12 \
  --variant base="$BASE" --variant new="$NEW --epochs 12" --variant new_s1="$NEW --epochs 12 --seed 1" > $OUT/log_etth1.txt 2>&1 &
timeout $T $A --datasets ETTm1 weather --horizons 96 720 --lookbacks 96 --jobs 4 \
  --variant base="$BASE" > $OUT/log_base.txt 2>&1 &
timeout $T $A --datasets weather ETTm1 --horizons 720 96 --lookbacks 96 336 --jobs 8 \
  --variant new="$NEW --epochs 8" > $OUT/log_new.txt 2>&1 &
timeout $T $A --datasets ETTh1 --horizons 96 --lookbacks 96 --jobs 3 \
  --variant new_running="$NEW --epochs 12 --linear-norm running" \
  --variant new_randhead="$NEW --epochs 12 --no-zero-head" \
  --variant new_samelr="$NEW --epochs 12 --linear-lr 1e-3" > $OUT/log_abl_etth1.txt 2>&1 &
timeout $T $A --datasets ETTm1 --horizons 96 --lookbacks 96 --jobs 3 \
  --variant new_running="$NEW --epochs 8 --linear-norm running" \
  --variant new_randhead="$NEW --epochs 8 --no-zero-head" \
  --variant new_samelr="$NEW --epochs 8 --linear-lr 1e-3" > $OUT/log_abl_ettm1.txt 2>&1 &
wait
echo done
