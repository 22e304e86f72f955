#!/usr/bin/env bash
# The checks of one short GPU session, in order of value (BENCHMARKS.md, "On a GPU"):
#   1. the accuracy scan of issue 6 through Ray actors that each hold a share of the GPU,
#   2. entropy speed on the GPU, 3. train/eval speed, channels_last and torch.compile.
#   bash benchmarks/gpu_check.sh DATA.zip OUT_DIR SCAN_SECONDS
# A machine without Ray may bring it in BUNDLE (default .devbundle): whl/*.whl and
# ray.tar.xz (a site-packages tree), installed into /tmp/site; nothing is downloaded.
set -u
data=${1:?CIFAR-10 zip or folder}
out=${2:?output folder}
scan_s=${3:-300}
bundle=${BUNDLE:-.devbundle}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L; python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__)'
if ! python3 -c 'import ray' 2>/dev/null && [ -d "$bundle" ]; then
  mkdir -p /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
      "$bundle"/whl/*.whl && tar xJf "$bundle/ray.tar.xz" -C /tmp/site || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
python3 -c 'import ray; print("ray", ray.__version__)' || exit 1

start=$(date +%s)
# SUBSET=0 for a zip that holds only the 10,000-image subset; SCAN_EXTRA overrides flags.
timeout $((scan_s + 90)) python3 benchmarks/accuracy_scan.py --data-dir "$data" \
    --subset "${SUBSET:-10000}" --epochs 15 --seeds 0 1 --parallel "${SCAN_PARALLEL:-6}" --gpus-per-worker 0.0625 \
    --num-cpus 14 --deadline-s "$scan_s" --out "$out/scan.jsonl" \
    --arms ${SCAN_ARMS:-k4 k4-indep single k2 k2-indep k4-c10 k4-c1 k4-c50 k2-c10 k2-c1 k8} \
    ${SCAN_EXTRA:-} \
    2>&1 | grep -v -e "WARNING" -e "^ *warnings.warn" | tee "$out/scan.md"
echo "scan wall_s=$(( $(date +%s) - start ))"
timeout 60 python3 benchmarks/bench_entropy.py --device cuda --repeats 3 2>&1 | tee "$out/entropy.md"
timeout 200 python3 benchmarks/bench_train_step.py --device cuda --steps 300 --repeats 1 \
    --compile 2>&1 | grep -v -i warn | tee "$out/train_step.md"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
