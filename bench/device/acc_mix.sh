#!/bin/bash
# Session 12 (docs/RESULTS.md, tenth section): the lookback-96 goal cells the grid misses, with
# the grid's recipe (acc_grid.sh's `rc3shg`) trained for each model kind, seeds 0 and 1, and
# scored as mean forecasts: per kind (ens2), one seed of each kind (mix3, seed 0, the size of the
# grid's ens3), and all six (mix6) (bench.accuracy --ensemble-from DIR [--mix-kinds]). Each cell
# scores as soon as its runs are trained. T, TE: the training and scoring time limits (s).
# Run on the lent GPU: bash bench/device/sweep.sh bash bench/device/acc_mix.sh, carrying .whl_acc,
# .bench_data/r96 and the two .csv.xz files.
T=${T:-360}; TE=${TE:-180}
L=/tmp/logs_mix; rm -rf /tmp/mix /tmp/mix3; mkdir -p $L
export OMP_NUM_THREADS=1
A="python3 -m bench.accuracy --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl --ridge-dir .bench_data/r96"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
R="--point-loss mse --linear-init ridge --patience 2 --linear-lr 1e-9 --lr 3e-4 --shrink --shrink-groups channel_horizon"
declare -A OPTS=(
  [ETTh1]="$NEW --epochs 12 --cycle 24 $R"
  [ETTm1]="$NEW --epochs 8 --cycle 96 $R"
  [weather]="$NEW --epochs 8 --cycle 144 $R"
)
cell() {
  local d=$1 h=$2 dir=/tmp/mix/${1}_$2 V=()
  for k in diagonal_ssm selective_ssm rwkv7; do
    for s in 0 1; do V+=(--variant "${k:0:3}_s$s=${OPTS[$d]} --kind $k --seed $s"); done
  done
  timeout $T $A --datasets $d --horizons $h --lookbacks 96 --jobs 6 --scores window \
    --save-dir $dir "${V[@]}" > $L/${d}_$h.txt 2>&1
  mkdir -p /tmp/mix3/${d}_$h && ln -s $dir/*_s0.* /tmp/mix3/${d}_$h/
  local E="python3 -m bench.accuracy --scores window --device cuda --out $OUT/ens.jsonl"
  timeout $TE $E --ensemble-from $dir > $L/ens_${d}_$h.txt 2>&1 &
  timeout $TE $E --ensemble-from $dir --mix-kinds > $L/mix6_${d}_$h.txt 2>&1 &
  timeout $TE $E --ensemble-from /tmp/mix3/${d}_$h --mix-kinds > $L/mix3_${d}_$h.txt 2>&1 &
  wait
}
cell ETTh1 96 & cell ETTm1 96 & cell ETTm1 720 & cell weather 720 &
wait
tar czf $OUT/logs.tgz -C /tmp logs_mix
python3 bench/device/rows.py $OUT/rows.jsonl $OUT/ens.jsonl
echo "all done $(date)"
