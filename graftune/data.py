"""Datasets as uint8 arrays, and training batches augmented on the training device.

In the airbench style: the training set sits on the device as one uint8 tensor (4x smaller
to move than float, and Ray shares the numpy arrays between workers without copies), and the
random crop + flip of a whole batch is one gather, not a Python loop over PIL images.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from graftune.config import DataConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PAD = 4  # RandomCrop(32, padding=4), the paper's (and every CIFAR ResNet's) augmentation
_CACHE_VERSION = 1  # bump when the cached layout changes, so old caches are not read
_FOLDER_HINT = "a folder or .zip with train/ and test/ class folders"

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]
Images = np.ndarray | torch.Tensor
Stats = Sequence[float]


class DataError(ValueError):
    """The data cannot be loaded; the one-line message says what to change."""


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

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_dataset(cfg: DataConfig) -> ImageSet:
    """Load ``cfg.dataset``, cut the fixed subsets and measure the train mean and std."""
    if cfg.dataset == "synthetic":
        arrays = _synthetic(cfg.synthetic_size, cfg.synthetic_classes)
    elif cfg.dataset in ("cifar10", "cifar100"):
        arrays = _cifar(cfg)
    elif cfg.dataset == "imagefolder":
        arrays = _image_folder(cfg.data_dir)
    else:
        raise DataError(
            f"--dataset must be cifar10, cifar100, imagefolder or synthetic; got {cfg.dataset!r}"
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


def _subset(images: np.ndarray, labels: np.ndarray, size: int, seed: int):
    if size <= 0 or size >= len(labels):
        return images, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(labels), size, replace=False))
    return np.ascontiguousarray(images[keep]), labels[keep]


def _cifar(cfg: DataConfig) -> Arrays:
    num_classes, name = (10, "CIFAR-10") if cfg.dataset == "cifar10" else (100, "CIFAR-100")
    root = Path(cfg.data_dir).expanduser()
    if (root.is_file() and root.suffix.lower() == ".zip") or (
        (root / "train").is_dir() and (root / "test").is_dir()
    ):  # an image-folder copy, e.g. --data-dir cifar10-jpeg.zip
        arrays = _image_folder(cfg.data_dir)
        if len(arrays[4]) != num_classes:
            raise DataError(
                f"'{cfg.data_dir}' holds {len(arrays[4])} classes, not the {num_classes} of "
                f"{name}; use --dataset imagefolder for it"
            )
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
            f"at it, or use --dataset imagefolder --data-dir PATH ({_FOLDER_HINT})"
        ) from None

    train_y, test_y = np.asarray(train.targets, np.int64), np.asarray(test.targets, np.int64)
    return _chw(train.data), train_y, _chw(test.data), test_y, list(train.classes)


def _image_folder(data_dir: str) -> Arrays:
    """train/<class>/* and test/<class>/* from a folder or a zip, cached once decoded."""
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataError(f"'{data_dir}' does not exist; point --data-dir at {_FOLDER_HINT}")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataError(f"'{data_dir}' is not a .zip; point --data-dir at {_FOLDER_HINT}")
        stat = path.stat()  # a zip changes as a whole: its size and mtime stand for it
        key = f"zip\n{path.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}"
    else:
        files = sorted(p for split in ("train", "test") for p in (path / split).glob("*/*"))
        names = [p.relative_to(path).as_posix() for p in files]
        stats = [p.stat() for p in files]  # any added, removed or rewritten file: a new key
        listing = [f"{n}\t{s.st_size}\t{s.st_mtime_ns}" for n, s in zip(names, stats)]
        key = "\n".join(["dir", str(path.resolve()), *listing])
    digest = hashlib.sha256(f"v{_CACHE_VERSION}\n{key}".encode()).hexdigest()[:20]
    cache = _cache_dir() / f"imagefolder-{digest}.npz"
    arrays = _read_cache(cache)
    if arrays is not None:
        return arrays
    if path.is_file():
        with zipfile.ZipFile(path) as archive:  # read member by member, never extracted
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
            arrays = _decode_folder(names, lambda n: io.BytesIO(archive.read(n)), data_dir)
    else:
        arrays = _decode_folder(names, lambda n: path / n, data_dir)
    _write_cache(cache, arrays)
    return arrays


def _decode_folder(names: list[str], read: Callable, data_dir: str) -> Arrays:
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for name in names:
        parts = name.split("/")  # zip members may sit under one top folder: take the last 3
        image = parts[-1].lower().endswith(IMAGE_SUFFIXES) and not parts[-1].startswith(".")
        if image and len(parts) >= 3 and parts[-3] in splits and "__MACOSX" not in parts:
            splits[parts[-3]].append((parts[-2], name))
    classes = sorted({c for c, _ in splits["train"]})
    test_classes = sorted({c for c, _ in splits["test"]})
    for split, found in splits.items():
        if not found:
            raise DataError(f"no images in {split}/<class>/ of '{data_dir}'; need {_FOLDER_HINT}")
    if classes != test_classes:
        only_train = sorted(set(classes) - set(test_classes))[:5]
        only_test = sorted(set(test_classes) - set(classes))[:5]
        raise DataError(
            f"train/ and test/ of '{data_dir}' have different classes "
            f"(only in train: {only_train}, only in test: {only_test})"
        )
    index = {c: i for i, c in enumerate(classes)}
    out = []
    shape: tuple[int, int] | None = None
    for split in ("train", "test"):
        items = sorted(splits[split])  # by class, then file name: a stable order
        images: np.ndarray | None = None
        for i, (_, name) in enumerate(items):
            try:
                with Image.open(read(name)) as image:
                    pixels = np.asarray(image.convert("RGB"))
            except (OSError, ValueError) as error:
                raise DataError(f"cannot decode '{name}' in '{data_dir}': {error}") from None
            if shape is None:
                shape = pixels.shape[:2]
            if pixels.shape[:2] != shape:
                raise DataError(
                    f"'{name}' in '{data_dir}' is {pixels.shape[1]}x{pixels.shape[0]} but the "
                    f"first image is {shape[1]}x{shape[0]}; all images must have one size"
                )
            if images is None:
                images = np.empty((len(items), *shape, 3), np.uint8)
            images[i] = pixels
        out += [_chw(images), np.array([index[c] for c, _ in items], np.int64)]
    return (*out, classes)


