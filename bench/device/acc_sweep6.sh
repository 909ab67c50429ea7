#!/bin/bash
# Sixth sweep 2026-11-29: weather H=720 L=96 `mse` seeds 0-9 (a 10-seed ensemble; seeds 0-4 repeat
# the fifth sweep's runs), a backbone lr of 3e-4 for weather H=720 (3 seeds) and ETTm1 H=96 (3 seeds,
# the best val of the fifth sweep's variants there), each as a seed ensemble.
T=${T:-200}
L=/tmp/logs6; rm -rf /tmp/ens6; mkdir -p $L
export OMP_NUM_THREADS=1
A="python3 -m bench.accuracy --kind diagonal_ssm --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
W="$NEW --epochs 8 --point-loss mse --patience 1"
V=(); for s in 1 2 3 4 5 6 7 8 9; do V+=(--variant "mse_s$s=$W --seed $s"); done
timeout $T $A --datasets weather --horizons 720 --lookbacks 96 --jobs 10 --scores window \
  --save-dir /tmp/ens6/w_mse --variant mse="$W" "${V[@]}" > $L/w720.txt 2>&1 &
timeout $T $A --datasets weather --horizons 720 --lookbacks 96 --jobs 3 --scores window \
  --save-dir /tmp/ens6/w_lr --variant lr3e-4="$W --lr 3e-4" --variant lr3e-4_s1="$W --lr 3e-4 --seed 1" \
  --variant lr3e-4_s2="$W --lr 3e-4 --seed 2" > $L/w720lr.txt 2>&1 &
M="$NEW --epochs 8 --point-loss mse --lr 3e-4"
timeout $T $A --datasets ETTm1 --horizons 96 --lookbacks 96 --jobs 3 --save-dir /tmp/ens6/m_lr \
  --variant lr3e-4="$M" --variant lr3e-4_s1="$M --seed 1" --variant lr3e-4_s2="$M --seed 2" \
  > $L/m96lr.txt 2>&1 &
wait
echo "sweep done $(date)"
timeout ${TE:-100} python3 -m bench.accuracy --ensemble-from /tmp/ens6/w_mse --scores window \
  --device cuda --out $OUT/ens.jsonl > $L/ens_w_mse.txt 2>&1 &
timeout ${TE:-100} python3 -m bench.accuracy --ensemble-from /tmp/ens6/w_lr --scores window \
  --device cuda --out $OUT/ens.jsonl > $L/ens_w_lr.txt 2>&1 &
timeout ${TE:-100} python3 -m bench.accuracy --ensemble-from /tmp/ens6/m_lr --device cuda \
  --out $OUT/ens.jsonl > $L/ens_m_lr.txt 2>&1 &
wait
ls /tmp/ens6/*
tar czf $OUT/logs.tgz -C /tmp logs6
python3 -c "
import json
for f in ('$OUT/rows.jsonl','$OUT/ens.jsonl'):
    try: rows=[json.loads(l) for l in open(f)]
    except OSError: continue
    for r in rows: print(r['dataset'],r['horizon'],r['variant'],round(r['val_mse'],4),round(r['test_mse'],4),round(r['test_mse_protocol'],4),r.get('full_history_mse_protocol'),r['epochs'],r['train_seconds'],r.get('score_seconds'))
"
echo "all done $(date)"
