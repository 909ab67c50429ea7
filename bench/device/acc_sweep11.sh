#!/bin/bash
# Eleventh sweep 2026-11-29 (sixth section, call 3): the daily cycle trained by SGD from zero
# with everything else (no closed-form start), as `statecast train --cycle-length P` trains it:
# the earlier sections' best from-zero recipes (weather H=720 `mse`, ETTm1 `mse`, ETTh1 `new`)
# with --cycle. mc = `mse` + cycle, hc = ETTh1's `new` + cycle; seed ensembles.
T=${T:-420}
L=/tmp/logs11; rm -rf /tmp/ens11; mkdir -p $L
export OMP_NUM_THREADS=1
A="python3 -m bench.accuracy --kind diagonal_ssm --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
run() {  # name dataset H L scores label "options" seeds...
  local n=$1 d=$2 h=$3 l=$4 sc=$5 lab=$6 F=$7; shift 7
  local V=() J=0
  for s in "$@"; do V+=(--variant "${lab}_s$s=$F --seed $s"); J=$((J+1)); done
  echo "$n: ${V[*]}" >> $L/variants.txt
  timeout $T $A --datasets $d --horizons $h --lookbacks $l --jobs $J --scores $sc \
    --save-dir /tmp/ens11/$n "${V[@]}" > $L/$n.txt 2>&1 &
}
W="$NEW --epochs 8 --point-loss mse --patience 1 --cycle 144"
M="$NEW --epochs 8 --point-loss mse --cycle 96"
H="$NEW --epochs 12 --cycle 24"
run w720 weather 720 96 window mc "$W" 0 1 2 3 4 5 6 7 8 9
run m96 ETTm1 96 96 all mc "$M" 0 1 2 3 4
run m720 ETTm1 720 96 window mc "$M" 0 1 2
run h96 ETTh1 96 96 all hc "$H" 0 1 2
wait
echo "sweep done $(date)"
for n in m720 w720; do
  timeout ${TE:-60} python3 -m bench.accuracy --ensemble-from /tmp/ens11/$n --scores window --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
for n in h96 m96; do
  timeout ${TE:-60} python3 -m bench.accuracy --ensemble-from /tmp/ens11/$n --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
wait
tar czf $OUT/logs.tgz -C /tmp logs11
python3 -c "
import json
for f in ('$OUT/rows.jsonl','$OUT/ens.jsonl'):
    try: rows=[json.loads(l) for l in open(f)]
    except OSError: continue
    for r in rows: print(r['dataset'],r['horizon'],r['lookback'],r['variant'],round(r['val_mse'],4),round(r['test_mse'],4),round(r['test_mse_protocol'],4),r.get('full_history_mse_protocol'),r.get('best_epoch'),r['epochs'],r['train_seconds'],r.get('score_seconds'))
"
echo "all done $(date)"