def _chw(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # N x H x W x 3 -> N x 3 x H x W


def _cache_dir() -> Path:
    return Path(os.environ.get("GRAFTUNE_CACHE") or Path.home() / ".cache" / "graftune")


def _read_cache(file: Path) -> Arrays | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = [z[k] for k in ("train_images", "train_labels", "test_images", "test_labels")]
            classes = [str(c) for c in z["classes"]]
    except Exception:  # noqa: BLE001 (missing, truncated or foreign: decode it again)
        return None
    if len(arrays[0]) != len(arrays[1]) or len(arrays[2]) != len(arrays[3]):
        return None
    return (*arrays, classes)


def _write_cache(file: Path, arrays: Arrays) -> None:
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:  # uncompressed: loads in well under a second
            keys = ("train_images", "train_labels", "test_images", "test_labels")
            np.savez(f, **dict(zip(keys, arrays[:4])), classes=np.array(arrays[4]))
        os.replace(tmp, file)  # readers see the old file or the whole new one, never half
    except OSError as error:  # a read-only home must not stop training: decode next time
        warnings.warn(f"graftune: could not write the image cache {file}: {error}", stacklevel=2)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


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


def _tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array
    with warnings.catch_warnings():  # Ray's shared arrays are read-only; we never write them
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array))


def _normaliser(mean: Stats, std: Stats, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / 255 - mean) / std as one multiply-add on uint8 values."""
    mean_t = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    scale, shift = 1.0 / (255.0 * std_t), -mean_t / std_t
    return scale.float().to(device), shift.float().to(device)


def _normalise(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, channels_last: bool
) -> torch.Tensor:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)  # cheaper on uint8 than on float
    return x.float().mul_(scale).add_(shift)  # in place keeps the memory format


class TrainBatches:
    """Shuffled, augmented training batches drawn from uint8 images on one device."""

    def __init__(
        self, images: Images, labels: Images, batch_size: int, mean: Stats, std: Stats,
        device: torch.device | str = "cpu", seed: int = 0, augment: bool = True,
        channels_last: bool = False,
    ):  # fmt: skip
        self.device = torch.device(device)
        # Moved once, as uint8; on the CPU this is the caller's (Ray-shared) memory itself.
        self.images = _tensor(images).to(self.device)
        self.labels = _tensor(labels).to(self.device, torch.int64)
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be uint8 N x C x H x W, got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")  # fmt: skip
        n = len(self.images)
        self.batch_size = min(batch_size, n)  # fewer images than a batch: one smaller batch
        self.steps_per_epoch = max(1, n // batch_size)
        self.augment, self.channels_last = augment, channels_last
        self.scale, self.shift = _normaliser(mean, std, self.device)
        # The random draws use a CPU generator and move once per epoch: the same seed gives
        # the same data order on any device, and a checkpoint resumes on another device.
        self.generator = torch.Generator().manual_seed(seed)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (x float32 [B, C, H, W], y int64 [B]); draws its randomness now."""
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator)
        shifts = torch.randint(0, 2 * PAD + 1, (2, n), generator=self.generator)
        flips = torch.randint(0, 2, (n,), generator=self.generator)
        draws = torch.cat([order[None], shifts, flips[None]]).to(self.device)
        return self._batches(draws)

    def _batches(self, draws: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(self.steps_per_epoch):
            index, dy, dx, flip = draws[:, step * self.batch_size : (step + 1) * self.batch_size]
            if self.augment:
                x = self._crop_flip(index, dy, dx, flip)
            else:
                x = self.images[index]
            yield _normalise(x, self.scale, self.shift, self.channels_last), self.labels[index]

    def _crop_flip(
        self, index: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
    ) -> torch.Tensor:
        """Output pixel (i, j) = zero-padded image (i + dy, j + dx), mirrored where ``flip``.

        Pads the batch once (zeros = black, as torchvision's RandomCrop(padding=4) pads
        before ToTensor and Normalize), stacks a mirrored copy under it, and takes every
        window with one gather from the unfolded view: window dx of the mirrored copy is the
        mirror of window 8 - dx of the original. On a CPU this is ~3x faster than indexing
        each pixel, and it has no Python loop over images.
        """
        b, h, w = len(index), self.images.shape[2], self.images.shape[3]
        padded = F.pad(self.images[index], (PAD, PAD, PAD, PAD))
        padded = torch.cat([padded, padded.flip(3)])
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # [2B, C, 9, 9, H, W], a view
        source = torch.arange(b, device=self.device) + b * flip  # mirrored copies follow
        return windows[source, :, dy, dx + flip * (2 * PAD - 2 * dx)]

    def state_dict(self) -> dict:
        """The generator state: a resumed run continues with the same data order."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def eval_batches(
    images: Images, labels: Images, batch_size: int, mean: Stats, std: Stats,
    device: torch.device | str, channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Normalised batches in order, without augmentation; moved to the device as uint8."""
    device = torch.device(device)
    images, labels = _tensor(images), _tensor(labels)
    scale, shift = _normaliser(mean, std, device)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        y = labels[start : start + batch_size].to(device, torch.int64, non_blocking=True)
        yield _normalise(x, scale, shift, channels_last), y
