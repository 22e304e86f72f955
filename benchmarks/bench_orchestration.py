"""What Ray costs: images/s per network of a K=2 population (one CPU per worker) vs two
plain single-thread PyTorch processes training the same model on the same data.

Both sides run the same Trainer for the same number of steps after one warm-up interval;
the population side goes through GraftWorker actors in a placement group. Sides alternate,
so machine noise hits both alike.

    python benchmarks/bench_orchestration.py --model resnet20 --steps 40 --repeats 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import ray
import torch

from graftune.config import Config, with_overrides
from graftune.data import load_dataset
from graftune.population.population import Population
from graftune.training.trainer import Trainer


def plain_process(config, index, steps, queue) -> None:
    torch.set_num_threads(1)
    trainer = Trainer(config, index, load_dataset(config.data), device="cpu")
    trainer.train_interval(steps)  # warm-up
    start = time.perf_counter()
    trainer.train_interval(steps)
    queue.put(steps * config.train.batch_size / (time.perf_counter() - start))


def plain_rate(config, steps: int) -> float:
    context = mp.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=plain_process, args=(config, k, steps, queue)) for k in (0, 1)]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return statistics.mean(rates)


def population_rate(population: Population, config, steps: int) -> float:
    actors = population.actors
    ray.get([a.train_interval.remote() for a in actors])  # warm-up
    start = time.perf_counter()
    ray.get([a.train_interval.remote() for a in actors])
    elapsed = time.perf_counter() - start
    return steps * config.train.batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = with_overrides(
        Config(),
        {
            "model": args.model,
            "num_models": 2,
            "dataset": "synthetic",
            "synthetic_size": 8192,
            "batch_size": 128,
            "interval_steps": args.steps,
            "epochs": 10,
            "cpus_per_worker": 1,
        },
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    data = load_dataset(config.data)
    plain, pop = [], []
    for _ in range(args.repeats):
        plain.append(plain_rate(config, args.steps))
        population = Population(config, ray.put(data), data.test_labels)
        population.start()
        pop.append(population_rate(population, config, args.steps))
        population.shutdown()
    print(f"K=2 x {args.model}, batch 128, {args.steps} steps per measurement, 1 thread each")
    print("| side | images/s per network (median) | all runs |")
    print("|---|---:|---|")
    print(
        f"| plain PyTorch processes | {statistics.median(plain):.0f} | "
        f"{', '.join(f'{r:.0f}' for r in plain)} |"
    )
    print(
        f"| graftune population (Ray actors) | {statistics.median(pop):.0f} | "
        f"{', '.join(f'{r:.0f}' for r in pop)} |"
    )
    print(f"ratio population / plain: {statistics.median(pop) / statistics.median(plain):.3f}")


if __name__ == "__main__":
    main()
