"""Entropy of every layer of a model: graftune's one-pass histogram vs a per-bin loop.

The loop is how the authors' code computes it: for each bin a boolean mask of the values in
it, then a count. Both give the same values; the script checks that before timing.

    python benchmarks/bench_entropy.py --models resnet56 mobilenetv2 --repeats 5
    python benchmarks/bench_entropy.py --device cuda   # the loop syncs once per bin there
"""

from __future__ import annotations

import argparse
import time

import torch

from graftune.core import filter_sum_entropy, find_graft_units, layer_entropy
from graftune.models import create_model


def loop_entropy(weight: torch.Tensor, bins: int = 10) -> float:
    values = weight.detach().flatten().float()
    low, high = values.min(), values.max()
    if high == low:
        return 0.0
    width = (high - low) / bins
    total = 0.0
    for b in range(bins):
        lower = low + b * width
        upper = low + (b + 1) * width
        mask = (values >= lower) & ((values < upper) if b < bins - 1 else (values <= high))
        p = mask.sum().item() / values.numel()
        if p > 0:
            total -= p * torch.log(torch.tensor(p)).item()
    return total


def loop_filter_sum(weight: torch.Tensor, bins: int = 10) -> float:
    return sum(loop_entropy(row, bins) for row in weight)


def best_time(fn, weights, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for w in weights:
            fn(w)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet56", "mobilenetv2"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    where = f"{args.threads} thread(s)"
    if args.device.startswith("cuda"):
        where = torch.cuda.get_device_name(args.device)
    print(f"torch {torch.__version__}, {where}, best of {args.repeats}")
    print("| model | form | layers | per-bin loop (ms) | graftune (ms) | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.models:
        model = create_model(name)
        state = model.state_dict()
        weights = [state[u.weight].to(args.device) for u in find_graft_units(model)]
        forms = [
            ("layer (Eq. 6)", loop_entropy, layer_entropy),
            ("filter-sum (Eq. 5)", loop_filter_sum, filter_sum_entropy),
        ]
        for form, slow, fast in forms:
            for w in weights:  # equal values first, then time
                assert abs(slow(w) - fast(w)) < 1e-3 * max(1.0, abs(slow(w))), (name, form)
            t_slow = best_time(slow, weights, args.repeats)
            t_fast = best_time(fast, weights, args.repeats)
            print(
                f"| {name} | {form} | {len(weights)} | {t_slow * 1e3:.1f} | "
                f"{t_fast * 1e3:.1f} | {t_slow / t_fast:.1f}x |"
            )


if __name__ == "__main__":
    main()
