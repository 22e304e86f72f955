"""Streaming benchmarks (BENCHMARKS.md, "Streaming any image set").

decodes: K fused networks on one CPU worker fed three ways, side by side in one process,
    the sides interleaved so the machine's load hits each alike:
    - stream-shared: graftune's streaming path, one order for the worker (one decode per
      image, K crops cut from it);
    - stream-own: graftune's streaming path, each network its own order (K decodes);
    - authors: the authors' layout, K torchvision ImageFolder + DataLoader loaders with
      RandomResizedCrop + flip, one per network, feeding the same fused step.
    Every side's decodes are counted the same way, by wrapping the function that opens an
    image file (a counter shared with forked DataLoader workers), and divided by the images
    the population trained (K x batch x steps). Images/s is the population's trained images
    per second of wall time (decode, crop, forward, backward, update).

    python benchmarks/bench_stream.py decodes --data-dir SET --model resnet20 --image-size 32

    On a GPU (``--device cuda``): the decodes stay in the CPU loader workers, batches are
    pinned and copied to the device, the crops and the step run there.

    python benchmarks/bench_stream.py decodes --data-dir SET --model resnet18 \
        --image-size 224 --device cuda --loader-workers 4 --threads 4

memory: peak RSS (the process tree, summed, sampled with psutil) of a streamed
    ``python -m graftune.run`` on each given image set; the training work is bounded by
    --subset while the listing covers the whole set.

    python benchmarks/bench_stream.py memory --data-dir SET20K --data-dir SET200K
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time

import psutil
import torch
import torchvision
from torchvision import transforms

from graftune.config import Config
from graftune.data import loader as stream_loader
from graftune.data.stream import load_dataset
from graftune.training.fused import FusedTrainer

DECODES = multiprocessing.Value("q", 0)  # forked DataLoader workers add to the same counter


def _count(n: int = 1) -> None:
    with DECODES.get_lock():
        DECODES.value += n


def count_stream_decodes() -> None:
    """Every image the streaming loader decodes passes through DecodedImages.decode."""
    decode = stream_loader.DecodedImages.decode

    def counted(self, source):
        _count()
        return decode(self, source)

    stream_loader.DecodedImages.decode = counted


def counted_pil_loader(path: str):
    """torchvision's own ImageFolder loader, counted."""
    _count()
    return torchvision.datasets.folder.default_loader(path)


