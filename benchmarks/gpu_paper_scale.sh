#!/usr/bin/env bash
# The paper-scale check of issue 14 in one GPU call: ResNet-32, all 50,000 CIFAR-10 training
# images, the full test set, K = 4 grafted (A = 0.4, c = 500, diff-lr, cosine) and the same four
# networks trained independently, paired in one fused step of 8 networks (bf16 autocast), for
# EPOCHS epochs (default 25: what fits in one device call after the layouts below, at the
# ~29,000 img/s measured for a fused K = 4 ResNet-32; the paper's 200 take about 23 minutes
# of training per population).
#   bash benchmarks/gpu_paper_scale.sh DATA.zip OUT_DIR
# It needs torch only (no Ray, no MLflow), so the whole CIFAR-10 zip fits a device call's
# carry. A line per round goes to OUT_DIR/paper.log as it happens, so a call cut by its time
# limit still brings back the rounds it finished; the final row goes to OUT_DIR/paper.jsonl.
# The paper (ResNet-32, 200 epochs): 92.83% independent, 93.94% grafted.
# First (LAYOUTS=1, about a minute): which fused step pays on this GPU, vmap or the wide
# layout of grouped convolutions, NCHW or NHWC, fp32 and bf16 (OUT_DIR/layouts.md). With
# COMPILE=1 also torch.compile of the wide step, default and reduce-overhead (a few minutes
# more: lower SECONDS_LIMIT to match).
set -u
data=${1:?the CIFAR-10 zip (train/ and test/)}
out=${2:?output folder}
epochs=${EPOCHS:-25}
subset=${SUBSET:-0}  # 0: every training image; a small SUBSET makes a quick check on a CPU
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" GRAFTUNE_CACHE=/tmp/graftune-cache
nvidia-smi -L
python3 -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'
start=$(date +%s)
if [ "${LAYOUTS:-1}" = 1 ]; then
  compile="" limit=120
  if [ "${COMPILE:-0}" = 1 ]; then compile=--compile limit=300; fi
  timeout "$limit" python3 benchmarks/bench_fused_layouts.py --models resnet32 --steps 40 \
    --repeats 2 $compile 2>&1 | grep -v -i warn | tee "$out/layouts.md"
  echo "after layouts: $(( $(date +%s) - start )) s"
fi
timeout "${SECONDS_LIMIT:-420}" python3 benchmarks/fused_accuracy.py --data-dir "$data" \
  --subset "$subset" --model resnet32 --epochs "$epochs" --arms pair4 --seeds 0 --progress \
  --out "$out/paper.jsonl" 2>&1 | grep -v -i warn | tee "$out/paper.log"
echo "total: $(( $(date +%s) - start )) s"
