#!/bin/bash
# Sixteenth sweep 2026-11-29 (seventh section, call 2): --shrink on the recipes that hold the best
# val of three cells: ETTh1 H=720 rc3ci (acc_sweep14.sh), ETTm1 H=96 rcs seeds 0-9 and weather
# H=720 `mse` seeds 0-9 (acc_sweep12.sh, acc_sweep6.sh), with their ten-seed ensembles.
T=${T:-230}
L=/tmp/logs16; rm -rf /tmp/ens16; mkdir -p $L
export OMP_NUM_THREADS=1
A="python3 -m bench.accuracy --kind diagonal_ssm --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl --ridge-dir .bench_data/ridgec"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
R="--point-loss mse --linear-init ridge --patience 2 --linear-lr 1e-9 --lr 3e-4 --shrink"
RS="--point-loss mse --linear-init ridge --patience 2 --linear-lr 5e-4 --lr 3e-4 --shrink"
run() {  # name dataset H L scores label "options" seeds...
  local n=$1 d=$2 h=$3 l=$4 sc=$5 lab=$6 F=$7; shift 7
  local V=() J=0
  for s in "$@"; do V+=(--variant "${lab}_s$s=$F --seed $s"); J=$((J+1)); done
  echo "$n: ${V[*]}" >> $L/variants.txt
  timeout $T $A --datasets $d --horizons $h --lookbacks $l --jobs $J --scores $sc \
    --save-dir /tmp/ens16/$n "${V[@]}" > $L/$n.txt 2>&1 &
}
S10="0 1 2 3 4 5 6 7 8 9"
run h720 ETTh1 720 96 window rc3cish "$NEW --epochs 12 $R --cycle 24 --channel-independent" 0 1 2
run m96s ETTm1 96 96 window rcssh "$NEW --epochs 8 $RS --cycle 96" $S10
run w720 weather 720 96 window msesh "$NEW --epochs 8 --point-loss mse --patience 1 --shrink" $S10
wait
echo "sweep done $(date)"
for n in h720 m96s w720; do
  timeout ${TE:-70} python3 -m bench.accuracy --ensemble-from /tmp/ens16/$n --scores window --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
wait
tar czf $OUT/logs.tgz -C /tmp logs16
python3 -c "
import json
for f in ('$OUT/rows.jsonl','$OUT/ens.jsonl'):
    try: rows=[json.loads(l) for l in open(f)]
    except OSError: continue
    for r in rows: print(r['dataset'],r['horizon'],r['lookback'],r['variant'],round(r['val_mse'],6),round(r.get('val_mse_unshrunk') or 0,6),r.get('backbone_weight'),r.get('test_mse_protocol_unshrunk'),round(r['test_mse'],4),round(r['test_mse_protocol'],4),r.get('best_epoch'),r['epochs'],r['train_seconds'],r.get('score_seconds'))
"
echo "all done $(date)"
