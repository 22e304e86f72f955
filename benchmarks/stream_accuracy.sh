#!/usr/bin/env bash
# Accuracy and wall time of the streaming path against the in-memory one (BENCHMARKS.md,
# "Streaming any image set"): K = 4 grafted ResNet-20s in one fused worker, 32 px, a fixed
# training subset; streamed from the mixed-size CIFAR-10 copy with a shared order and with
# each network's own order, and in memory from the original 32x32 images, same settings.
# The three arms alternate within each seed so that the machine's load hits all of them.
#   bash benchmarks/stream_accuracy.sh MIXED.zip ORIGINAL.zip runs/stream-accuracy "0 1"
# then: python benchmarks/accuracy_table.py runs/stream-accuracy/mlflow.db
# SCALE overrides the reduced scale (default: --subset 500 --test-subset 500 --epochs 2).
# ARMS picks some. Two more arms (not in the default list) tell the parts of the streamed
# arms' gap apart: shared35 is the shared order with milder crops (--crop-scale 0.35 in place
# of torchvision's 0.08); original streams the original 32x32 images (no upscaled, recompressed
# copies: what is left is the streaming path's crops and centre-crop evaluation).
set -u
mixed=${1:?path to the mixed-size CIFAR-10 zip (make_image_sets.py cifar-mixed)}
original=${2:?path to the original-size CIFAR-10 zip}
out=$(realpath -m "${3:-runs/stream-accuracy}")
seeds=${4:-0 1}
mkdir -p "$out"
read -ra scale <<< "${SCALE:---subset 500 --test-subset 500 --epochs 2}"
common=(--model resnet20 --dataset imagefolder --num-models 4 --fuse on --image-size 32
        "${scale[@]}" --no-log-weights --no-log-models --checkpoint-dir "$out/checkpoints"
        --tracking-uri "sqlite:///$out/mlflow.db" --experiment accuracy)
declare -A flags_of=(
  [shared]="--data-dir $mixed --data-mode stream --shared-order"
  [own]="--data-dir $mixed --data-mode stream --no-shared-order"
  [shared35]="--data-dir $mixed --data-mode stream --shared-order --crop-scale 0.35"
  [original]="--data-dir $original --data-mode stream --shared-order"
  [memory]="--data-dir $original --data-mode memory"
)
for seed in $seeds; do
  for name in ${ARMS:-shared own memory}; do
    read -ra flags <<< "${flags_of[$name]:?unknown arm $name}"
    start=$(date +%s)
    python -m graftune.run "${common[@]}" --seed "$seed" --run-name "$name-seed$seed" \
        "${flags[@]}" > "$out/$name-$seed.log" 2>&1
    echo "$name seed=$seed rc=$? wall_s=$(( $(date +%s) - start ))" | tee -a "$out/summary.txt"
  done
done
