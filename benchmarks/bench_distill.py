"""What distillation (issue 16) costs a training step: one network trained with and without
a teacher, the two alternating within each repeat, on the same data and thread.

    python benchmarks/bench_distill.py --model resnet20 --steps 20 --repeats 5

The teacher is another network's weights, as in a run after its first graft; its forward
pass (no gradient) is the whole extra work. Evaluation and grafting are unchanged, so the
cost of a whole run is at most the step's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from graftune.config import Config, with_overrides
from graftune.data import load_dataset
from graftune.training.trainer import Trainer


def rate(trainer: Trainer, steps: int, batch_size: int) -> float:
    """Training images/s over ``steps`` (train_interval syncs the device on return)."""
    start = time.perf_counter()
    trainer.train_interval(steps)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weight", type=float, default=0.2)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = {
        "model": args.model,
        "dataset": "synthetic",
        "synthetic_size": 10_000,
        "epochs": 1000,  # a long schedule: no repeat reaches its end
    }
    data = load_dataset(with_overrides(Config(), base).data)
    plain = Trainer(with_overrides(Config(), base), 0, data)
    distilled_config = with_overrides(
        Config(),
        {**base, "distill_weight": args.weight, "distill_temperature": args.temperature},
    )
    distilled = Trainer(distilled_config, 0, data)
    donor = Trainer(with_overrides(Config(), base), 1, data).model.state_dict()
    distilled.set_teacher({k: donor[k] for k in distilled.unit_keys})
    batch = distilled_config.train.batch_size
    for trainer in (plain, distilled):
        trainer.train_interval(3)  # warm-up
    rates: dict[str, list[float]] = {"plain": [], "distilled": []}
    for _ in range(args.repeats):
        rates["plain"].append(rate(plain, args.steps, batch))
        rates["distilled"].append(rate(distilled, args.steps, batch))
    ratios = [p / d for p, d in zip(rates["plain"], rates["distilled"])]
    print(
        f"{args.model}, {args.threads} CPU thread(s), torch {torch.__version__}, batch {batch}, "
        f"W = {args.weight}, T = {args.temperature}, {args.steps} steps, median of "
        f"{args.repeats}"
    )
    print("| training | img/s |")
    print("|---|---:|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.0f} |")
    print(
        f"step time, distilled / plain: {statistics.median(ratios):.2f}x "
        f"(repeats: {', '.join(f'{r:.2f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
