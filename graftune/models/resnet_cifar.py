"""CIFAR ResNets (He et al. 2016, section 4.2): depth 6n+2, 16/32/64 channels.

Shortcuts are option A (subsample + zero-pad channels), so the shortcut has no parameters
and every BatchNorm reads a conv output directly, which graft-unit discovery relies on.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

Activation = Callable[[], nn.Module]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the following BatchNorm's shift makes it redundant.
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an option-A identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, activation: Activation) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = activation()
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = activation()
        # Plain Python ints fixed at build time keep forward free of control flow for fx.
        self.stride = stride
        extra = cout - cin
        self.pad = (0, 0, 0, 0, extra // 2, extra - extra // 2)
        self.downsample = stride != 1 or extra != 0

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self.downsample:
            return x
        return F.pad(x[:, :, :: self.stride, :: self.stride], self.pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs."""

    def __init__(self, n: int, num_classes: int = 10, activation: Activation = nn.ReLU) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = activation()
        self.layer1 = self._stage(16, 16, n, 1, activation)
        self.layer2 = self._stage(16, 32, n, 2, activation)
        self.layer3 = self._stage(32, 64, n, 2, activation)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(cin: int, cout: int, n: int, stride: int, activation: Activation) -> nn.Sequential:
        blocks = [BasicBlock(cin, cout, stride, activation)]
        blocks += [BasicBlock(cout, cout, 1, activation) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


_leaky: Activation = partial(nn.LeakyReLU, 0.1)


@register_model
def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (0.27M parameters)."""
    return CifarResNet(3, num_classes)


@register_model
def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 (0.46M parameters)."""
    return CifarResNet(5, num_classes)


@register_model
def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (0.85M parameters)."""
    return CifarResNet(9, num_classes)


@register_model
def resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 (1.7M parameters)."""
    return CifarResNet(18, num_classes)


@register_model
def resnet20_leaky(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 with LeakyReLU(0.1)."""
    return CifarResNet(3, num_classes, activation=_leaky)


@register_model
def resnet32_leaky(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 with LeakyReLU(0.1)."""
    return CifarResNet(5, num_classes, activation=_leaky)


@register_model
def resnet56_leaky(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 with LeakyReLU(0.1)."""
    return CifarResNet(9, num_classes, activation=_leaky)


@register_model
def resnet110_leaky(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 with LeakyReLU(0.1)."""
    return CifarResNet(18, num_classes, activation=_leaky)
