"""VGG with BatchNorm (Simonyan & Zisserman 2015) for 32x32 inputs, one Linear head."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

# Five max-pools take 32x32 down to 1x1, so the head sees exactly 512 features.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """Conv3x3-BN-ReLU stacks separated by 2x2 max-pools, then a linear classifier."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v)]
            layers.append(nn.ReLU(inplace=True))
            cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model
def vgg16_bn(num_classes: int = 10) -> VGG:
    """VGG-16 with BatchNorm for CIFAR (14.7M parameters)."""
    return VGG(_VGG16, num_classes)
