"""The final networks as MLflow models: uint8 images in, logits out, normalisation inside.

A user loads one with ``mlflow.pytorch.load_model("runs:/<run id>/net0")`` (or the
``models:/<model id>`` of the logged model, or ``models:/<name>/<version>`` once registered)
and feeds it images exactly as the data set holds them: uint8, N x C x H x W. The data set's
mean and std travel inside the model, so nobody has to know them to get the right answers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from torch import nn

from graftune.data import ImageSet, StreamSet
from graftune.data.batches import _normaliser
from graftune.models import create_model

EXAMPLE_IMAGES = 2  # the input example: one image would fix the exported batch size at 1
BEST_TAG = "graftune.best"  # on each logged model: "true" for the best network of its run


class ImageClassifier(nn.Module):
    """A trained network behind its input normalisation: uint8 images in, logits out."""

    def __init__(self, network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.network = network
        # The arithmetic of training's normalisation, so the logged model gives its answers.
        scale, shift = _normaliser(mean, std, torch.device("cpu"))
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.float() * self.scale + self.shift)


def image_classifier(
    model: str, weights: dict[str, Any], data: ImageSet | StreamSet
) -> ImageClassifier:
    """Registry model ``model`` with ``weights`` (a state dict), in eval mode, on the CPU."""
    network = create_model(model, num_classes=data.num_classes)
    network.load_state_dict({k: torch.as_tensor(v).cpu() for k, v in weights.items()})
    return ImageClassifier(network, data.mean, data.std).eval()


def signature(data: ImageSet | StreamSet) -> ModelSignature:
    """uint8 N x C x H x W in, float32 N x classes out; N free. A streamed set's networks
    take images as its evaluation sees them: resized and centre-cropped to --image-size."""
    shape = (-1, *input_example(data).shape[1:])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), shape, "images")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, data.num_classes), "logits")]),
    )


def input_example(data: ImageSet | StreamSet) -> np.ndarray:
    """A few test images (train images too where the test set is smaller)."""
    if data.streamed:
        return data.examples(EXAMPLE_IMAGES)
    images = [data.test_images[:EXAMPLE_IMAGES], data.train_images[:EXAMPLE_IMAGES]]
    return np.ascontiguousarray(np.concatenate(images)[:EXAMPLE_IMAGES])


def best_network(final: dict[str, Any]) -> int:
    """The network with the highest final test accuracy (the first of equals)."""
    return int(np.argmax([n["test_acc"] for n in final["networks"]]))


def log_networks(
    tracker,
    model: str,
    data: ImageSet | StreamSet,
    states: list[dict[str, Any]],
    final: dict[str, Any],
    params: dict[str, Any],
) -> list[str]:
    """Log network k as MLflow model ``net{k}`` of the tracker's run; returns the model ids.

    Each model gets the run's params, the tag :data:`BEST_TAG`, and its final metrics
    (``net{k}/...`` and ``population/...`` at the last round) linked to it.
    """
    best = best_network(final)
    example, model_signature = input_example(data), signature(data)
    population = [f"population/{name}" for name in final["population"]]
    ids = []
    for k, state in enumerate(states):
        network = [f"net{k}/{name}" for name in final["networks"][k]]
        ids.append(
            tracker.log_model(
                f"net{k}",
                image_classifier(model, state["model"], data),
                example,
                model_signature,
                step=final["round"],
                tags={BEST_TAG: str(k == best).lower()},
                params=params,
                metrics=network + population,
            )
        )
    return ids


def log_soup(
    tracker,
    model: str,
    data: ImageSet,
    soup: dict[str, Any],
    final: dict[str, Any],
    params: dict[str, Any],
) -> str:
    """Log the soup (a state dict) as MLflow model ``soup`` of the tracker's run, like the
    networks, with the population's final metrics (its own among them); returns its id."""
    return tracker.log_model(
        "soup",
        image_classifier(model, soup, data),
        input_example(data),
        signature(data),
        step=final["round"],
        tags={BEST_TAG: "false"},
        params=params,
        metrics=[f"population/{name}" for name in final["population"]],
    )
