#!/bin/bash
# Seventh sweep 2026-11-29 (fifth section): the linear path started at its closed-form fit
# (--linear-init ridge, fits from .bench_data/ridge made on the local CPU), the backbone trained on
# the residual; rf = linear path frozen (--linear-lr 1e-9), rs = linear path at 5e-4. Seeds 0-2 of
# rf per goal cell (a seed ensemble each); rs and rf3 (rf with the backbone at lr 3e-4) seed 0 on
# some cells. Weather keeps its patience 1 (the fourth section's recipe there).
T=${T:-300}
L=/tmp/logs7; rm -rf /tmp/ens7; mkdir -p $L
export OMP_NUM_THREADS=1
A="python3 -m bench.accuracy --kind diagonal_ssm --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl --ridge-dir .bench_data/ridge"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
R="--point-loss mse --linear-init ridge --patience 2"
run() {  # name dataset H L epochs scores nseeds extras ("rs rf3" or "")
  local n=$1 d=$2 h=$3 l=$4 e=$5 sc=$6 k=$7 ex=$8
  local F="$NEW --epochs $e $R --linear-lr 1e-9"
  [ $d = weather ] && F="$F --patience 1"
  local V=(--variant "rf=$F")
  for s in $(seq 1 $((k-1))); do V+=(--variant "rf_s$s=$F --seed $s"); done
  local J=$k
  for x in $ex; do
    [ $x = rs ] && V+=(--variant "rs=$NEW --epochs $e $R --linear-lr 5e-4")
    [ $x = rf3 ] && V+=(--variant "rf3=$F --lr 3e-4")
    J=$((J+1))
  done
  echo "$n: ${V[*]}" >> $L/variants.txt
  timeout $T $A --datasets $d --horizons $h --lookbacks $l --jobs $J --scores $sc \
    --save-dir /tmp/ens7/$n "${V[@]}" > $L/$n.txt 2>&1 &
}
run w720 weather 720 96 8 window 3 ""
run h96 ETTh1 96 96 12 all 3 "rs rf3"
run h720 ETTh1 720 96 12 window 3 "rf3"
run h96L512 ETTh1 96 512 12 all 3 ""
run m96 ETTm1 96 96 8 all 3 "rs rf3"
run m720 ETTm1 720 96 8 window 3 ""
run m96L336 ETTm1 96 336 8 all 3 ""
wait
echo "sweep done $(date)"
for n in w720 h720 m720; do
  timeout ${TE:-80} python3 -m bench.accuracy --ensemble-from /tmp/ens7/$n --scores window --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
for n in h96 h96L512 m96 m96L336; do
  timeout ${TE:-80} python3 -m bench.accuracy --ensemble-from /tmp/ens7/$n --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
wait
ls /tmp/ens7/*
tar czf $OUT/logs.tgz -C /tmp logs7
python3 -c "
import json
for f in ('$OUT/rows.jsonl','$OUT/ens.jsonl'):
    try: rows=[json.loads(l) for l in open(f)]
    except OSError: continue
    for r in rows: print(r['dataset'],r['horizon'],r['lookback'],r['variant'],round(r['val_mse'],4),round(r['test_mse'],4),round(r['test_mse_protocol'],4),r.get('full_history_mse_protocol'),r.get('best_epoch'),r['epochs'],r['train_seconds'],r.get('score_seconds'))
"
echo "all done $(date)"
