"""Training and evaluation speed of one network: what channels_last, the eval batch size and
torch.compile buy. Same Trainer, same data; settings alternate within each repeat.

    python benchmarks/bench_train_step.py --model resnet20 --steps 10 --repeats 3
    python benchmarks/bench_train_step.py --device cuda --steps 200 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from graftune.config import Config, with_overrides
from graftune.data import load_dataset
from graftune.training.trainer import Trainer


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rates(settings: dict, steps: int, data, device: str) -> tuple[float, float, float]:
    """Train and eval images/s after a warm-up, and the warm-up's seconds (compile time)."""
    config = with_overrides(Config(), settings)
    trainer = Trainer(config, 0, data, device=device)
    start = time.perf_counter()
    trainer.train_interval(3)  # warm-up: cuDNN autotuning, or compiling
    trainer.evaluate()
    warm_up = time.perf_counter() - start
    sync(device)
    start = time.perf_counter()
    trainer.train_interval(steps)  # returns a float: the device is synced
    train = steps * config.train.batch_size / (time.perf_counter() - start)
    start = time.perf_counter()
    trainer.evaluate()
    return train, len(data.test_labels) / (time.perf_counter() - start), warm_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = {"model": args.model, "dataset": "synthetic", "synthetic_size": 10_000}
    data = load_dataset(with_overrides(Config(), base).data)
    variants = {
        "NCHW, eval batch 256": {"channels_last": False},
        "channels_last, eval batch 256": {"channels_last": True},
        "NCHW, eval batch 1000": {"channels_last": False, "eval_batch_size": 1000},
    }
    if args.compile:
        variants["channels_last, compiled"] = {"channels_last": True, "compile": True}
        variants["NCHW, compiled"] = {"channels_last": False, "compile": True}
    results = {name: ([], [], []) for name in variants}
    for _ in range(args.repeats):
        for name, extra in variants.items():
            for column, value in zip(
                results[name], rates({**base, **extra}, args.steps, data, args.device)
            ):
                column.append(value)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "1 CPU thread"
    print(
        f"{args.model} on {where}, torch {torch.__version__}, batch 128, {args.steps} steps, "
        f"median of {args.repeats}"
    )
    print("| variant | train img/s | eval img/s | warm-up s |")
    print("|---|---:|---:|---:|")
    for name, columns in results.items():
        train, evaluate, warm_up = (statistics.median(c) for c in columns)
        print(f"| {name} | {train:.0f} | {evaluate:.0f} | {warm_up:.1f} |")


if __name__ == "__main__":
    main()
