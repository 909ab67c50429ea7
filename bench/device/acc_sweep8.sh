#!/bin/bash
# Eighth sweep 2026-11-29 (fifth section, call 2): after call 1 (the backbone overfits within one
# epoch at lr 1e-3 on top of the fitted linear path; rf3, lr 3e-4, had the best ETTm1 val):
# rf3 = linear path fitted and frozen, backbone lr 3e-4, seed ensembles on the ETT cells;
# rn = weather H=720's `mse` recipe (linear path at 5e-3) started at the fit.
T=${T:-300}
L=/tmp/logs8; rm -rf /tmp/ens8; mkdir -p $L
export OMP_NUM_THREADS=1
A="python3 -m bench.accuracy --kind diagonal_ssm --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl --ridge-dir .bench_data/ridge"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
R="--point-loss mse --linear-init ridge --patience 2"
run() {  # name dataset H L scores label "options" seeds...
  local n=$1 d=$2 h=$3 l=$4 sc=$5 lab=$6 F=$7; shift 7
  local V=() J=0
  for s in "$@"; do V+=(--variant "${lab}_s$s=$F --seed $s"); J=$((J+1)); done
  echo "$n: ${V[*]}" >> $L/variants.txt
  timeout $T $A --datasets $d --horizons $h --lookbacks $l --jobs $J --scores $sc \
    --save-dir /tmp/ens8/$n "${V[@]}" > $L/$n.txt 2>&1 &
}
F3H="$NEW --epochs 12 $R --linear-lr 1e-9 --lr 3e-4"
F3M="$NEW --epochs 8 $R --linear-lr 1e-9 --lr 3e-4"
FN="$NEW --epochs 8 --point-loss mse --patience 1 --linear-init ridge"
run w720 weather 720 96 window rn "$FN" 0 1 2 3 4
run m336 ETTm1 96 336 all rf3 "$F3M" 0 1 2 3 4
run m336lr1 ETTm1 96 336 all rf1 "$NEW --epochs 8 $R --linear-lr 1e-9 --lr 1e-4" 0
run m512 ETTm1 96 512 all rf3 "$F3M" 0 1 2
run m96 ETTm1 96 96 all rf3 "$F3M" 0 1 2
run m720 ETTm1 720 96 window rf3 "$F3M" 0 1 2
run h512 ETTh1 96 512 all rf3 "$F3H" 0 1 2
wait
echo "sweep done $(date)"
for n in w720 m720; do
  timeout ${TE:-80} python3 -m bench.accuracy --ensemble-from /tmp/ens8/$n --scores window --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
for n in m336 m512 m96 h512; do
  timeout ${TE:-80} python3 -m bench.accuracy --ensemble-from /tmp/ens8/$n --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
wait
tar czf $OUT/logs.tgz -C /tmp logs8
python3 -c "
import json
for f in ('$OUT/rows.jsonl','$OUT/ens.jsonl'):
    try: rows=[json.loads(l) for l in open(f)]
    except OSError: continue
    for r in rows: print(r['dataset'],r['horizon'],r['lookback'],r['variant'],round(r['val_mse'],4),round(r['test_mse'],4),round(r['test_mse_protocol'],4),r.get('full_history_mse_protocol'),r.get('best_epoch'),r['epochs'],r['train_seconds'],r.get('score_seconds'))
"
echo "all done $(date)"
