"""Accuracy arms on one device, each a fused population in this process (no Ray, no MLflow).

One fused worker on one GPU is exactly what ``python -m graftune.run`` starts there; this
script drives the same :class:`~graftune.training.fused.FusedTrainer` through the same round rules
(train, evaluate, graft unless it is the last round) so that many arms fit in a short GPU
lease. A ``pairK`` arm trains K grafted networks and the same K networks (same seeds, data
order and learning rates) without grafting in one fused step of 2K networks: a paired
comparison at the cost of one run. Every arm ends with its soup (the uniform average of its
networks, BatchNorm re-estimated on --soup-bn-batches training batches, as ``--soup end``
does); the ``k4-papa*`` arms are PAPA (``--source average``) at the rates of
benchmarks/accuracy_runs.sh, so the CPU harness's table of issue 28 can be run on a GPU.

    python benchmarks/fused_accuracy.py --data-dir cifar10-jpeg.zip --subset 10000 \\
        --epochs 15 --arms k4 k4-c10 pair4 single --seeds 0 1 --out runs/fused.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import time

import torch

from graftune.config import Config, with_overrides
from graftune.core import population_summary
from graftune.core.graft import predecessor
from graftune.data import load_dataset
from graftune.population.ring import grafts_in_round
from graftune.training.fused import FusedTrainer
from graftune.training.soup import Soup

ARMS = {
    "single": {"num_models": 1, "source": "none", "diff_lr": False},
    "k2": {"num_models": 2},
    "k2-indep": {"num_models": 2, "source": "none"},
    "pair2": {"num_models": 2},  # K = 2 grafted (c = 500) and independent, paired
    "k4": {"num_models": 4},
    "k4-c10": {"num_models": 4, "c": 10},
    "k4-indep": {"num_models": 4, "source": "none"},
    "k8": {"num_models": 8},
    "k8-c10": {"num_models": 8, "c": 10},
    "k8-indep": {"num_models": 8, "source": "none"},
    "pair4": {"num_models": 4},  # K = 4 grafted (c = 500) and independent, paired
    "pair4-c10": {"num_models": 4, "c": 10},
    "pair8-c10": {"num_models": 8, "c": 10},
    # PAPA: toward the population's average after every exchange (unpaired: the average is
    # of every network this worker holds)
    "k4-papa0.075": {"num_models": 4, "source": "average", "average_rate": 0.075},
    "k4-papa0.3": {"num_models": 4, "source": "average", "average_rate": 0.3},
    "k4-papaall": {"num_models": 4, "source": "average", "average_rate": 1.0, "interval_epochs": 5},
    "k4-papasteps": {
        "num_models": 4,
        "source": "average",
        "average_rate": 0.01,
        "interval_steps": 10,
    },
}
# Distillation arms (grafting + distillation, or distillation alone with source none):
# "<arm>-kd<W>t<T>", e.g. pair4-c10-kd1t4 or k4-indep-kd1t4, any arm above plus W and T.
KD = re.compile(r"^(?P<arm>.+)-kd(?P<w>[0-9.]+)t(?P<t>[0-9.]+)$")


def arm_settings(arm: str) -> dict:
    kd = KD.match(arm)
    if kd is None:
        return ARMS[arm]
    weight, temperature = float(kd["w"]), float(kd["t"])
    return {**ARMS[kd["arm"]], "distill_weight": weight, "distill_temperature": temperature}


def run_arm(
    config: Config, data, device: str, paired: bool, progress=False, soup_bn_batches=50
) -> dict:
    k = config.population.num_models
    indices = list(range(k)) * (2 if paired else 1)
    trainer = FusedTrainer(config, indices, data, device=device)
    start, rows = time.time(), []
    for round_index in range(1, trainer.num_rounds + 1):
        train = trainer.train_interval()
        evaluations = trainer.evaluate(True)
        averaging = config.graft.source == "average"
        if grafts_in_round(config, round_index, trainer.num_rounds) and averaging:
            trainer.move_toward_average(None, config.graft.average_rate, include=range(k))
        elif grafts_in_round(config, round_index, trainer.num_rounds):
            ring = [predecessor(j, k) for j in range(k)]
            if config.train.distill_weight > 0:  # before the graft: the trained predecessor
                trainer.set_teachers(ring, slots=range(k))
            network = config.graft.source == "network"
            trainer.apply_grafts(ring if network else [None] * k, slots=range(k))
        first = {"none": "independent", "average": "papa"}.get(config.graft.source, "grafted")
        halves = [(first + ("+kd" if config.train.distill_weight > 0 else ""), 0)]
        if paired:
            halves.append(("independent", k))
        row = {"round": round_index, "finite": all(t["finite"] for t in train)}
        for name, offset in halves:
            part = evaluations[offset : offset + k]
            summary = population_summary(
                [e["test_acc"] for e in part], [e["probabilities"] for e in part], data.test_labels
            )
            row[name] = {"acc": [e["test_acc"] for e in part], **summary}
        rows.append(row)
        if progress:
            means = {n: f"{100 * row[n]['mean_test_acc']:.2f}" for n, _ in halves}
            print(
                f"  round {round_index}/{trainer.num_rounds} mean {means} "
                f"{time.time() - start:.0f}s",
                flush=True,
            )
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.time() - start
    if soup_bn_batches >= 0:  # each side's soup, from its trained networks after the last round
        soup = Soup(config, data, device=device)
        for name, offset in halves:
            average = trainer.average(range(offset, offset + k))
            rows[-1][name]["soup_test_acc"] = soup.evaluate(average, soup_bn_batches)["test_acc"]
    images = trainer.total_steps * trainer.batches.batch_size * len(indices)
    return {"rounds": rows, "wall_s": wall, "train_img_per_s": images / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--arms", nargs="+", default=["k4", "k4-c10", "pair4", "single"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True)
    parser.add_argument("--deadline-s", type=float, default=0, help="skip arms after this")
    parser.add_argument("--progress", action="store_true", help="a line per round")
    parser.add_argument(
        "--soup-bn-batches", type=int, default=50, help="the soup's BatchNorm batches; -1: no soup"
    )
    args = parser.parse_args()
    base = with_overrides(
        Config(),
        {
            "model": args.model,
            "dataset": "imagefolder",
            "data_dir": args.data_dir,
            "subset": args.subset,
            "epochs": args.epochs,
            "precision": args.precision,
        },
    )
    data = load_dataset(base.data)
    began = time.time()
    print(
        "| arm | seed | side | per-network test acc (%) | mean | best | ensemble | soup "
        "| wall (s) |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    for seed in args.seeds:
        for arm in args.arms:
            if args.deadline_s and time.time() - began > args.deadline_s:
                print(f"deadline: skipped {arm} seed {seed}")
                continue
            config = with_overrides(base, {**arm_settings(arm), "seed": seed})
            paired = arm.startswith("pair")
            result = run_arm(config, data, args.device, paired, args.progress, args.soup_bn_batches)
            with open(args.out, "a") as f:
                f.write(
                    json.dumps({"arm": arm, "seed": seed, "model": args.model, **result}) + "\n"
                )
            final = result["rounds"][-1]
            for side in ("grafted", "grafted+kd", "papa", "independent+kd", "independent"):
                if side in final:
                    s = final[side]
                    accs = ", ".join(f"{100 * a:.2f}" for a in s["acc"])
                    soup = f"{100 * s['soup_test_acc']:.2f}" if "soup_test_acc" in s else "-"
                    print(
                        f"| {arm} | {seed} | {side} | {accs} | {100 * s['mean_test_acc']:.2f} | "
                        f"{100 * s['best_test_acc']:.2f} | {100 * s['ensemble_test_acc']:.2f} | "
                        f"{soup} | {result['wall_s']:.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
