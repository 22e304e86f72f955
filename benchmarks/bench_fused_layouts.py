"""Which fused step pays: torch.func's vmap, or the same stacked weights run as one wide
network of grouped convolutions (HFTA's layout; graftune/training/grouped.py), NCHW or NHWC.

Issue 14 asks for the fused step's mechanism to be chosen by measurement. Every side is the
real FusedTrainer, with its data, SGD, per-network learning rates and (on a GPU) its CUDA
graph; only the forward of the step differs. Every side first takes one step from the same
networks on the same batches; the last column, its weights then against vmap's (||a - b|| /
||b||, the largest over networks), says whether the sides compute the same networks. (Over
many steps on synthetic images the runs drift apart chaotically: after 40 steps vmap and
separate Trainers differ by 0.75, and so does this layout.)

    python benchmarks/bench_fused_layouts.py --models resnet20 resnet32 mobilenetv2

With --compile, one more side: the default layout's forward and backward through
torch.compile (on a GPU also mode="reduce-overhead", inductor's own CUDA graphs, in place of
the trainer's). Its warm-up (the compile) is timed on its own.
"""

from __future__ import annotations

import argparse
import time

import torch

from graftune.config import Config, with_overrides
from graftune.data import load_dataset
from graftune.training.fused import FusedTrainer


def rates(trainers: list[FusedTrainer], steps: int, repeats: int) -> list[float]:
    """Each trainer's best training images/s over ``repeats`` intervals, after one warm-up
    interval each; the trainers take turns within every repeat, so a noisy machine slows
    them alike."""
    best = [0.0] * len(trainers)
    for trainer in trainers:
        trainer.train_interval(steps)
    for _ in range(repeats):
        for i, trainer in enumerate(trainers):
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.train_interval(steps)  # ends in a host sync (the finite check)
            images = steps * trainer.size * trainer.config.train.batch_size
            best[i] = max(best[i], images / (time.perf_counter() - start))
    return best


def weight_gap(a: FusedTrainer, b: FusedTrainer) -> float:
    """The largest, over networks, of ||a - b|| / ||b|| over all of a network's weights and
    BatchNorm statistics (tests/test_fused.py's distance)."""
    keys = [k for k, v in b.weights(0).items() if v.is_floating_point()]
    gaps = []
    for j in range(b.size):
        wa, wb = a.weights(j), b.weights(j)
        diff = torch.cat([(wa[k] - wb[k]).flatten() for k in keys])
        gaps.append(float(diff.norm() / torch.cat([wb[k].flatten() for k in keys]).norm()))
    return max(gaps)


def compiled_side(config: Config, data, k: int, mode: str) -> tuple[str, FusedTrainer]:
    """The default layout with its train forward (and so its backward) compiled. The
    trainer's own CUDA graph is left out: it would capture the compiled kernels' launches,
    and mode="reduce-overhead" brings inductor's instead."""
    trainer = FusedTrainer(config, range(k), data, grouped=True)
    trainer._train_forward = torch.compile(trainer._train_forward, mode=mode)
    trainer.graph_note = f"torch.compile {mode}"
    start = time.perf_counter()
    trainer.train_interval(1)  # the first step, from the same networks: and the compile
    seconds = time.perf_counter() - start
    return f"grouped, NHWC, compiled ({seconds:.0f} s to compile)", trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet32"])
    parser.add_argument("--num-models", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=None)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    precisions = args.precisions or (["fp32", "bf16"] if cuda else ["fp32"])
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}, torch {torch.__version__}, K = {args.num_models}")
    print(
        "| model | fused step | precision | train img/s (all networks) | vs vmap | gap after 1 step |"
    )
    print("|---|---|---|---:|---:|---:|")
    for model in args.models:
        for precision in precisions:
            settings = {
                "model": model,
                "dataset": "synthetic",
                "synthetic_size": 4096,
                "batch_size": args.batch_size,
                "epochs": 100,
                "num_models": args.num_models,
                "precision": precision,
            }
            config = with_overrides(Config(), settings)
            data = load_dataset(config.data)
            sides = []
            for name, grouped, nhwc in [
                ("vmap, NCHW", False, False),
                ("grouped, NCHW", True, False),
                ("grouped, NHWC (the default)", True, True),
            ]:
                side = with_overrides(config, {"channels_last": nhwc})
                trainer = FusedTrainer(side, range(args.num_models), data, grouped=grouped)
                trainer.train_interval(1)  # the first step, from the same networks
                sides.append((name, trainer))
            for mode in (["default", "reduce-overhead"] if cuda else ["default"]) * args.compile:
                try:  # a GPU call must not lose the other rows to a compiler that fails there
                    sides.append(compiled_side(config, data, args.num_models, mode))
                except Exception as error:  # reported, and the side left out
                    print(f"torch.compile {mode}: {type(error).__name__}: {error}"[:300])
            gaps = [weight_gap(trainer, sides[0][1]) for _, trainer in sides]
            speeds = rates([trainer for _, trainer in sides], args.steps, args.repeats)
            for (name, trainer), gap, images in zip(sides, gaps, speeds):
                how = f"{trainer.step} steps, {trainer.graph_note or 'eager'}"
                print(
                    f"| {model} | {name} ({how}) | {precision} | {images:,.0f} | "
                    f"{images / speeds[0]:.2f}x | {gap:.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
