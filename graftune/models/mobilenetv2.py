"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

The usual CIFAR variant: the stem conv and the (t=6, c=24, n=2) group use stride 1 instead
of 2, so a 32x32 image ends at 4x4 rather than 1x1 before pooling.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

# (expansion t, output channels c, repeats n, first stride s); strides already CIFAR-adapted.
_CIFAR_CFG = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list:
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:  # with t=1 the expand conv would be an identity-sized 1x1
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, cout, 1)  # linear bottleneck: no activation
        self.block = nn.Sequential(*layers)
        # Fixed at build time, so fx sees a constant and traces one branch.
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 (width 1.0) for 32x32 inputs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 32, 3, stride=1), nn.ReLU6(inplace=True)]
        cin = 32
        for t, c, n, s in _CIFAR_CFG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [*_conv_bn(cin, 1280, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model
def mobilenetv2(num_classes: int = 10) -> MobileNetV2Cifar:
    """MobileNetV2 for CIFAR-sized inputs (2.2M parameters)."""
    return MobileNetV2Cifar(num_classes)
