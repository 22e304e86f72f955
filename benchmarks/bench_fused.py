"""Training images/s of a whole population: one fused worker against one worker per network.

Both sides are GraftWorker actors on the same machine, measured one after the other in one
run (after a warm-up interval each): K actors of one network each, sharing the device
(today's layout on one GPU: fractions of it; on CPUs: a share of the cores each), against
one actor that trains all K in one fused step. On a GPU also bf16 against fp32, and one
network alone.

    python benchmarks/bench_fused.py --models resnet20 resnet32 --num-models 4 --steps 50
"""

from __future__ import annotations

import argparse
import time

import ray
import torch

from graftune.config import Config, flatten, with_overrides
from graftune.data import load_dataset
from graftune.population.worker import GraftWorker


def measure(actors, steps: int, batch: int, networks: int, repeats: int) -> tuple[float, str]:
    ray.get([a.train_interval.remote() for a in actors])  # warm-up: cuDNN, allocator
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        ray.get([a.train_interval.remote() for a in actors])
        best = max(best, steps * batch * networks / (time.perf_counter() - start))
    how = ray.get(actors[0].info.remote())["step"]
    for a in actors:
        ray.kill(a)
    return best, how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet32"])
    parser.add_argument("--num-models", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=None)
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = ray.cluster_resources()["CPU"]
    k = args.num_models
    precisions = args.precisions or (["fp32", "bf16"] if gpus else ["fp32"])
    print(f"device: {torch.cuda.get_device_name() if gpus else f'{cpus:.0f} CPUs'}, K = {k}")
    print(
        "| model | layout | precision | train img/s (all networks) | vs separate, same precision |"
    )
    print("|---|---|---|---:|---:|")
    for model in args.models:
        base = with_overrides(
            Config(),
            {
                "model": model,
                "dataset": "synthetic",
                "synthetic_size": 4096,
                "batch_size": args.batch_size,
                "epochs": 100,
                "interval_steps": args.steps,
                "num_models": k,
            },
        )
        data_ref = ray.put(load_dataset(base.data))
        for precision in precisions:
            flat = flatten(with_overrides(base, {"precision": precision}))
            share = {"num_gpus": 1 / k} if gpus else {"num_cpus": cpus / k}
            each = 1 if gpus else cpus / k  # Ray CPUs: the worker takes that share of the cores
            separate = [
                GraftWorker.options(**share).remote(flat, [j], data_ref, each, False)
                for j in range(k)
            ]
            rate_separate, how_separate = measure(
                separate, args.steps, args.batch_size, k, args.repeats
            )
            whole = {"num_gpus": 1} if gpus else {"num_cpus": cpus}
            fused = GraftWorker.options(**whole).remote(
                flat, list(range(k)), data_ref, 1 if gpus else cpus, True
            )
            rate_fused, how_fused = measure([fused], args.steps, args.batch_size, k, args.repeats)
            alone = GraftWorker.options(**whole).remote(
                flat, [k - 1], data_ref, 1 if gpus else cpus, False
            )
            rate_alone, how_alone = measure([alone], args.steps, args.batch_size, 1, args.repeats)
            rows = [
                (f"{k} actors, 1 network each ({how_separate})", rate_separate),
                (f"1 actor, {k} networks fused ({how_fused})", rate_fused),
                (f"1 network alone, whole device ({how_alone})", rate_alone),
            ]
            for layout, rate in rows:
                print(
                    f"| {model} | {layout} | {precision} | {rate:,.0f} | "
                    f"{rate / rate_separate:.2f}x |",
                    flush=True,
                )
    ray.shutdown()


if __name__ == "__main__":
    main()