class AuthorsBatches:
    """K torchvision ImageFolder + DataLoader loaders, one per network, with the authors'
    ImageNet training transforms; stacked to the fused step's [K, B, 3, S, S]."""

    def __init__(
        self, root: str, seeds, batch_size: int, size: int, workers: int, mean, std, device
    ):
        augment = transforms.Compose(
            [
                transforms.RandomResizedCrop(size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )
        self.loaders = []
        for seed in seeds:
            folder = torchvision.datasets.ImageFolder(
                os.path.join(root, "train"), augment, loader=counted_pil_loader
            )
            self.loaders.append(
                torch.utils.data.DataLoader(
                    folder,
                    batch_size,
                    shuffle=True,
                    num_workers=workers,
                    drop_last=True,
                    generator=torch.Generator().manual_seed(seed),
                    persistent_workers=workers > 0,
                    pin_memory=device.type == "cuda",  # as the authors' script pins
                    prefetch_factor=2 if workers else None,
                )
            )
        self.batch_size, self.device = batch_size, device
        self.steps_per_epoch = len(self.loaders[0])
        self.iters = [iter(loader) for loader in self.loaders]

    def next_batches(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for j, loader in enumerate(self.loaders):
            try:
                x, y = next(self.iters[j])
            except StopIteration:
                self.iters[j] = iter(loader)
                x, y = next(self.iters[j])
            xs.append(x)
            ys.append(y)
        x, y = torch.stack(xs), torch.stack(ys)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def make_config(args: argparse.Namespace, shared_order: bool) -> Config:
    config = Config()
    config.model.model = args.model
    d = config.data
    d.dataset, d.data_dir, d.data_mode = "imagefolder", args.data_dir, "stream"
    d.image_size, d.loader_workers, d.shared_order = (
        args.image_size,
        args.loader_workers,
        shared_order,
    )
    config.train.batch_size, config.train.epochs = args.batch_size, 1
    config.population.num_models = args.k
    return config


def make_side(name: str, args: argparse.Namespace) -> FusedTrainer:
    config = make_config(args, shared_order=name == "stream-shared")
    data = load_dataset(config.data)
    trainer = FusedTrainer(config, range(args.k), data, device=args.device)
    if name == "authors":
        seeds = [config.train.seed + i for i in range(args.k)]
        trainer.batches = AuthorsBatches(
            args.data_dir,
            seeds,
            args.batch_size,
            args.image_size,
            args.loader_workers,
            data.mean,
            data.std,
            trainer.device,
        )
    return trainer


def measure(trainer: FusedTrainer, steps: int) -> tuple[float, float, float]:
    """(trained images per wall second, per CPU second of this process, decodes per trained
    image) over ``steps`` steps. With --loader-workers 0 and one thread every decode and step
    runs here, so the CPU figure is the work itself, little moved by the machine's load."""
    start_count, start, cpu = DECODES.value, time.perf_counter(), time.process_time()
    for _ in range(steps):
        x, y = trainer._next_batches()
        trainer.train_step(x, y)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    trained = steps * trainer.size * trainer.batches.batch_size
    return trained / seconds, trained / cpu, (DECODES.value - start_count) / trained


def decodes(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    count_stream_decodes()
    sides = {name: make_side(name, args) for name in args.sides}
    for trainer in sides.values():  # warm-up: first batches, allocator, worker start
        measure(trainer, args.warmup)
    keys = ("images_per_s", "images_per_cpu_s", "decodes_per_image")
    rows = {name: {key: [] for key in keys} for name in sides}
    for repeat in range(args.repeats):
        for name, trainer in sides.items():
            rate, cpu_rate, per_image = measure(trainer, args.steps)
            for key, value in zip(keys, (rate, cpu_rate, per_image)):
                rows[name][key].append(round(value, 4 if key == "decodes_per_image" else 1))
            print(
                f"repeat {repeat} {name}: {rate:.1f} images/s, {cpu_rate:.1f} per CPU s, "
                f"{per_image:.3f} decodes/image"
            )
    for row in rows.values():
        row["median_images_per_s"] = statistics.median(row["images_per_s"])
        row["median_images_per_cpu_s"] = statistics.median(row["images_per_cpu_s"])
    return {"sides": rows}


def tree_rss(process: psutil.Process) -> int:
    """RSS of a process and all its descendants (Ray's workers, their decoders), summed."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # ended between the listing and the read
            pass
    return total


def peak_rss(command: list[str], interval: float) -> tuple[int, float, int]:
    """(peak summed RSS, wall seconds, exit code) of ``command``."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        process = psutil.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        peak = 0
        while process.poll() is None:
            peak = max(peak, tree_rss(process))
            time.sleep(interval)
        if process.returncode:
            log.seek(0)
            sys.stderr.write(log.read().decode()[-3000:])
    return peak, time.perf_counter() - start, process.returncode


def count_images(root: str) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def memory(args: argparse.Namespace) -> dict:
    rows = []  # a set given twice is measured twice (the second run reads the cached listing)
    for data_dir in args.data_dir:
        with tempfile.TemporaryDirectory() as out:
            command = [
                sys.executable,
                "-m",
                "graftune.run",
                "--dataset",
                "imagefolder",
                "--data-dir",
                data_dir,
                "--data-mode",
                "stream",
                "--model",
                args.model,
                "--image-size",
                str(args.image_size),
                "--num-models",
                str(args.k),
                "--fuse",
                "on",
                "--epochs",
                "1",
                "--subset",
                str(args.subset),
                "--test-subset",
                str(args.test_subset),
                "--batch-size",
                str(args.batch_size),
                "--no-log-weights",
                "--no-log-models",
                "--checkpoint-dir",
                f"{out}/ckpt",
                "--tracking-uri",
                f"sqlite:///{out}/mlflow.db",
            ]
            peak, wall, code = peak_rss(command, args.interval)
        rows.append(
            {
                "data_dir": data_dir,
                "images": count_images(data_dir),
                "peak_rss_mib": round(peak / 2**20, 1),
                "wall_s": round(wall, 1),
                "rc": code,
                "command": " ".join(command[1:]),
            }
        )
        print(f"{data_dir}: peak {peak / 2**20:.1f} MiB, {wall:.0f} s, rc {code}")
    return {"runs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dec = sub.add_parser("decodes", help="decodes per trained image and images/s, three layouts")
    dec.add_argument("--data-dir", required=True, help="a folder with train/<class>/ (ImageFolder)")
    dec.add_argument("--sides", nargs="+", default=["stream-shared", "stream-own", "authors"])
    dec.add_argument("--steps", type=int, default=10, help="steps per measurement")
    dec.add_argument("--warmup", type=int, default=2)
    dec.add_argument("--repeats", type=int, default=3)
    dec.add_argument("--loader-workers", type=int, default=0, help="per loader")
    dec.add_argument("--threads", type=int, default=1, help="torch threads of the step")
    dec.add_argument("--device", default="cpu", help="cpu, or cuda: the step and crops there")
    mem = sub.add_parser("memory", help="peak RSS of a streamed run, per image set")
    mem.add_argument("--data-dir", action="append", required=True)
    mem.add_argument("--subset", type=int, default=1000, help="train images actually trained")
    mem.add_argument("--test-subset", type=int, default=200)
    mem.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    for p in (dec, mem):
        p.add_argument("--model", default="resnet20")
        p.add_argument("--image-size", type=int, default=32)
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--k", type=int, default=4)
        p.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args()
    result = decodes(args) if args.command == "decodes" else memory(args)
    result = {"argv": sys.argv[1:], "load_avg": os.getloadavg(), **result}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
