#!/bin/bash
# Session 12 (docs/RESULTS.md, tenth section): ETTm1 at H=96 and the longer lookback (336), the
# grid's recipe with the diagonal_ssm and rwkv7 backbones, seeds 0-2 each, scored in full history
# with the linear path refitted online as the mean of all six (bench.accuracy --ensemble-from DIR
# --mix-kinds --online) and per kind (the repeats of acc_grid.sh and acc_rwkv.sh).
# Run on the lent GPU: bash bench/device/sweep.sh bash bench/device/acc_mixlong.sh, carrying
# .whl_acc, .bench_data/rfh and .bench_data/ETTm1.csv.xz.
T=${T:-240}; TE=${TE:-300}
L=/tmp/logs_mixlong; D=/tmp/mixlong; rm -rf $D; mkdir -p $L
export OMP_NUM_THREADS=1
NEW="--batch-size 128 --lr 1e-3 --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 --linear-norm window --zero-head --dropout 0.1 --patience 3 --steps-per-epoch 100"
R="--point-loss mse --linear-init ridge --patience 2 --linear-lr 1e-9 --lr 3e-4 --shrink --shrink-groups channel_horizon"
V=()
for k in diagonal_ssm rwkv7; do
  for s in 0 1 2; do V+=(--variant "${k:0:3}_s$s=$NEW --epochs 8 --cycle 96 $R --kind $k --seed $s"); done
done
timeout $T python3 -m bench.accuracy --data-dir /tmp/data --device cuda --out $OUT/rows.jsonl \
  --ridge-dir .bench_data/rfh --datasets ETTm1 --horizons 96 --lookbacks 336 --jobs 6 \
  --scores all --save-dir $D "${V[@]}" > $L/train.txt 2>&1
E="python3 -m bench.accuracy --ensemble-from $D --scores all --device cuda --online --ridge-dir .bench_data/rfh --out $OUT/ens.jsonl"
OMP_NUM_THREADS=6 timeout $TE $E --mix-kinds > $L/mix.txt 2>&1 &
OMP_NUM_THREADS=4 timeout $TE $E > $L/kinds.txt 2>&1 &
wait
tar czf $OUT/logs.tgz -C /tmp logs_mixlong
python3 bench/device/rows.py $OUT/rows.jsonl $OUT/ens.jsonl
echo "all done $(date)"
