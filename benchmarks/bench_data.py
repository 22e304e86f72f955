"""Augmented training batches: graftune's on-device uint8 pipeline vs torchvision's DataLoader.

Both sides apply the same augmentation (random crop with 4-pixel zero padding, random
horizontal flip, normalise) to the same already-decoded CIFAR-10 images, in batches of 128,
so JPEG decoding counts for neither. The DataLoader side is the usual per-image recipe:
PIL image -> RandomCrop(32, padding=4) -> RandomHorizontalFlip -> ToTensor -> Normalize.

    python benchmarks/bench_data.py --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from graftune.config import DataConfig
from graftune.data import TrainBatches, load_dataset

REPO = Path(__file__).resolve().parents[1]


class PILImages(Dataset):
    """Decoded uint8 arrays served as PIL images, as an ImageFolder would after decoding."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images = images.transpose(0, 2, 3, 1)  # N x H x W x 3, as PIL wants
        self.labels, self.transform = labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def time_batches(batches, limit: int) -> float:
    """Images per second over the first ``limit`` images; each batch is consumed."""
    seen, start = 0, time.perf_counter()
    for x, y in batches:
        x.sum().item()  # force the work, as a training step would
        y.sum().item()
        seen += len(x)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared/data/cifar10-jpeg.zip"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=0, help="images per repeat; 0 = an epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_dataset(DataConfig(dataset="cifar10", data_dir=args.data_dir, download=False))
    limit = args.images or len(data.train_labels)
    print(
        f"{len(data.train_labels)} train images {data.train_images.shape[1:]}, "
        f"{limit} per repeat, batch {args.batch_size}, torch threads {args.threads}, "
        f"device {args.device}, torch {torch.__version__}"
    )
    per_image = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(data.mean, data.std),
        ]
    )
    pil = PILImages(data.train_images, data.train_labels, per_image)
    on_device = TrainBatches(
        data.train_images,
        data.train_labels,
        args.batch_size,
        data.mean,
        data.std,
        device=args.device,
        seed=0,
    )

    def loader(workers: int) -> DataLoader:
        return DataLoader(
            pil,
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    ours = "graftune TrainBatches (uint8 on device)"
    sides = {
        ours: on_device.epoch,
        "DataLoader, num_workers=0": partial(iter, loader(0)),
        "DataLoader, num_workers=2": partial(iter, loader(2)),
    }
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):  # interleaved, so background load hits every side alike
        for name, batches in sides.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rates[name].append(time_batches(batches(), limit))

    best = statistics.median(rates[ours])
    print(f"\n{'pipeline':<42} {'median img/s':>13} {'min':>9} {'max':>9} {'ours is':>14}")
    for name, r in rates.items():
        ratio = best / statistics.median(r)
        print(
            f"{name:<42} {statistics.median(r):>13,.0f} {min(r):>9,.0f} {max(r):>9,.0f} "
            f"{ratio:>6.1f}x as fast"
        )


if __name__ == "__main__":
    main()
