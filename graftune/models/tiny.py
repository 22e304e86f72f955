"""A very small CNN for smoke runs and tests: a population of it trains in seconds on a CPU."""

from __future__ import annotations

from torch import nn

from .registry import register_model


@register_model
def tiny_cnn(num_classes: int = 10, width: int = 8) -> nn.Module:
    """Two conv/BN/ReLU layers (the second with stride 2), global pooling and a linear head."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
