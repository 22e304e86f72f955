"""One graft round of K ResNet-56 networks: snapshots through Ray's object store (graftune)
vs the same exchange through torch.save / torch.load files on local disk (the authors'
mechanism, without their 10 s polling).

Both sides use the same K actors, the same snapshots and the same graft; only the way the
weights travel differs. Timed: "exchange" = publish every snapshot and fetch every
predecessor's; "round" = exchange plus the graft itself.

    python benchmarks/bench_exchange.py --num-models 4 --model resnet56 --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from graftune.config import Config, flatten, from_flat, with_overrides
from graftune.data import load_dataset
from graftune.training.trainer import Trainer


@ray.remote(num_cpus=0.25)
class ExchangeWorker:
    """A trainer that can publish its snapshot either way and graft from either."""

    def __init__(self, flat_config, index, data):
        torch.set_num_threads(1)
        self.trainer = Trainer(from_flat(flat_config), index, data, device="cpu")

    def snapshot(self):
        return self.trainer.snapshot()

    def fetch(self, snapshot) -> int:  # a top-level ref argument arrives resolved
        return len(snapshot)

    def graft_from(self, snapshot) -> int:
        return len(self.trainer.apply_graft(snapshot))

    def save(self, path: str) -> str:
        state = self.trainer.model.state_dict()  # the authors save the state dict itself
        torch.save({k: state[k] for k in self.trainer.unit_keys}, path)
        return path

    def load(self, path: str) -> int:
        return len(torch.load(path, weights_only=True))

    def graft_from_file(self, path: str) -> int:
        return len(self.trainer.apply_graft(torch.load(path, weights_only=True)))


def time_it(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--num-models", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    config = with_overrides(
        Config(),
        {
            "model": args.model,
            "num_models": args.num_models,
            "dataset": "synthetic",
            "synthetic_size": 64,
        },
    )
    ray.init(include_dashboard=False, log_to_driver=False)
    data_ref = ray.put(load_dataset(config.data))
    actors = [ExchangeWorker.remote(flatten(config), k, data_ref) for k in range(args.num_models)]
    K = args.num_models
    directory = Path(tempfile.mkdtemp(prefix="graftune-exchange-"))
    paths = [str(directory / f"net{k}.pt") for k in range(K)]

    def store_exchange():
        refs = [a.snapshot.remote() for a in actors]
        ray.get([a.fetch.remote(refs[k - 1]) for k, a in enumerate(actors)])

    def file_exchange():
        ray.get([a.save.remote(p) for a, p in zip(actors, paths)])
        ray.get([a.load.remote(paths[k - 1]) for k, a in enumerate(actors)])

    def store_round():
        refs = [a.snapshot.remote() for a in actors]
        ray.get([a.graft_from.remote(refs[k - 1]) for k, a in enumerate(actors)])

    def file_round():
        ray.get([a.save.remote(p) for a, p in zip(actors, paths)])
        ray.get([a.graft_from_file.remote(paths[k - 1]) for k, a in enumerate(actors)])

    sides = {
        "exchange, object store": store_exchange,
        "exchange, torch.save/load files": file_exchange,
        "graft round, object store": store_round,
        "graft round, torch.save/load files": file_round,
    }
    for fn in sides.values():  # warm-up: imports, first allocations
        fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):  # interleaved, so machine noise hits both sides alike
        for name, fn in sides.items():
            times[name].append(time_it(fn))
    size_mb = sum(v.nbytes for v in ray.get(actors[0].snapshot.remote()).values()) / 1e6
    print(
        f"K={K} x {args.model}, snapshot {size_mb:.1f} MB per network, "
        f"median of {args.repeats} (ms)"
    )
    print("| what | median (ms) | min (ms) |")
    print("|---|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values) * 1e3:.1f} | {min(values) * 1e3:.1f} |")
    for what in ("exchange", "graft round"):
        store = statistics.median(times[f"{what}, object store"])
        files = statistics.median(times[f"{what}, torch.save/load files"])
        print(f"{what}: object store is {files / store:.1f}x faster than files")
    assert np.isfinite(size_mb)


if __name__ == "__main__":
    main()
