#!/bin/bash
# Fourth sweep 2026-11-29: weather H=720 (cut in the third) and a channel-independent seed
# ensemble on ETTh1 H=720, patience 1 (every cut run's validation was best at epoch 0 or 1).
T=${T:-130}
L=/tmp/logs4; rm -rf /tmp/ens4; mkdir -p $L
A="python3 -m bench.accuracy --kind diagonal_ssm --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 1 --steps-per-epoch 100"
M="$NEW --epochs 8 --point-loss mse"
timeout $T $A --datasets weather --horizons 720 --lookbacks 96 --jobs 4 --save-dir /tmp/ens4/weather \
  --variant new="$NEW --epochs 8" --variant mse="$M" --variant mse_s1="$M --seed 1" \
  --variant mse_s2="$M --seed 2" > $L/w720.txt 2>&1 &
C="$NEW --epochs 12 --point-loss mse --channel-independent"
timeout $T $A --datasets ETTh1 --horizons 720 --lookbacks 96 --jobs 3 --save-dir /tmp/ens4/ETTh1 \
  --variant ci="$C" --variant ci_s1="$C --seed 1" --variant ci_s2="$C --seed 2" > $L/ci720.txt 2>&1 &
wait
echo "sweep done $(date)"
for d in weather ETTh1; do
  timeout ${TE:-25} python3 -m bench.accuracy --ensemble-from /tmp/ens4/$d --device cuda \
    --out $OUT/ens.jsonl > $L/ens_$d.txt 2>&1 &
done
wait
tar czf $OUT/logs.tgz -C /tmp logs4
echo "all done $(date)"
