"""VGG-11 with batch norm, CIFAR style (one linear classifier after global pooling)."""

from __future__ import annotations

import torch
from torch import nn

VGG11_CONFIG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)


class VGG(nn.Module):
    """Input (N, in_channels, H, W) with H, W >= 16; output logits (N, num_classes)."""

    def __init__(self, config: tuple[int | str, ...], in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, 1, 1, bias=False), nn.BatchNorm2d(int(item)),
                           nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg11_bn(in_channels: int = 3, num_classes: int = 10) -> VGG:
    return VGG(VGG11_CONFIG, in_channels, num_classes)
