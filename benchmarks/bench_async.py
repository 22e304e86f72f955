"""Wall time of a population with the per-round barrier and without it (--asynchronous),
when its networks do not run at one speed.

The uneven speed is real, not simulated in code: K workers share fewer cores than K (Ray
gives each a fraction of a CPU), so the OS hands them uneven slices from round to round.
Both modes run the same rounds of the same networks; they alternate within each repeat.

    python benchmarks/bench_async.py --model resnet20 --num-models 3 --steps 10 --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import ray

from graftune.config import Config, with_overrides
from graftune.data import load_dataset
from graftune.population.population import Population
from graftune.population.rounds import run_population


def wall_time(settings: dict, data_ref, labels) -> float:
    population = Population(with_overrides(Config(), settings), data_ref, labels)
    population.start()
    try:
        start = time.perf_counter()
        run_population(population)
        return time.perf_counter() - start
    finally:
        population.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--num-models", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2, help="cores the workers share")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--max-lead", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # One epoch of the synthetic set is one round: --rounds epochs give --rounds rounds.
    base = {
        "model": args.model,
        "num_models": args.num_models,
        "dataset": "synthetic",
        "synthetic_size": 128 * args.steps,
        "test_subset": 512,
        "epochs": args.rounds,
        "interval_steps": args.steps,
        "max_lead": args.max_lead,
    }
    data = load_dataset(with_overrides(Config(), base).data)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    data_ref = ray.put(data)
    times: dict[str, list[float]] = {"barrier": [], "asynchronous": []}
    for _ in range(args.repeats):
        for mode in times:
            settings = {**base, "asynchronous": mode == "asynchronous"}
            times[mode].append(wall_time(settings, data_ref, data.test_labels))
    sync, free = (statistics.median(times[m]) for m in times)
    print(
        f"{args.num_models} x {args.model} on {args.cpus} cores, {args.rounds} rounds of "
        f"{args.steps} steps, max_lead {args.max_lead}, median of {args.repeats}"
    )
    print("| mode | wall (s) | all runs (s) |\n|---|---:|---|")
    for mode, values in times.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {mode} | {statistics.median(values):.1f} | {runs} |")
    print(f"asynchronous / barrier wall time: {free / sync:.2f}")


if __name__ == "__main__":
    main()
