#!/bin/bash
# The whole accuracy grid under one fixed recipe (docs/RESULTS.md, eighth section): ETTh1, ETTm1
# and weather at H = 96, 192, 336, 720, seeds 0-2 and their mean, recipe `rc3` (the linear path
# and daily cycle at their closed-form fit, frozen; the backbone on the residual at lr 3e-4, MSE
# point loss) with the shrink chosen on validation per channel and quarter of the horizon (every
# row also reports the one-weight and per-channel shrinks), and since the eleventh section a
# linear map per channel (--per-channel; the sections before ran without it: EXTRA=--no-per-channel
# gives their runs again, the last option winning). PART=l96: lookback 96 (windows
# scored); PART=long: the longer lookback (LH, LM, LW), windows and full history scored.
# DATASETS, HORIZONS: subsets. ONLINE=1 (with PART=long): the ensembles also score the full
# history with the linear path refitted online (bench.accuracy --online; the fits in RD are its
# start, so carry them in float64 there; TE_OMP: the ensemble scorers' numpy threads). KIND: the
# model kind (default diagonal_ssm, the eighth section's). EXTRA: options added to every run
# (e.g. --per-channel), TAG: a suffix for their variant names; RUN: a suffix for the scratch
# folders, so that two runs of this script can share a call. RD: the fits' folder; a call carries
# at most 64 MiB, so the fits travel as float32 copies
# (bench/device/fits32.py: the model's linear path is float32, so it starts the same), only those
# the call needs.
# Run on the lent GPU: bash bench/device/sweep.sh bash bench/device/acc_grid.sh (PART=...).
T=${T:-480}
PART=${PART:-l96}
L=/tmp/logs_$PART$RUN; E=/tmp/ens_$PART$RUN; rm -rf $E; mkdir -p $L
export OMP_NUM_THREADS=1
A="python3 -m bench.accuracy --kind ${KIND:-diagonal_ssm} --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl --ridge-dir ${RD:-.bench_data/ridgec}"
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
R="--point-loss mse --linear-init ridge --patience 2 --linear-lr 1e-9 --lr 3e-4 --shrink --shrink-groups channel_horizon --per-channel"
declare -A OPTS=(
  [ETTh1]="$NEW --epochs 12 --cycle 24 $R"
  [ETTm1]="$NEW --epochs 8 --cycle 96 $R"
  [weather]="$NEW --epochs 8 --cycle 144 $R"
)
if [ "$PART" = l96 ]; then
  declare -A LB=([ETTh1]=96 [ETTm1]=96 [weather]=96); SC=window
else
  declare -A LB=([ETTh1]=${LH:-512} [ETTm1]=${LM:-336} [weather]=${LW:-336}); SC=all
fi
for d in ${DATASETS:-ETTh1 ETTm1 weather}; do
  for h in ${HORIZONS:-96 192 336 720}; do
    V=()
    for s in 0 1 2; do V+=(--variant "rc3shg${TAG}_s$s=${OPTS[$d]} $EXTRA --seed $s"); done
    timeout $T $A --datasets $d --horizons $h --lookbacks ${LB[$d]} --jobs 3 --scores $SC \
      --save-dir $E/${d}_$h "${V[@]}" > $L/${d}_$h.txt 2>&1 &
  done
done
wait
echo "sweep done $(date)"
for f in $E/*; do
  OMP_NUM_THREADS=${TE_OMP:-1} timeout ${TE:-100} python3 -m bench.accuracy --ensemble-from $f \
    --scores $SC --device cuda \
    ${ONLINE:+--online --ridge-dir ${RD:-.bench_data/ridgec}} --out $OUT/ens.jsonl \
    > $L/ens_$(basename $f).txt 2>&1 &
done
wait
tar czf $OUT/logs.tgz -C /tmp logs_$PART$RUN
python3 bench/device/rows.py $OUT/rows.jsonl $OUT/ens.jsonl
echo "all done $(date)"
