"""graftune's own streaming decode, per CPU core: as shipped ("graftune": TorchCodec unless
Pillow's draft can scale the JPEG), TorchCodec for every JPEG (resize on the uint8 tensor),
and Pillow for every JPEG (draft scaling, Pillow's resize), all three through ``DecodedImages`` exactly as a training or evaluation loader calls it, side by
side on the same files in alternating rounds. The figure is images per second of this
process's CPU time (torch on one thread), the median over rounds.

    nice -n 10 python benchmarks/bench_stream_decode.py DATA/gen-2k --images 500 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from graftune.data import loader

ORIGINAL = loader._tensor_decode


def always_tensor(data, image_format, size, box):
    """TorchCodec for every JPEG, also where draft scaling would apply."""
    return ORIGINAL(data, image_format, (0, 0), box)


def rate(images: loader.DecodedImages, count: int) -> float:
    start = time.process_time()
    for i in range(count):
        images.decode(images._source(str(images.names[i])))
    return count / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder with train/<class>/*.jpg")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 112, 64])
    parser.add_argument("--out", default=None, help="append the figures as JSON lines here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.folder)
    names = sorted(str(p.relative_to(root)) for p in root.glob("train/*/*.jpg"))[: args.images]
    for size in args.sizes:
        for train in (True, False):
            images = loader.DecodedImages(
                str(root), False, names, np.zeros(len(names), np.int64), size, train, 1 << 26
            )
            figures: dict[str, list[float]] = {"graftune": [], "torchcodec": [], "pillow-draft": []}
            for _ in range(args.rounds):
                figures["graftune"].append(rate(images, len(names)))
                with mock.patch.object(loader, "_tensor_decode", always_tensor):
                    figures["torchcodec"].append(rate(images, len(names)))
                with mock.patch.object(loader, "_tensor_decode", return_value=None):
                    figures["pillow-draft"].append(rate(images, len(names)))
            row = {
                "size": size,
                "split": "train canvas" if train else "evaluation crop",
                **{k: round(statistics.median(v)) for k, v in figures.items()},
            }
            row["ratio"] = round(row["torchcodec"] / row["pillow-draft"], 2)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as out:
                    out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
