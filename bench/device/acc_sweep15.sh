#!/bin/bash
# Fifteenth sweep 2026-11-29 (seventh section, session 9): the backbone's part shrunk toward the
# fit by validation (--shrink, pipelines/shrink.py) on the sixth section's recipes rc3 / rc1
# (and rcs on ETTm1 H=96), three seeds per cell; ensembles choose their own weight.
T=${T:-420}
HL=${HL:-512}
L=/tmp/logs15; rm -rf /tmp/ens15; mkdir -p $L
export OMP_NUM_THREADS=1
A="python3 -m bench.accuracy --kind diagonal_ssm --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl --ridge-dir .bench_data/ridgec"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
R="--point-loss mse --linear-init ridge --patience 2 --linear-lr 1e-9 --lr 3e-4 --shrink"
R1="--point-loss mse --linear-init ridge --patience 2 --linear-lr 1e-9 --lr 1e-4 --shrink"
RS="--point-loss mse --linear-init ridge --patience 2 --linear-lr 5e-4 --lr 3e-4 --shrink"
run() {  # name dataset H L scores label "options" seeds...
  local n=$1 d=$2 h=$3 l=$4 sc=$5 lab=$6 F=$7; shift 7
  local V=() J=0
  for s in "$@"; do V+=(--variant "${lab}_s$s=$F --seed $s"); J=$((J+1)); done
  echo "$n: ${V[*]}" >> $L/variants.txt
  timeout $T $A --datasets $d --horizons $h --lookbacks $l --jobs $J --scores $sc \
    --save-dir /tmp/ens15/$n "${V[@]}" > $L/$n.txt 2>&1 &
}
H="$NEW --epochs 12 --cycle 24"
M="$NEW --epochs 8 --cycle 96"
W="$NEW --epochs 8 --cycle 144 --patience 1"
run h96 ETTh1 96 96 all rc3sh "$H $R" 0 1 2
run h96b ETTh1 96 96 all rc1sh "$H $R1" 0 1 2
run h720 ETTh1 720 96 window rc3sh "$H $R" 0 1 2
run h720b ETTh1 720 96 window rc1sh "$H $R1" 0 1 2
run hfh ETTh1 96 $HL all rc3sh "$H $R" 0 1 2
run m96 ETTm1 96 96 all rc3sh "$M $R" 0 1 2
run m96b ETTm1 96 96 all rc1sh "$M $R1" 0 1 2
run m96s ETTm1 96 96 all rcssh "$M $RS" 0 1 2
run m720 ETTm1 720 96 window rc3sh "$M $R" 0 1 2
run m720b ETTm1 720 96 window rc1sh "$M $R1" 0 1 2
run mfh ETTm1 96 336 all rc3sh "$M $R" 0 1 2
run w720 weather 720 96 window rc3sh "$W $R" 0 1 2
wait
echo "sweep done $(date)"
for n in h720 h720b m720 m720b w720; do
  timeout ${TE:-90} python3 -m bench.accuracy --ensemble-from /tmp/ens15/$n --scores window --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
for n in h96 h96b hfh m96 m96b m96s mfh; do
  timeout ${TE:-90} python3 -m bench.accuracy --ensemble-from /tmp/ens15/$n --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
wait
tar czf $OUT/logs.tgz -C /tmp logs15
python3 -c "
import json
for f in ('$OUT/rows.jsonl','$OUT/ens.jsonl'):
    try: rows=[json.loads(l) for l in open(f)]
    except OSError: continue
    for r in rows: print(r['dataset'],r['horizon'],r['lookback'],r['variant'],round(r['val_mse'],4),round(r.get('val_mse_unshrunk') or 0,4),r.get('backbone_weight'),r.get('test_mse_protocol_unshrunk'),round(r['test_mse'],4),round(r['test_mse_protocol'],4),r.get('full_history_mse_protocol'),r.get('best_epoch'),r['epochs'],r['train_seconds'],r.get('score_seconds'))
"
echo "all done $(date)"
