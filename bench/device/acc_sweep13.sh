#!/bin/bash
# Thirteenth sweep 2026-11-29 (sixth section, call 5): the full-history cells with a backbone that
# trains on more history than the linear path sees (--lookback longer than --linear-lookback):
# in full-history scoring the state has seen all the data, while a backbone trained on 336-row
# windows never learned to use more. rc3 (acc_sweep9.sh) on the same cycle fits.
T=${T:-420}
L=/tmp/logs13; rm -rf /tmp/ens13; mkdir -p $L
export OMP_NUM_THREADS=1
A="python3 -m bench.accuracy --kind diagonal_ssm --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl --ridge-dir .bench_data/ridgec"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
R="--point-loss mse --linear-init ridge --patience 2 --linear-lr 1e-9 --lr 3e-4"
run() {  # name dataset H L scores label "options" seeds...
  local n=$1 d=$2 h=$3 l=$4 sc=$5 lab=$6 F=$7; shift 7
  local V=() J=0
  for s in "$@"; do V+=(--variant "${lab}_s$s=$F --seed $s"); J=$((J+1)); done
  echo "$n: ${V[*]}" >> $L/variants.txt
  timeout $T $A --datasets $d --horizons $h --lookbacks $l --jobs $J --scores $sc \
    --save-dir /tmp/ens13/$n "${V[@]}" > $L/$n.txt 2>&1 &
}
MF="$NEW --epochs 8 $R --cycle 96 --linear-lookback 336"
HF="$NEW --epochs 12 $R --cycle 24 --linear-lookback 512"
run m672 ETTm1 96 672 all rc3 "$MF" 0 1 2
run m1344 ETTm1 96 1344 all rc3 "$MF" 0 1 2
run h1024 ETTh1 96 1024 all rc3 "$HF" 0 1 2
run h2048 ETTh1 96 2048 all rc3 "$HF" 0 1 2
wait
echo "sweep done $(date)"
for n in m672 m1344 h1024 h2048; do
  timeout ${TE:-60} python3 -m bench.accuracy --ensemble-from /tmp/ens13/$n --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
wait
tar czf $OUT/logs.tgz -C /tmp logs13
python3 -c "
import json
for f in ('$OUT/rows.jsonl','$OUT/ens.jsonl'):
    try: rows=[json.loads(l) for l in open(f)]
    except OSError: continue
    for r in rows: print(r['dataset'],r['horizon'],r['lookback'],r['variant'],round(r['val_mse'],4),round(r['test_mse'],4),round(r['test_mse_protocol'],4),r.get('full_history_mse_protocol'),r.get('best_epoch'),r['epochs'],r['train_seconds'],r.get('score_seconds'))
"
echo "all done $(date)"
