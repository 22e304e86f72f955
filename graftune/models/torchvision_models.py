"""torchvision ImageNet architectures under registry names, always randomly initialised.

``weights=None`` is forced: grafting starts from scratch and runs must never touch the network.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from .registry import register_model


def _build(builder, num_classes: int, kwargs: dict) -> nn.Module:
    if kwargs.get("weights") is not None:
        raise ValueError("pretrained weights are not supported; drop the 'weights' argument")
    kwargs.pop("weights", None)
    return builder(weights=None, num_classes=num_classes, **kwargs)


@register_model(name="resnet18")
def tv_resnet18(num_classes: int = 10, **kwargs) -> nn.Module:
    """torchvision ResNet-18 (ImageNet layout)."""
    return _build(tvm.resnet18, num_classes, kwargs)


@register_model(name="resnet34")
def tv_resnet34(num_classes: int = 10, **kwargs) -> nn.Module:
    """torchvision ResNet-34 (ImageNet layout)."""
    return _build(tvm.resnet34, num_classes, kwargs)


@register_model(name="resnet50")
def tv_resnet50(num_classes: int = 10, **kwargs) -> nn.Module:
    """torchvision ResNet-50 (ImageNet layout)."""
    return _build(tvm.resnet50, num_classes, kwargs)


@register_model(name="mobilenet_v2_imagenet")
def tv_mobilenet_v2(num_classes: int = 10, **kwargs) -> nn.Module:
    """torchvision MobileNetV2 (ImageNet layout; see ``mobilenetv2`` for 32x32 inputs)."""
    return _build(tvm.mobilenet_v2, num_classes, kwargs)
