"""Many population settings at once on one machine, through graftune's own round loop
(``run_experiment`` with a ``NullTracker``: Ray actors, weights through the object store, no
MLflow and no checkpoints).

On a GPU every worker takes a share of it (--gpus-per-worker) and several populations
train side by side; on CPUs they share the cores. Each arm is a name such as ``single``,
``k2`` (grafted, A = 0.4, c = 500), ``k4-indep`` (the same four networks, no exchange) or
``k4-c10-a0.8``; every arm runs once per seed. One JSON line per finished run goes to --out,
and a markdown table of all runs to stdout.

    python benchmarks/accuracy_scan.py --data-dir cifar10-jpeg.zip --subset 10000 \\
        --epochs 15 --seeds 0 1 --arms single k2 k2-indep k4 k4-indep k4-c10 --parallel 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import ray

from graftune.config import Config, with_overrides
from graftune.data import load_dataset
from graftune.tracking.experiment import run_experiment
from graftune.tracking.null_tracker import NullTracker


def arm_settings(arm: str) -> dict:
    """``single`` | ``k<K>`` followed by ``-indep``, ``-c<c>``, ``-a<A>``, ``-start<round>``."""
    head, *options = arm.split("-")
    if head == "single":
        settings = {"num_models": 1, "source": "none", "diff_lr": False}
    elif head.startswith("k") and head[1:].isdigit():
        settings = {"num_models": int(head[1:])}
    else:
        raise SystemExit(f"arm {arm!r}: start with single or k<K>, e.g. k4-c10")
    for option in options:
        if option == "indep":
            settings["source"] = "none"
        elif option.startswith("start"):
            settings["start_round"] = int(option[5:])
        elif option[:1] in "ca" and option[1:]:
            settings["c" if option[0] == "c" else "A"] = float(option[1:])
        else:
            raise SystemExit(f"arm {arm!r}: unknown option {option!r}")
    return settings


class Deadline(Exception):
    """--deadline-s has passed: the arm stops after the round it has finished."""


def run_arm(arm: str, seed: int, base: dict, data, deadline: float) -> dict:
    config = with_overrides(Config(), {**base, **arm_settings(arm), "seed": seed})
    start = time.perf_counter()
    seen = {"devices": [], "rounds": 0, "result": None}

    def on_start(population, num_rounds: int) -> None:
        seen["devices"] = sorted({info["device"] for info in population.info})
        seen["rounds"] = num_rounds

    def on_round(result) -> None:
        seen["result"] = result
        if result.round < seen["rounds"] and time.time() > deadline:
            raise Deadline

    try:  # queued behind the runs already on the machine: wait up to an hour for resources
        run_experiment(
            config, data, on_round, on_start, tracker=NullTracker(), ready_timeout_s=3600
        )
    except Deadline:
        pass
    result = seen["result"]
    done = result is not None and result.round == seen["rounds"]
    return {
        "arm": arm,
        "seed": seed,
        "finished": done,
        "rounds": result.round if result else 0,
        "devices": seen["devices"],
        "test_acc": [n["test_acc"] for n in result.networks] if result else [],
        **(result.population if result else {}),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| arm | seed | per-network test acc (%) | mean | best | ensemble | wall (s) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["arm"], r["seed"])):
        accs = ", ".join(f"{100 * a:.2f}" for a in r["test_acc"])
        mark = "" if r["finished"] else f" (stopped at round {r['rounds']})"
        lines.append(
            f"| {r['arm']}{mark} | {r['seed']} | {accs} | {100 * r.get('mean_test_acc', 0):.2f} "
            f"| {100 * r.get('best_test_acc', 0):.2f} | {100 * r.get('ensemble_test_acc', 0):.2f} "
            f"| {r['wall_s']:.0f} |"
        )
    lines += [
        "",
        "| arm | seeds | mean over seeds | best over seeds | ensemble over seeds |",
        "|---|---:|---:|---:|---:|",
    ]
    for arm in sorted({r["arm"] for r in rows}):
        done = [r for r in rows if r["arm"] == arm and r["finished"]]
        if done:
            cells = [
                100 * statistics.mean(r[k] for r in done)
                for k in ("mean_test_acc", "best_test_acc", "ensemble_test_acc")
            ]
            lines.append(f"| {arm} | {len(done)} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=["single", "k2", "k2-indep"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="imagefolder")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--subset", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--parallel", type=int, default=2, help="populations at once")
    parser.add_argument("--gpus-per-worker", type=float, default=-1.0)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--num-cpus", type=int, default=None, help="for ray.init")
    parser.add_argument("--deadline-s", type=float, default=0, help="stop rounds after this")
    parser.add_argument("--out", default="accuracy_scan.jsonl")
    args = parser.parse_args()
    deadline = time.time() + (args.deadline_s or 1e9)
    base = {
        "model": args.model,
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "subset": args.subset,
        "epochs": args.epochs,
        "channels_last": args.channels_last,
        "download": False,
        "gpus_per_worker": args.gpus_per_worker,
        "cpus_per_worker": args.cpus_per_worker,
    }
    for arm in args.arms:
        arm_settings(arm)  # bad names fail before any work
    data = load_dataset(with_overrides(Config(), base).data)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=True)
    print(f"ray resources: {ray.cluster_resources()}", flush=True)
    rows, lock = [], threading.Lock()

    def job(arm: str, seed: int) -> None:
        if time.time() > deadline:
            return
        try:
            row = run_arm(arm, seed, base, data, deadline)
        except Exception as error:  # noqa: BLE001 (one failed arm must not end the scan)
            print(f"{arm} seed {seed} failed: {type(error).__name__}: {error}", flush=True)
            return
        with lock:
            rows.append(row)
            with open(args.out, "a") as out:
                out.write(json.dumps(row) + "\n")
        print(
            f"{arm} seed {seed}: mean {row.get('mean_test_acc', 0):.4f} "
            f"ensemble {row.get('ensemble_test_acc', 0):.4f} rounds {row['rounds']} "
            f"on {row['devices']} in {row['wall_s']:.0f} s",
            flush=True,
        )

    with ThreadPoolExecutor(args.parallel) as pool:  # seeds inner: each arm's pair together
        for future in [pool.submit(job, a, s) for a in args.arms for s in args.seeds]:
            future.result()
    print(table(rows))
    sys.exit(0 if rows else 1)


if __name__ == "__main__":
    main()
