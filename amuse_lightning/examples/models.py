"""CIFAR-style ResNets: a 3x3 stem without max-pool, four stages of basic blocks.

``resnet18_cifar()`` is the usual CIFAR ResNet-18 (width 64, blocks ``(2, 2, 2, 2)``, 11.2M
parameters for 10 classes). ``width`` and ``num_blocks`` shrink it for CPU runs, e.g.
``CifarResNet(width=16, num_blocks=(1, 1, 1, 1))`` has 308,826 parameters for 3 input channels
and 10 classes (308,538 for 1 channel, the Fashion-MNIST demo); ``tests/test_cli_configs.py``
counts them.

Module names follow torchvision (``conv1``, ``bn1``, ``layer1`` .. ``layer4``, ``fc``) so that the
default AMUSE partition recognises the stem conv and the classifier head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "resnet18_cifar"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: ``conv3x3 -> BN -> ReLU -> 4 stages -> global avg pool -> fc``.

    Stage ``i`` has ``width * 2**i`` channels and ``num_blocks[i]`` basic blocks; stages 2-4 halve
    the resolution with a stride-2 first block.

    Args:
        num_classes: outputs of the ``fc`` head.
        in_channels: image channels (3 for CIFAR, 1 for Fashion-MNIST).
        width: channels of the stem and the first stage (64 in the standard ResNet-18).
        num_blocks: basic blocks per stage, four entries (``(2, 2, 2, 2)`` is ResNet-18).
        zero_init_residual: start each block's last BN at zero, so every block is the identity.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        num_blocks = tuple(num_blocks)
        if len(num_blocks) != 4 or min(num_blocks) < 1:
            raise ValueError(
                f"num_blocks must be four positive ints (blocks per stage), got {num_blocks}; "
                "ResNet-18 is (2, 2, 2, 2)"
            )
        if width < 1 or in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"width, in_channels and num_classes must be >= 1, got {width}, {in_channels}, "
                f"{num_classes}"
            )
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        stages = []
        for i, blocks in enumerate(num_blocks):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the head, shape ``(batch, width * 8)``."""
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> CifarResNet:
    """The CIFAR ResNet-18 (blocks ``(2, 2, 2, 2)``); ``width=64`` is the standard model."""
    return CifarResNet(num_classes, in_channels, width, (2, 2, 2, 2))
