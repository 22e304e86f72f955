"""torchvision ImageNet architectures under registry names, always randomly initialised.

``weights=None`` is forced: grafting starts from scratch and runs must never touch the network.
torchvision is imported on first use: importing its models costs every Ray worker and every
command about two seconds (it pulls in torch._dynamo), and CIFAR runs never need it.
"""

from __future__ import annotations

from torch import nn

from .registry import register_model


def _build(builder: str, num_classes: int, kwargs: dict) -> nn.Module:
    if kwargs.get("weights") is not None:
        raise ValueError("pretrained weights are not supported; drop the 'weights' argument")
    kwargs.pop("weights", None)
    from torchvision import models

    return getattr(models, builder)(weights=None, num_classes=num_classes, **kwargs)


@register_model(name="resnet18")
def tv_resnet18(num_classes: int = 10, **kwargs) -> nn.Module:
    """torchvision ResNet-18 (ImageNet layout)."""
    return _build("resnet18", num_classes, kwargs)


@register_model(name="resnet34")
def tv_resnet34(num_classes: int = 10, **kwargs) -> nn.Module:
    """torchvision ResNet-34 (ImageNet layout)."""
    return _build("resnet34", num_classes, kwargs)


@register_model(name="resnet50")
def tv_resnet50(num_classes: int = 10, **kwargs) -> nn.Module:
    """torchvision ResNet-50 (ImageNet layout)."""
    return _build("resnet50", num_classes, kwargs)


@register_model(name="mobilenet_v2_imagenet")
def tv_mobilenet_v2(num_classes: int = 10, **kwargs) -> nn.Module:
    """torchvision MobileNetV2 (ImageNet layout; see ``mobilenetv2`` for 32x32 inputs)."""
    return _build("mobilenet_v2", num_classes, kwargs)
