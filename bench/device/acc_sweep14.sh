#!/bin/bash
# Fourteenth sweep 2026-11-29 (sixth section, call 6): rc3 with a channel-independent backbone
# (every channel its own series through the backbone, weights shared, as PatchTST and CycleNet
# model the residual) on the L=96 cells the fit leaves short. Recipes as in acc_sweep9.sh.
T=${T:-420}
L=/tmp/logs14; rm -rf /tmp/ens14; mkdir -p $L
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
    --save-dir /tmp/ens14/$n "${V[@]}" > $L/$n.txt 2>&1 &
}
CI="--channel-independent"
run h96 ETTh1 96 96 all rc3ci "$NEW --epochs 12 $R --cycle 24 $CI" 0 1 2
run h720 ETTh1 720 96 window rc3ci "$NEW --epochs 12 $R --cycle 24 $CI" 0 1 2
run m96 ETTm1 96 96 all rc3ci "$NEW --epochs 8 $R --cycle 96 $CI" 0 1 2
run m720 ETTm1 720 96 window rc3ci "$NEW --epochs 8 $R --cycle 96 $CI" 0 1 2
wait
echo "sweep done $(date)"
for n in h720 m720; do
  timeout ${TE:-60} python3 -m bench.accuracy --ensemble-from /tmp/ens14/$n --scores window --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
for n in h96 m96; do
  timeout ${TE:-60} python3 -m bench.accuracy --ensemble-from /tmp/ens14/$n --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
wait
tar czf $OUT/logs.tgz -C /tmp logs14
python3 -c "
import json
for f in ('$OUT/rows.jsonl','$OUT/ens.jsonl'):
    try: rows=[json.loads(l) for l in open(f)]
    except OSError: continue
    for r in rows: print(r['dataset'],r['horizon'],r['lookback'],r['variant'],round(r['val_mse'],4),round(r['test_mse'],4),round(r['test_mse_protocol'],4),r.get('full_history_mse_protocol'),r.get('best_epoch'),r['epochs'],r['train_seconds'],r.get('score_seconds'))
"
echo "all done $(date)"
