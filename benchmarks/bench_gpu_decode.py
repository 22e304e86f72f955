"""JPEG decoding on the GPU against the streaming path's CPU decode (issue 27's GPU
candidates): torchvision's ``decode_jpeg(device="cuda")`` (nvJPEG) on batches of files' bytes,
then the resize to the training canvas on the GPU, in images per second; beside it the CPU
decode graftune ships (``loader.DecodedImages.decode``: TorchCodec or Pillow) in images per
CPU-second of one process, on the same files. The files are read into memory first, so
neither side counts the disk.

    python benchmarks/bench_gpu_decode.py /tmp/photos --images 2000 --size 224
"""

from __future__ import annotations

import argparse
import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision import io as tvio
from torchvision.transforms.v2 import functional as tvf

from graftune.data.loader import DecodedImages, canvas_side


def gpu_rate(blobs: list[torch.Tensor], size: int, batch: int, device: str) -> float:
    """Images per second: decode every blob on ``device`` and resize it to the canvas."""
    side = canvas_side(size)

    def one_pass() -> None:
        for i in range(0, len(blobs), batch):
            decoded = tvio.decode_jpeg(blobs[i : i + batch], device=device)
            canvases = [tvf.resize(image, [side, side], antialias=True) for image in decoded]
            torch.stack(canvases)

    one_pass()  # warm-up: nvJPEG's handles, the allocator
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    one_pass()
    if device == "cuda":
        torch.cuda.synchronize()
    return len(blobs) / (time.perf_counter() - start)


def cpu_rate(data: list[bytes], size: int) -> float:
    """Images per CPU-second of graftune's own training decode, one process, one thread."""
    images = DecodedImages(".", False, [], np.zeros(0, np.int64), size, True, 1 << 28)
    start = time.process_time()
    for blob in data:
        images.decode(io.BytesIO(blob))
    return len(data) / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder of JPEGs (searched recursively)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = sorted(Path(args.folder).rglob("*.jpg"))[: args.images]
    data = [f.read_bytes() for f in files]
    blobs = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's decoders are deprecated since 0.29
        gpu = gpu_rate(blobs, args.size, args.batch, args.device)
    cpu = cpu_rate(data, args.size)
    row = {
        "images": len(files),
        "size": args.size,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        f"decode_jpeg on {args.device}, images/s": round(gpu),
        "graftune CPU decode, images per CPU-s": round(cpu),
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
