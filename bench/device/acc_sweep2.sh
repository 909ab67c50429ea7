#!/bin/bash
# Second sweep 2026-11-29: the new recipe's second seed (L=336; L=96 at H=720) and lookback 512.
T=${T:-175}
A="python3 -m bench.accuracy --kind diagonal_ssm --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
timeout $T $A --datasets weather ETTm1 --horizons 720 96 --lookbacks 336 --jobs 4 \
  --variant new_s1="$NEW --epochs 8 --seed 1" > $OUT/log_s1_336.txt 2>&1 &
timeout $T $A --datasets weather ETTm1 --horizons 720 --lookbacks 96 --jobs 2 \
  --variant new_s1="$NEW --epochs 8 --seed 1" > $OUT/log_s1_96.txt 2>&1 &
timeout $T $A --datasets weather ETTm1 --horizons 720 96 --lookbacks 512 --jobs 4 \
  --variant new="$NEW --epochs 8" > $OUT/log_512.txt 2>&1 &
timeout $T $A --datasets ETTh1 --horizons 720 96 --lookbacks 512 --jobs 2 \
  --variant new="$NEW --epochs 12" > $OUT/log_512_etth1.txt 2>&1 &
wait
echo done
