#!/bin/bash
# Fifth sweep 2026-11-29: weather H=720 L=96 seed ensemble of the val-chosen `mse` recipe (5 seeds,
# test windows only: no full-history pass); ETTh1 H=96 L=96 `new` 5-seed ensemble; three capacity
# variants (d_model 32, heavier dropout/weight decay, backbone lr 3e-4) on ETTh1 and ETTm1 H=96 L=96.
T=${T:-280}
L=/tmp/logs5; rm -rf /tmp/ens5; mkdir -p $L
export OMP_NUM_THREADS=1
A="python3 -m bench.accuracy --kind diagonal_ssm --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
W="$NEW --epochs 8 --point-loss mse --patience 1"
timeout $T $A --datasets weather --horizons 720 --lookbacks 96 --jobs 5 --scores window \
  --save-dir /tmp/ens5/weather --variant mse="$W" --variant mse_s1="$W --seed 1" \
  --variant mse_s2="$W --seed 2" --variant mse_s3="$W --seed 3" --variant mse_s4="$W --seed 4" \
  > $L/w720.txt 2>&1 &
H="$NEW --epochs 12"
timeout $T $A --datasets ETTh1 --horizons 96 --lookbacks 96 --jobs 8 --save-dir /tmp/ens5/ETTh1 \
  --variant new="$H" --variant new_s1="$H --seed 1" --variant new_s2="$H --seed 2" \
  --variant new_s3="$H --seed 3" --variant new_s4="$H --seed 4" > $L/h96.txt 2>&1 &
timeout $T $A --datasets ETTh1 --horizons 96 --lookbacks 96 --jobs 3 --variant d32="$H --d-model 32" \
  --variant reg="$H --dropout 0.3 --weight-decay 0.1" --variant lr3e-4="$H --lr 3e-4" > $L/h96v.txt 2>&1 &
M="$NEW --epochs 8 --point-loss mse"
timeout $T $A --datasets ETTm1 --horizons 96 --lookbacks 96 --jobs 3 --variant d32="$M --d-model 32" \
  --variant reg="$M --dropout 0.3 --weight-decay 0.1" --variant lr3e-4="$M --lr 3e-4" > $L/m96v.txt 2>&1 &
wait
echo "sweep done $(date)"
timeout ${TE:-80} python3 -m bench.accuracy --ensemble-from /tmp/ens5/weather --scores window \
  --device cuda --out $OUT/ens.jsonl > $L/ens_weather.txt 2>&1 &
timeout ${TE:-80} python3 -m bench.accuracy --ensemble-from /tmp/ens5/ETTh1 --device cuda \
  --out $OUT/ens.jsonl > $L/ens_ETTh1.txt 2>&1 &
wait
ls /tmp/ens5/*
tar czf $OUT/logs.tgz -C /tmp logs5
cat $L/ens_*.txt
python3 -c "
import json,sys
for f in ('$OUT/rows.jsonl','$OUT/ens.jsonl'):
    try: rows=[json.loads(l) for l in open(f)]
    except OSError: continue
    for r in rows: print(r['dataset'],r['horizon'],r['variant'],round(r['val_mse'],4),round(r['test_mse'],4),round(r['test_mse_protocol'],4),r.get('full_history_mse_protocol'),r['epochs'],r['train_seconds'],r.get('score_seconds'))
"
echo "all done $(date)"
