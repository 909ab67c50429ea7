#!/bin/bash
# Eighteenth sweep 2026-11-29 (eighth section, session 10, call 2): --shrink-groups
# channel_horizon (as acc_sweep17.sh) on the full-history cells (ETTh1 L=512 rc3 and rc1, ETTm1
# L=336 rc3), weather H=720 (rc3, and the `mse` recipe's ten seeds) and ETTm1 H=96 L=96 rcs's ten
# seeds (the seventh section's best val there is seed 8), with their ensembles.
T=${T:-420}
L=/tmp/logs18; rm -rf /tmp/ens18; mkdir -p $L
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
    --save-dir /tmp/ens18/$n "${V[@]}" > $L/$n.txt 2>&1 &
}
S10="0 1 2 3 4 5 6 7 8 9"
H="$NEW --epochs 12 --cycle 24"
M="$NEW --epochs 8 --cycle 96"
W="$NEW --epochs 8 --cycle 144 --patience 1"
run hfh ETTh1 96 512 all rc3shg "$H $R" 0 1 2
run hfhb ETTh1 96 512 all rc1shg "$H $R1" 0 1 2
run mfh ETTm1 96 336 all rc3shg "$M $R" 0 1 2
run m96s ETTm1 96 96 all rcsshg "$M $RS" $S10
run w720 weather 720 96 window rc3shg "$W $R" 0 1 2
run w720m weather 720 96 window mseshg "$NEW --epochs 8 --point-loss mse --patience 1 $G" $S10
wait
echo "sweep done $(date)"
for n in w720 w720m; do
  timeout ${TE:-90} python3 -m bench.accuracy --ensemble-from /tmp/ens18/$n --scores window --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
for n in hfh hfhb mfh m96s; do
  timeout ${TE:-90} python3 -m bench.accuracy --ensemble-from /tmp/ens18/$n --device cuda --out $OUT/ens.jsonl > $L/ens_$n.txt 2>&1 &
done
wait
tar czf $OUT/logs.tgz -C /tmp logs18
python3 bench/device/rows.py $OUT/rows.jsonl $OUT/ens.jsonl
echo "all done $(date)"
