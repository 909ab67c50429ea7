#!/bin/bash
# Third sweep 2026-11-29: the point forecast trained on MSE alone (3 seeds, for seed ensembles),
# channel independence, the linear path alone; weather's `new` again for its protocol-scaler score.
T=${T:-360}
L=/tmp/logs; mkdir -p $L
A="python3 -m bench.accuracy --kind diagonal_ssm --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
for d in weather ETTm1 ETTh1; do
  if [ $d = ETTh1 ]; then E=12; else E=8; fi
  M="$NEW --epochs $E --point-loss mse"
  timeout $T $A --datasets $d --horizons 720 96 --lookbacks 96 --jobs 6 --save-dir /tmp/ens/$d \
    --variant mse="$M" --variant mse_s1="$M --seed 1" --variant mse_s2="$M --seed 2" > $L/mse_$d.txt 2>&1 &
  timeout $T $A --datasets $d --horizons 96 --lookbacks 336 --jobs 2 --save-dir /tmp/ens/$d \
    --variant mse="$M" --variant mse_s1="$M --seed 1" > $L/mse336_$d.txt 2>&1 &
  timeout $T $A --datasets $d --horizons 720 96 --lookbacks 96 --jobs 2 \
    --variant ci="$M --channel-independent" > $L/ci_$d.txt 2>&1 &
  timeout $T $A --datasets $d --horizons 720 --lookbacks 96 --jobs 1 \
    --variant linear_only="$NEW --epochs $E --lr 1e-9" > $L/lin_$d.txt 2>&1 &
done
timeout $T $A --datasets weather --horizons 720 96 --lookbacks 96 --jobs 2 \
  --variant new="$NEW --epochs 8" > $L/new_weather.txt 2>&1 &
wait
echo "sweep done $(date)"
for d in weather ETTm1 ETTh1; do
  timeout ${TE:-80} python3 -m bench.accuracy --ensemble-from /tmp/ens/$d --device cuda \
    --out $OUT/ens.jsonl > $L/ens_$d.txt 2>&1 &
done
wait
ls /tmp/ens/*
tar czf $OUT/logs.tgz -C /tmp logs
echo "all done $(date)"
