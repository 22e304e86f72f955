#!/usr/bin/env bash
# Accuracy on real CIFAR-10 (BENCHMARKS.md, issue 6): ResNet-20, a 10,000-image training
# subset, the full 10,000-image test set, 15 epochs; grafting (K = 2 and 4) vs the same
# networks trained independently (same diff-lr, cosine, seeds) vs one network at lr 0.1.
#   bash benchmarks/accuracy_runs.sh ../shared/data/cifar10-jpeg.zip runs/accuracy "0 1"
# then: python benchmarks/accuracy_table.py runs/accuracy/mlflow.db
# ARMS picks a part, e.g. ARMS="grafted4c10 independent4"; EXTRA adds flags to every run
# (EXTRA=--no-channels-last repeats the K = 2 runs of BENCHMARKS.md exactly). The
# cultivation arms (issue 16) distil with weight KD_W at temperature KD_T (defaults 0.2, 2):
# grafted4c10kd grafts and distils, independent4kd only distils (--source none).
# The PAPA arms (issue 28) move every network toward the population's average weights after
# each epoch (--source average): papa4r075 at 1 - 0.999^78 = 0.075 (PAPA's README recommends
# keeping 0.999^k of the own weights for an exchange every k steps; an epoch here is 10,000
# images in batches of 128, 78 steps), papa4r3 at 0.3, and papa4all (PAPA-all) replaces every
# network by the average every 5 epochs.
# papa4steps is PAPA's own schedule (0.01 every 10 steps): 8x the rounds, each evaluated on
# the full test set, so it is not in the default list. Every arm scores its soup at the end
# (--soup end; SOUP_BN batches re-estimate its BatchNorm) and logs its weights, so
# `python -m graftune.soup RUN_ID` can score it again with other settings.
set -u
data=${1:?path to the CIFAR-10 zip or folder}
out=$(realpath -m "${2:-runs/accuracy}")
seeds=${3:-0 1}
mkdir -p "$out"
common=(--model resnet20 --dataset imagefolder --data-dir "$data" --subset 10000 --epochs 15
        --soup end --soup-bn-batches "${SOUP_BN:-50}"
        --no-log-models --checkpoint-dir "$out/checkpoints"
        --tracking-uri "sqlite:///$out/mlflow.db" --experiment accuracy)
declare -A flags_of=(
  [grafted]="--num-models 2"
  [independent]="--num-models 2 --source none"
  [single]="--num-models 1 --source none --no-diff-lr"
  [grafted4]="--num-models 4"
  [independent4]="--num-models 4 --source none"
  [grafted4c10]="--num-models 4 --c 10"
  [grafted4c10kd]="--num-models 4 --c 10"
  [independent4kd]="--num-models 4 --source none"
  [papa4r075]="--num-models 4 --source average --average-rate 0.075"
  [papa4r3]="--num-models 4 --source average --average-rate 0.3"
  [papa4all]="--num-models 4 --source average --average-rate 1 --interval-epochs 5"
  [papa4steps]="--num-models 4 --source average --average-rate 0.01 --interval-steps 10"
)
kd_w=${KD_W:-0.2}
kd_t=${KD_T:-2}
for seed in $seeds; do
  for name in ${ARMS:-grafted independent single grafted4 independent4 grafted4c10}; do
    read -ra flags <<< "${flags_of[$name]:?unknown arm $name} ${EXTRA:-}"
    label=$name
    if [[ $name == *kd ]]; then
      flags+=(--distill-weight "$kd_w" --distill-temperature "$kd_t")
      label="$name-w$kd_w-t$kd_t"
    fi
    start=$(date +%s)
    python -m graftune.run "${common[@]}" --seed "$seed" --run-name "$label-seed$seed" \
        "${flags[@]}" > "$out/$label-$seed.log" 2>&1
    echo "$label seed=$seed rc=$? wall_s=$(( $(date +%s) - start ))" | tee -a "$out/summary.txt"
  done
done
