"""A small ConvNeXt (Liu et al. 2022) for 28x28 and 32x32 images: `convnext_mini`.

The ConvNeXt block as published: depthwise 7x7 conv, LayerNorm over channels in channels-last layout, a pointwise
MLP of two Linear layers (4x expansion, GELU), a learnable per-channel layer scale (initialised to 1e-6), and a
residual add. Sizes are ours, not a published variant: a 2x2 stride-2 patchify stem (not 4x4: small images would
shrink to 7x7 at once), three stages of 32, 64 and 128 channels with two blocks each, LayerNorm + 2x2 stride-2
conv between stages, global average pooling, LayerNorm, linear head. As torch-pruning counts them: 11 MFLOPs per
28x28 sample, 15 per 32x32 sample, 0.41 M parameters.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (N, C, H, W) tensor (ConvNeXt's channels-first LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """Multiply the last dimension by a learned per-channel scale `gamma` (shape (dim,), initialised to `init`)."""

    def __init__(self, dim: int, init: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class ConvNeXtBlock(nn.Module):
    """(N, dim, H, W) -> (N, dim, H, W): x + scale(mlp(norm(dwconv7x7(x)))), the MLP in channels-last layout."""

    def __init__(self, dim: int, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.scale = LayerScale(dim, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        y = self.scale(self.pwconv2(self.act(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """Input (N, in_channels, H, W) with H, W >= 8; output logits (N, num_classes).

    dims: channels per stage; depths: blocks per stage. The stem halves H and W, every later stage halves them
    again."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, dims: tuple[int, ...] = (32, 64, 128),
                 depths: tuple[int, ...] = (2, 2, 2), layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        if len(dims) != len(depths) or not dims:
            raise ValueError(f"dims {dims} and depths {depths} must have the same non-zero length")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dims[0], 2, stride=2), LayerNorm2d(dims[0], eps=1e-6))
        stages: list[nn.Module] = []
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, stride=2)]
            layers += [ConvNeXtBlock(dim, layer_scale_init) for _ in range(depth)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.classifier = nn.Linear(dims[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.classifier(self.norm(x))


def convnext_mini(in_channels: int = 3, num_classes: int = 10) -> ConvNeXt:
    """Three stages of 32/64/128 channels, two ConvNeXt blocks each (0.41 M parameters)."""
    return ConvNeXt(in_channels, num_classes)
