#!/usr/bin/env bash
# The GPU checks of the streaming path and of the soup/PAPA table in one device call, for a
# session that has run benchmarks/gpu_paper_scale.sh first (same carry: the CIFAR-10 zip).
#   1. issue 27: ResNet-18 at 224, K = 4 fused, images/s of the population with the decodes
#      in CPU loader workers, three layouts side by side (graftune's shared order, each
#      network its own order, the authors' K ImageFolder + DataLoader loaders), on generated
#      photo-like JPEGs of 200-500 px. The decoder is TorchCodec where it is installed, else
#      Pillow (the GPU image has no TorchCodec; the first line says which). Before it, the
#      GPU decoder candidate: torchvision's decode_jpeg on the GPU (nvJPEG) + resize, in
#      images/s, beside graftune's CPU decode per CPU-second (bench_gpu_decode.py).
#   2. issue 28: the CPU harness's arms fused on the GPU (benchmarks/fused_accuracy.py), the
#      same 10,000 training images (--subset 10000), the full test set, 15 epochs, seeds 0
#      and 1, each with its soup: pair4 (grafted c = 500 + independent, paired), pair4-c10,
#      pair4-c10-kd0.2t2, k4-papa0.075, k4-papa0.3, k4-papaall. SECONDS_LIMIT bounds it
#      (arms left are skipped, not cut).
#   bash benchmarks/gpu_stream_soup.sh DATA.zip OUT_DIR
# torch, torchvision, Pillow, PyYAML and psutil are all it needs (no Ray, no MLflow).
set -u
data=${1:?the CIFAR-10 zip (train/ and test/)}
out=${2:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" GRAFTUNE_CACHE=/tmp/graftune-cache
nvidia-smi -L
python3 -c 'import torch, torchvision; print("torch", torch.__version__, torchvision.__version__)'
python3 -c 'import torchcodec.decoders' 2>/dev/null && echo "decoder: TorchCodec" ||
  echo "decoder: Pillow (no TorchCodec here)"
start=$(date +%s)
timeout 120 python3 benchmarks/make_image_sets.py generated /tmp/photos --train "${TRAIN:-4000}" \
  --val 200 --sizes 200 500
timeout 90 python3 benchmarks/bench_gpu_decode.py /tmp/photos --images 2000 --size 224 2>&1 |
  grep -v -i warn | tee "$out/gpu_decode.json"
timeout "${STREAM_LIMIT:-240}" python3 benchmarks/bench_stream.py decodes --data-dir /tmp/photos \
  --model resnet18 --image-size 224 --batch-size 64 --k 4 --device cuda \
  --loader-workers "${WORKERS:-3}" --threads 2 --steps 20 --repeats 2 --warmup 3 \
  --out "$out/stream.json" 2>&1 | grep -v -i warn | grep -v '^ ' | tee "$out/stream.md"
echo "after streaming: $(( $(date +%s) - start )) s"
limit=${SECONDS_LIMIT:-240}
timeout $((limit + 90)) python3 benchmarks/fused_accuracy.py --data-dir "$data" --subset 10000 \
  --epochs 15 --seeds 0 1 --deadline-s "$limit" --out "$out/soup.jsonl" --arms pair4-c10 \
  k4-papa0.075 pair4 k4-papaall k4-papa0.3 pair4-c10-kd0.2t2 2>&1 | grep -v -i warn |
  tee "$out/soup.md"
echo "total: $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
