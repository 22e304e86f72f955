#!/usr/bin/env bash
# One short GPU lease, in order of value (BENCHMARKS.md says what each step measured):
#   1. issue 14: fused against one actor per network, ResNet-32 K = 4 (Ray actors);
#   2. issue 16: grafting + distillation arms on seed 0 (a small grid of W at T = 4, and
#      distillation alone), each paired with the same networks trained independently;
#   3. issues 11 and 16 on seed 1: the grafted arms and the distillation arms;
#   4. issue 11: two repeats of the closest arm (K = 4, c = 500, seed 0).
#   bash benchmarks/gpu_session.sh DATA.zip OUT_DIR
# DATA.zip holds the 10,000 training images that --subset 10000 picks (and the test set), so
# --subset 0 reads them. A machine without Ray brings it as BUNDLE (default .gpu): ray.tar.xz
# (a site-packages tree for its Python), unpacked into /tmp/site; nothing is downloaded.
set -u
data=${1:?the CIFAR-10 subset zip}
out=${2:?output folder}
bundle=${BUNDLE:-.gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" GRAFTUNE_CACHE=/tmp/graftune-cache
nvidia-smi -L
if ! python3 -c 'import ray' 2>/dev/null && [ -f "$bundle/ray.tar.xz" ]; then
  mkdir -p /tmp/site && tar xJf "$bundle/ray.tar.xz" -C /tmp/site
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
python3 -c 'import sys, torch, ray; print(sys.version.split()[0], "torch", torch.__version__, "ray", ray.__version__)'
acc() {  # fused accuracy arms: acc SECONDS SEEDS ARMS...
  local seconds=$1 seeds=$2; shift 2
  timeout $((seconds + 60)) python3 benchmarks/fused_accuracy.py --data-dir "$data" --subset 0 \
    --epochs 15 --seeds $seeds --arms "$@" --deadline-s "$seconds" --out "$out/acc.jsonl" \
    2>&1 | grep -v -i warn | tee -a "$out/acc.md"
}
start=$(date +%s)
timeout 200 python3 benchmarks/bench_fused.py --models resnet32 --num-models 4 --steps 40 \
  --repeats 2 2>&1 | grep -v -i -e warn -e "^ *(" | tee "$out/fused32.md"
echo "after bench: $(( $(date +%s) - start )) s"
acc 150 0 pair4-c10-kd1t4 pair4-c10-kd2t4 k4-indep-kd1t4 pair4-c10-kd0.5t4
echo "after grid: $(( $(date +%s) - start )) s"
acc 150 1 pair4-c10 pair4-c10-kd1t4 k4-indep-kd1t4 pair4 pair2 single
echo "after seed 1: $(( $(date +%s) - start )) s"
acc 40 0 pair4 pair4
echo "total: $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
