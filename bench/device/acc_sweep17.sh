#!/bin/bash
# Seventeenth sweep 2026-11-29 (eighth section, session 10, call 1): the shrink with a weight per
# channel and quarter of the horizon (--shrink-groups channel_horizon; every row also reports the
# one-weight and per-channel choices from the same validation passes) on the ETT lookback-96
# cells' recipes of the seventh section, same seeds; ensembles choose their own weights.
T=${T:-420}
L=/tmp/logs17; rm -rf /tmp/ens17; mkdir -p $L
export OMP_NUM_THREADS=1
A="python3 -m bench.accuracy --kind diagonal_ssm --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl --ridge-dir .bench_data/ridgec"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
G="--shrink --shrink-groups channel_horizon"
R="--point-loss mse --linear-init ridge --patience 2 --linear-lr 1e-9 --lr 3e-4 $G"
R1="--point-loss mse --linear-init ridge --patience 2 --linear-lr 1e-9 --lr 1e-4 $G"
RS="--point-loss mse --linear-init ridge --patience 2 --linear-lr 5e-4 --lr 3e-4 $G"
run() {  # name dataset H L scores label "options" seeds...
  local n=$1 d=$2 h=$3 l=$4 sc=$5 lab=$6 F=$7; shift 7
  local V=() J=0
  for s in "$@"; do V+=(--variant "${lab}_s$s=$F --seed $s"); J=$((J+1)); done
  echo "$n: ${V[*]}" >> $L/variants.txt
  timeout $T $A --datasets $d --horizons $h --lookbacks $l --jobs $J --scores $sc \
    --save-dir /tmp/ens17/$n "${V[@]}" > $L/$n.txt 2>&1 &
}
H="$NEW --epochs 12 --cycle 24"
M="$NEW --epochs 8 --cycle 96"
run h96 ETTh1 96 96 all rc3shg "$H $R" 0 1 2
run h96b ETTh1 96 96 all rc1shg "$H $R1" 0 1 2
run h720 ETTh1 720 96 window rc3shg "$H $R" 0 1 2
run h720b ETTh1 720 96 window rc1shg "$H $R1" 0 1 2
run h720c ETTh1 720 96 window rc3cishg "$H $R --channel-independent" 0 1 2
run m96s ETTm1 96 96 all rcsshg "$M $RS" 0 1 2
run m720 ETTm1 720 96 window rc3shg "$M $R" 0 1 2
run m720b ETTm1 720 96 window rc1shg "$M $R1" 0 1 2
wait
echo "sweep done $(date)"
for n in h720 h720b h720c m720 m720b; do
  timeout ${TE:-90} python3 -m bench.accuracy --ensemble-from /tmp/ens17/$n --scores window --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
for n in h96 h96b m96s; do
  timeout ${TE:-90} python3 -m bench.accuracy --ensemble-from /tmp/ens17/$n --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
wait
tar czf $OUT/logs.tgz -C /tmp logs17
python3 bench/device/rows.py $OUT/rows.jsonl $OUT/ens.jsonl
echo "all done $(date)"
