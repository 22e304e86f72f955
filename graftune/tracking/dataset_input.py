"""The data set as an MLflow run's input: what was trained and tested on, and a digest of it.

Each split is one MLflow dataset (context ``training`` or ``evaluation``) named after
``--dataset``, with the digest of its uint8 images, labels and class names. The digest
changes with any image, label or subset, so two runs with the same digest saw the same data;
MLflow lists the runs of each (name, digest) pair.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from mlflow.data.schema import TensorDatasetSchema
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.types import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from graftune.config import DataConfig
from graftune.data import ImageSet, StreamSet
from graftune.data.datasets import folder_copy

TORCHVISION = {
    "cifar10": "torchvision.datasets.CIFAR10",
    "cifar100": "torchvision.datasets.CIFAR100",
}


def split_digest(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> str:
    """16 hex digits of BLAKE2b over the images, labels and class names (~0.3 s for CIFAR's
    150 MB): cheap next to training, and exact, unlike hashing a sample of the images."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(json.dumps([images.shape, str(images.dtype), classes]).encode())
    for array in (images, labels):
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


def data_source(cfg: DataConfig) -> tuple[str, str]:
    """MLflow's source type and source (a JSON object with a ``uri``) of the data set."""
    if cfg.dataset == "synthetic":
        uri = f"graftune synthetic: {cfg.synthetic_size} images, {cfg.synthetic_classes} classes"
        return "code", json.dumps({"uri": uri})
    root = Path(cfg.data_dir).expanduser().resolve()
    if cfg.dataset in TORCHVISION and not folder_copy(cfg):
        return "torchvision", json.dumps({"uri": TORCHVISION[cfg.dataset], "root": str(root)})
    return "local", json.dumps({"uri": str(root)})


def dataset_inputs(cfg: DataConfig, data: ImageSet | StreamSet) -> list[DatasetInput]:
    """The train and test splits as MLflow dataset inputs, with their sizes as profile."""
    source_type, source = data_source(cfg)
    if data.streamed:
        return streamed_inputs(cfg, data, source_type, source)
    splits = [
        ("training", data.train_images, data.train_labels, cfg.subset),
        ("evaluation", data.test_images, data.test_labels, cfg.test_subset),
    ]
    return [
        split_input(
            cfg,
            (source_type, source),
            context,
            split_digest(images, labels, data.classes),
            (images.dtype, list(images.shape[1:])),
            labels,
            data.num_classes,
            {"subset": subset or "all"},
        )
        for context, images, labels, subset in splits
    ]


def streamed_inputs(
    cfg: DataConfig, data: StreamSet, source_type: str, source: str
) -> list[DatasetInput]:
    """A streamed set's splits: the digest is of the listing (every file's name, label and
    size), which is what a streamed run reads; its pixels are never all in memory to hash."""
    images = (np.dtype(np.uint8), [3, data.image_size, data.image_size])
    return [
        split_input(
            cfg,
            (source_type, source),
            context,
            data.digest(split),
            images,
            labels,
            data.num_classes,
            {"subset": subset or "all", "mode": "streamed"},
        )
        for context, split, labels, subset in [
            ("training", "train", data.train_labels, cfg.subset),
            ("evaluation", "test", data.test_labels, cfg.test_subset),
        ]
    ]


def split_input(
    cfg: DataConfig,
    source: tuple[str, str],
    context: str,
    digest: str,
    images: tuple[np.dtype, list[int]],
    labels: np.ndarray,
    classes: int,
    extra: dict,
) -> DatasetInput:
    """One split as an MLflow dataset input: its tensor schema, and its size as profile.

    Args:
        source: MLflow's source type and source (:func:`data_source`).
        images: the images' dtype and the shape of one image.
        extra: profile entries beyond the size (the subset, how the set is held).
    """
    dtype, shape = images
    schema = TensorDatasetSchema(
        features=Schema([TensorSpec(dtype, (-1, *shape), "images")]),
        targets=Schema([TensorSpec(labels.dtype, (-1,), "labels")]),
    )
    profile = {"images": len(labels), "classes": classes, "image_shape": shape, **extra}
    dataset = Dataset(
        name=cfg.dataset,
        digest=digest,
        source_type=source[0],
        source=source[1],
        schema=json.dumps(schema.to_dict()),
        profile=json.dumps(profile),
    )
    return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])
