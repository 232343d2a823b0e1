"""MobileNetV2 for small images (Sandler et al. 2018): inverted residuals with depthwise 3x3 convolutions.

Strides follow the common CIFAR adaptation (stem stride 1, first two down-samplings removed) so that 28x28
and 32x32 inputs keep useful spatial size.
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s)
CIFAR_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                  (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch)]


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*_conv_bn(in_ch, hidden, 1, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, out_ch, 1, 1)
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Input (N, in_channels, H, W) with H, W >= 8; output logits (N, num_classes)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width_mult: float = 1.0) -> None:
        super().__init__()
        stem = int(32 * width_mult)
        layers: list[nn.Module] = [*_conv_bn(in_channels, stem, 3, 1), nn.ReLU6(inplace=True)]
        channels = stem
        for t, c, n, s in CIFAR_SETTINGS:
            out = int(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        last = int(1280 * max(1.0, width_mult))
        layers += [*_conv_bn(channels, last, 1, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenetv2(in_channels: int = 3, num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(in_channels, num_classes)


def mobilenetv2_small(in_channels: int = 3, num_classes: int = 10) -> MobileNetV2:
    """Half width: the same topology at a CPU-friendly cost."""
    return MobileNetV2(in_channels, num_classes, width_mult=0.5)
