"""Which way a data set is held: decoded into memory (small sets of one image size, as
always) or streamed from its files batch by batch (images of several sizes, or more than
``--memory-budget`` decoded), and the streamed set itself.

``--data-mode auto`` lists the folder or zip and checks every header first (cached), then
decides; ``memory`` and ``stream`` force either. The choice is written back into the
settings (``data_mode``, and ``image_size`` when streaming), so the run's params, the
workers and a resume all see the mode that was used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graftune.config import DataConfig
from graftune.data.datasets import (
    ImageSet,
    channel_stats,
    check_class_count,
    folder_copy,
    load_in_memory,
    subset_index,
)
from graftune.data.decode import size_text
from graftune.data.errors import DataError
from graftune.data.headers import ImageListing, list_images
from graftune.data.loader import DecodedImages

STREAM_SIZE = 224  # --image-size 0 when streaming: the ImageNet networks' input
STATS_SAMPLE = 512  # train images whose pixels estimate the mean and std, a fixed sample


@dataclass
class StreamSet:
    """An image set read from its files while training: names, labels and statistics only.

    Attributes mirror :class:`~graftune.data.datasets.ImageSet` where they can (labels,
    classes, mean, std); the images stay in ``listing.path``, which every worker (on every
    node) must be able to read.
    """

    listing: ImageListing
    data_dir: str  # as the user gave it, for messages
    keep: dict[str, np.ndarray]  # split: the listing's indices in use (--subset)
    image_size: int
    max_image_bytes: int
    crop_scale: float = 0.08  # the smallest share of an image's area a training crop keeps
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    streamed = True
    mode = "stream"

    @property
    def classes(self) -> list[str]:
        return self.listing.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def train_labels(self) -> np.ndarray:
        return self.listing.labels["train"][self.keep["train"]]

    @property
    def test_labels(self) -> np.ndarray:
        return self.listing.labels["test"][self.keep["test"]]

    def decoded(self, split: str, train: bool | None = None) -> DecodedImages:
        """The split as a dataset that decodes on demand: training canvases, or evaluation
        crops (``train`` defaults to split == "train")."""
        names = self.listing.names[split][self.keep[split]]
        labels = self.listing.labels[split][self.keep[split]]
        train = split == "train" if train is None else train
        return DecodedImages(
            self.listing.path,
            self.listing.is_zip,
            names,
            labels,
            self.image_size,
            train,
            self.max_image_bytes,
        )

    def digest(self, split: str) -> str:
        return self.listing.digest(split, self.keep[split])

    def examples(self, count: int) -> np.ndarray:
        """The first ``count`` test images as the networks see them, uint8 N x 3 x S x S."""
        images = self.decoded("test")
        return np.stack([images.load(i) for i in range(min(count, len(images)))])


def load_dataset(cfg: DataConfig) -> ImageSet | StreamSet:
    """The data set of ``cfg``, in memory or streamed as ``cfg.data_mode`` says (auto:
    decided from the listing); ``cfg.data_mode`` and ``cfg.image_size`` are set to what
    was used."""
    if not folder_copy(cfg):
        if cfg.data_mode == "stream":
            raise DataError(
                f"--data-mode stream reads an image folder or .zip; '{cfg.data_dir}' is not one "
                f"(--dataset {cfg.dataset})"
            )
        cfg.data_mode = "memory"
        return load_in_memory(cfg)
    listing = list_images(cfg.data_dir, cfg.max_image_bytes) if cfg.data_mode != "memory" else None
    if listing is not None:
        check_class_count(cfg, len(listing.classes))
    if listing is not None and cfg.data_mode == "auto":
        cfg.data_mode = _auto_mode(listing, cfg.memory_budget)
    if cfg.data_mode == "memory":
        return load_in_memory(cfg, listed=listing is not None)
    cfg.image_size = cfg.image_size or STREAM_SIZE
    keep = {
        "train": subset_index(len(listing.labels["train"]), cfg.subset, seed=0),
        "test": subset_index(len(listing.labels["test"]), cfg.test_subset, seed=1),
    }
    data = StreamSet(
        listing, cfg.data_dir, keep, cfg.image_size, cfg.max_image_bytes, cfg.crop_scale
    )
    data.mean, data.std = _sample_stats(data)
    return data


def _auto_mode(listing: ImageListing, budget: int) -> str:
    """memory for one image size that fits the budget decoded; stream otherwise."""
    size = listing.one_size()
    if size is None:
        return "stream"
    count = sum(len(v) for v in listing.labels.values())
    return "memory" if count * 3 * size[0] * size[1] <= budget else "stream"


def _sample_stats(data: StreamSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of a fixed sample of train images, decoded as evaluation crops (what the
    networks see; the in-memory path measures every whole image). An
    image that fails to decode is left out here, and skipped and named when training meets
    it."""
    images = data.decoded("train", train=False)
    pick = np.sort(np.random.default_rng(0).permutation(len(images))[:STATS_SAMPLE])
    pixels = []
    for i in pick:
        try:
            pixels.append(images.load(i))
        except Exception:  # noqa: BLE001, S112 (Pillow raises many types for bad data)
            continue
    if not pixels:
        raise DataError(f"none of the sampled train images of '{data.data_dir}' can be decoded")
    return channel_stats(np.stack(pixels))


def describe(data: ImageSet | StreamSet) -> str:
    """How the set is held, for the start-up line: 'in memory, 180 MiB' or 'streamed at 224 px'."""
    if getattr(data, "streamed", False):
        return f"streamed at {data.image_size} px"
    return f"in memory, {size_text(data.train_images.nbytes + data.test_images.nbytes)}"
