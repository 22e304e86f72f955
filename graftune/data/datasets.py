"""Data sets as uint8 N x 3 x H x W arrays: CIFAR, image folders, synthetic; fixed subsets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graftune.config import DataConfig
from graftune.data.files import FOLDER_HINT, Arrays, DataError, read_image_folder


@dataclass
class ImageSet:
    """A dataset as uint8 N x 3 x H x W arrays, plus the statistics to normalise it."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    mean: tuple[float, float, float]  # per channel, in [0, 1] units, of the train images
    std: tuple[float, float, float]

    streamed = False  # see graftune.data.stream.StreamSet
    mode = "memory"

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def folder_copy(cfg: DataConfig) -> bool:
    """Does ``cfg`` read an image folder or zip (which may be streamed)?"""
    if cfg.dataset in ("imagefolder", "imagenet"):
        return True
    root = Path(cfg.data_dir).expanduser()
    return cfg.dataset in ("cifar10", "cifar100") and (
        (root.is_file() and root.suffix.lower() == ".zip")
        or ((root / "train").is_dir() and ((root / "test").is_dir() or (root / "val").is_dir()))
    )


def load_in_memory(cfg: DataConfig, listed: bool = False) -> ImageSet:
    """Load ``cfg.dataset``, cut the fixed subsets and measure the train mean and std
    (``listed``: an image folder's listing was checked and reported already)."""
    if cfg.dataset == "synthetic":
        arrays = _synthetic(cfg.synthetic_size, cfg.synthetic_classes)
    elif cfg.dataset in ("cifar10", "cifar100"):
        arrays = _cifar(cfg, listed)
    elif cfg.dataset in ("imagefolder", "imagenet"):  # imagenet: the same reader, a recipe
        arrays = read_image_folder(cfg.data_dir, cfg.max_image_bytes, listed)
    else:
        raise DataError(
            "--dataset must be cifar10, cifar100, imagefolder, imagenet or synthetic; "
            f"got {cfg.dataset!r}"
        )
    train_x, train_y, test_x, test_y, classes = arrays
    # Fixed seeds: every network of a population, and a resumed run, sees the same images.
    train_x, train_y = _subset(train_x, train_y, cfg.subset, seed=0)
    test_x, test_y = _subset(test_x, test_y, cfg.test_subset, seed=1)
    mean, std = channel_stats(train_x)
    return ImageSet(train_x, train_y, test_x, test_y, list(classes), mean, std)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, exact, from 256-bin histograms."""
    counts = np.zeros((3, 256), np.int64)
    for start in range(0, len(images), 4096):  # bounded memory on 50k images
        block = images[start : start + 4096]
        for c in range(3):
            counts[c] += np.bincount(block[:, c].ravel(), minlength=256)
    values = np.arange(256) / 255.0
    total = counts.sum(1)
    mean = counts @ values / total
    std = np.sqrt(np.maximum(counts @ values**2 / total - mean**2, 0.0))
    std[std == 0] = 1.0  # a constant channel: normalising must not divide by zero
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def subset_index(count: int, size: int, seed: int) -> np.ndarray:
    """The indices of the fixed subset of ``size`` of ``count`` images (0 or more: all)."""
    if size <= 0 or size >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))


def _subset(images: np.ndarray, labels: np.ndarray, size: int, seed: int):
    if size <= 0 or size >= len(labels):
        return images, labels
    keep = subset_index(len(labels), size, seed)
    return np.ascontiguousarray(images[keep]), labels[keep]


def check_class_count(cfg: DataConfig, count: int) -> None:
    """An image-folder copy named --dataset cifar10 or cifar100 must hold its classes."""
    num_classes, name = (10, "CIFAR-10") if cfg.dataset == "cifar10" else (100, "CIFAR-100")
    if cfg.dataset in ("cifar10", "cifar100") and count != num_classes:
        raise DataError(
            f"'{cfg.data_dir}' holds {count} classes, not the {num_classes} of {name}; use "
            f"--dataset imagefolder for it"
        )


def _cifar(cfg: DataConfig, listed: bool = False) -> Arrays:
    num_classes, name = (10, "CIFAR-10") if cfg.dataset == "cifar10" else (100, "CIFAR-100")
    root = Path(cfg.data_dir).expanduser()
    if folder_copy(cfg):  # an image-folder copy, e.g. --data-dir cifar10-jpeg.zip
        arrays = read_image_folder(cfg.data_dir, cfg.max_image_bytes, listed)
        check_class_count(cfg, len(arrays[4]))
        return arrays
    from torchvision import datasets

    kind = datasets.CIFAR10 if num_classes == 10 else datasets.CIFAR100
    try:
        train = kind(root=str(root), train=True, download=cfg.download)
        test = kind(root=str(root), train=False, download=cfg.download)
    except Exception as error:  # noqa: BLE001 (offline: URLError, OSError, RuntimeError...)
        reason = (str(error).strip().splitlines() or [""])[0][:120]
        why = "downloading is off (--no-download)"
        if cfg.download:
            why = f"it could not be downloaded ({type(error).__name__}: {reason})"
        raise DataError(
            f"{name} not found in '{cfg.data_dir}' and {why}. Put it there, point --data-dir "
            f"at it, or use --dataset imagefolder --data-dir PATH ({FOLDER_HINT})"
        ) from None

    train_y, test_y = np.asarray(train.targets, np.int64), np.asarray(test.targets, np.int64)
    return _chw(train.data), train_y, _chw(test.data), test_y, list(train.classes)


def _chw(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # N x H x W x 3 -> N x 3 x H x W


def _synthetic(size: int, num_classes: int) -> Arrays:
    """Seeded 32x32 images: a per-class colour and stripe orientation, plus noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    templates = np.empty((num_classes, 3, 32, 32), np.float32)
    for k in range(num_classes):
        hue = 2 * np.pi * k / num_classes  # evenly spaced hues: neighbours differ in colour
        colour = 128 + 70 * np.cos(hue + np.array([0.0, 2.0, 4.0]) * np.pi / 3)
        angle = np.pi * k / num_classes  # ... and in stripe direction
        stripes = np.sin(2 * np.pi * (2 + k % 3) * (xx * np.cos(angle) + yy * np.sin(angle)))
        templates[k] = colour[:, None, None] + 40 * stripes

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        noise = rng.normal(0, 24, (n, 3, 32, 32)).astype(np.float32)
        return np.clip(templates[labels] + noise, 0, 255).astype(np.uint8), labels

    train_x, train_y = draw(size)
    test_x, test_y = draw(max(size // 4, 2 * num_classes))
    return train_x, train_y, test_x, test_y, [f"class{k}" for k in range(num_classes)]
