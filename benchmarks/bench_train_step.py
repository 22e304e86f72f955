"""Training and evaluation speed of one network on the CPU: what channels_last and the eval
batch size buy. Same Trainer, same data; settings alternate within each repeat.

    python benchmarks/bench_train_step.py --model resnet20 --steps 10 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from graftune.config import Config, with_overrides
from graftune.data import load_dataset
from graftune.trainer import Trainer


def rates(settings: dict, steps: int, data) -> tuple[float, float]:
    config = with_overrides(Config(), settings)
    trainer = Trainer(config, 0, data, device="cpu")
    trainer.train_interval(2)  # warm-up
    start = time.perf_counter()
    trainer.train_interval(steps)
    train = steps * config.train.batch_size / (time.perf_counter() - start)
    start = time.perf_counter()
    trainer.evaluate()
    return train, len(data.test_labels) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = {"model": args.model, "dataset": "synthetic", "synthetic_size": 2048}
    data = load_dataset(with_overrides(Config(), base).data)
    variants = {
        "NCHW, eval batch 256": {"channels_last": False},
        "channels_last, eval batch 256": {"channels_last": True},
        "NCHW, eval batch 1000": {"channels_last": False, "eval_batch_size": 1000},
    }
    results = {name: ([], []) for name in variants}
    for _ in range(args.repeats):
        for name, extra in variants.items():
            train, evaluate = rates({**base, **extra}, args.steps, data)
            results[name][0].append(train)
            results[name][1].append(evaluate)
    print(f"{args.model}, 1 thread, batch 128, {args.steps} steps, median of {args.repeats}")
    print("| variant | train img/s | eval img/s |")
    print("|---|---:|---:|")
    for name, (train, evaluate) in results.items():
        print(f"| {name} | {statistics.median(train):.0f} | {statistics.median(evaluate):.0f} |")


if __name__ == "__main__":
    main()
