"""What logging the final networks as MLflow models costs at the end of a run.

Times :func:`graftune.tracking.logged_models.log_networks` (torch.export of each network behind its
normalisation, the MLflow model files, upload to the run's artifact store) for K networks
of one architecture into a fresh SQLite store. The first call in a process also pays for
torch.export's own start-up, so it is reported apart.

    python benchmarks/bench_log_models.py --model tiny_cnn --num-models 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from graftune.config import DataConfig
from graftune.data import load_dataset
from graftune.models import create_model
from graftune.tracking.logged_models import log_networks
from graftune.tracking.tracker import Tracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny_cnn")
    parser.add_argument("--num-models", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    data = load_dataset(DataConfig(dataset="synthetic", synthetic_size=256))
    k = args.num_models
    states = [{"model": create_model(args.model).state_dict()} for _ in range(k)]
    final = {
        "round": 1,
        "networks": [{"test_acc": 0.1 * i} for i in range(k)],
        "population": {"mean_test_acc": 0.1},
    }
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{Path(tmp) / 'mlflow.db'}", "bench")
        for repeat in range(args.repeats + 1):
            start = time.perf_counter()
            log_networks(tracker, args.model, data, states, final, {"model/model": args.model})
            seconds = time.perf_counter() - start
            what = "first call (torch.export start-up)" if repeat == 0 else f"repeat {repeat}"
            print(f"{k} x {args.model}, {what}: {seconds:.2f} s ({seconds / k:.2f} s a network)")
        tracker.finish()


if __name__ == "__main__":
    main()
