"""A CIFAR-style ResNeXt (Xie et al. 2017, section 5.3) small enough to train on a CPU: `resnext20_4x8d`.

Three stages of two bottleneck blocks (1x1 conv -> grouped 3x3 conv of `cardinality` groups -> 1x1 conv, each
followed by BN), 9n+2 = 20 layers. The bottleneck width doubles per stage (cardinality x base width: 32, 64,
128) and each stage outputs twice its bottleneck width (64, 128, 256). Shortcuts that change shape are 1x1
conv + BN, so every residual add is a plain tensor add. As torch-pruning counts them: 39 MFLOPs per 28x28 sample
(ResNet-20: 31), 51 per 32x32 sample, 0.30 M parameters (ResNet-20: 0.27).
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """(N, in_planes, H, W) -> (N, 2 * width, H / stride, W / stride); the 3x3 conv has `cardinality` groups."""

    def __init__(self, in_planes: int, width: int, cardinality: int, stride: int) -> None:
        super().__init__()
        out_planes = 2 * width
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNeXt(nn.Module):
    """Input (N, in_channels, H, W) with H, W >= 8; output logits (N, num_classes).

    depth: 9n+2 (n bottleneck blocks per stage); cardinality: groups of every 3x3 conv; base_width: channels per
    group in the first stage (doubling per stage); stem: channels of the first 3x3 conv."""

    def __init__(self, depth: int = 20, cardinality: int = 4, base_width: int = 8, in_channels: int = 3,
                 num_classes: int = 10, stem: int = 32) -> None:
        super().__init__()
        if (depth - 2) % 9 != 0:
            raise ValueError(f"ResNeXt depth must be 9n+2, got {depth}")
        n = (depth - 2) // 9
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks: list[nn.Module] = []
        in_planes = stem
        for stage in range(3):
            width = cardinality * base_width * 2**stage
            for i in range(n):
                blocks.append(Bottleneck(in_planes, width, cardinality, 2 if stage > 0 and i == 0 else 1))
                in_planes = 2 * width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.classifier(self.pool(self.layers(x)).flatten(1))


def resnext20_4x8d(in_channels: int = 3, num_classes: int = 10) -> CifarResNeXt:
    """ResNeXt-20 with cardinality 4 and 8 channels per group in the first stage (bottlenecks 32/64/128)."""
    return CifarResNeXt(20, 4, 8, in_channels, num_classes)
