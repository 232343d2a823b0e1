"""A zoo of tiny networks built from the blocks of modern CNNs (not in the model registry): what the test suite
checks epiprune against, block by block (tests/test_zoo.py), and what docs/MODELS.md is written from.

Every model takes (N, 3, 16, 16) images and returns (N, 5) logits; 8-16 channels per layer so that a policy, an
epoch and a prune take well under a second on one CPU thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

IN_CHANNELS, SIZE, CLASSES = 3, 16, 5


class GroupedNet(nn.Module):
    """ResNeXt-style bottleneck: 1x1 conv, a 3x3 conv with groups=4 (8 -> 16 channels, so 2 inputs and 4 outputs
    per group), a second grouped conv with groups=2, a 1x1 projection and a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(IN_CHANNELS, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.reduce = nn.Conv2d(8, 8, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.grouped2 = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.expand = nn.Conv2d(16, 8, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.reduce(x)))
        y = F.relu(self.bn2(self.grouped(y)))
        y = F.relu(self.grouped2(y))
        x = F.relu(x + self.bn3(self.expand(y)))
        return self.fc(x.mean(dim=(2, 3)))


class DepthwiseNet(nn.Module):
    """MobileNet-style: a depthwise 3x3 conv between two pointwise convs, with ReLU6 modules."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(IN_CHANNELS, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                       nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        return self.fc(self.pool(x).flatten(1))


class LayerScale(nn.Module):
    """Per-channel learnable scale of a channels-last tensor (N, H, W, C): gamma (C,), an nn.Parameter."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * x


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: depthwise 3x3, permute to channels-last, LayerNorm over channels, Linear C -> 2C, GELU,
    Linear 2C -> C, layer scale, permute back, residual add."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, 2 * channels)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * channels, channels)
        self.scale = LayerScale(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.scale(self.fc2(self.act(self.fc1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtNet(nn.Module):
    """A patchify stem (conv + channels-last LayerNorm), one ConvNeXt block, a pooled LayerNorm head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(IN_CHANNELS, 8, 2, stride=2)
        self.stem_norm = nn.LayerNorm(8)
        self.block = ConvNeXtBlock(8)
        self.head_norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_norm(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.block(x)
        return self.fc(self.head_norm(x.mean(dim=(2, 3))))


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: global pool, 1x1 conv C -> C/4, SiLU, 1x1 conv C/4 -> C, sigmoid, gate the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(self.act(self.reduce(self.pool(x)))))


class SENet(nn.Module):
    """EfficientNet-style: conv-BN-SiLU, conv-BN-Hardswish gated by squeeze-excitation, residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(IN_CHANNELS, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.SiLU()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.act2 = nn.Hardswish()
        self.se = SqueezeExcite(16)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = x + self.se(self.act2(self.bn2(self.conv2(x))))
        return self.fc(x.mean(dim=(2, 3)))


class ConcatNet(nn.Module):
    """Inception- and DenseNet-style concatenation: two branches concatenated into a 1x1 projection (each
    branch's channels are their own group), then a dense layer whose input is the concatenation of the block
    input and its own conv's output; a ReLU module and a pooling module after a concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(IN_CHANNELS, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.branch1 = nn.Conv2d(8, 8, 1, bias=False)
        self.branch3 = nn.Conv2d(8, 8, 3, padding=1)
        self.cat_act = nn.ReLU()
        self.project = nn.Conv2d(16, 12, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.dense = nn.Conv2d(12, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(20, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = self.cat_act(torch.cat([self.branch1(x), self.branch3(x)], dim=1))
        x = F.relu(self.bn1(self.project(x)))
        x = torch.cat([x, F.relu(self.dense(x))], dim=1)
        return self.fc(self.pool(x).flatten(1))


class ShuffleNet(nn.Module):
    """ShuffleNet unit: grouped 1x1 conv (groups=2), channel shuffle, grouped 1x1 conv (groups=2)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(IN_CHANNELS, 8, 3, padding=1, bias=False)
        self.gconv1 = nn.Conv2d(8, 8, 1, groups=2, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.gconv2 = nn.Conv2d(8, 8, 1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = F.relu(self.bn1(self.gconv1(x)))
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
        x = F.relu(x + self.bn2(self.gconv2(y)))
        return self.fc(x.mean(dim=(2, 3)))


class ActivationsNet(nn.Module):
    """GELU, SiLU and Hardswish, each once as a module and once as a function, between convs with biases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(IN_CHANNELS, 8, 3, padding=1)
        self.gelu = nn.GELU()
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.silu = nn.SiLU()
        self.conv3 = nn.Conv2d(12, 8, 3, padding=1)
        self.hardswish = nn.Hardswish()
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.gelu(self.conv1(x)))
        x = F.silu(self.silu(self.conv2(x)))
        x = F.hardswish(self.hardswish(self.conv3(x)))
        return self.fc(x.mean(dim=(2, 3)))


@dataclass(frozen=True)
class ZooEntry:
    """One block: the model that exercises it, and whether epiprune prunes it ('pruned') or refuses it at
    construction ('refused', with `refusal` a fragment of the one-line message, which names the layer)."""

    block: str
    build: Callable[[], nn.Module]
    expect: str
    why: str
    refusal: str = ""


ZOO: dict[str, ZooEntry] = {
    "grouped": ZooEntry("grouped convolution (1 < groups < channels)", GroupedNet, "pruned",
                        "every group of the convolution keeps the same number of channels, chosen per group by "
                        "importance"),
    "depthwise": ZooEntry("depthwise convolution", DepthwiseNet, "pruned",
                          "input and output channels are one group"),
    "convnext": ZooEntry("channels-last LayerNorm, nn.Linear on channels-last tensors, layer scale "
                         "(nn.Parameter), GELU", ConvNeXtNet, "pruned",
                         "torch-pruning follows the permutes; the scale is an unwrapped parameter of its group"),
    "se": ZooEntry("squeeze-excitation gating, SiLU, Hardswish", SENet, "pruned",
                   "the gate's expand conv is coupled with the channels it gates"),
    "concat": ZooEntry("channel concatenation (Inception / DenseNet)", ConcatNet, "pruned",
                       "each concatenated input is its own group; a layer fed by a concatenation is costed per "
                       "input group"),
    "shuffle": ZooEntry("channel shuffle", ShuffleNet, "refused",
                        "a shuffle interleaves the channels of the groups of grouped convolutions; "
                        "pruning them would need shuffle-consistent groups", refusal="channel shuffle"),
    "activations": ZooEntry("GELU / SiLU / Hardswish (modules and functions)", ActivationsNet, "pruned",
                            "elementwise: they follow the group of their input"),
}


def example_inputs() -> torch.Tensor:
    """One sample (1, 3, 16, 16), as the policy wants it."""
    return torch.zeros(1, IN_CHANNELS, SIZE, SIZE)


def outcome(name: str) -> tuple[str, str]:
    """What epiprune does with the zoo model now: ('pruned', '') if a policy (flops:0.5) builds on it, else
    ('refused', the one-line message)."""
    from epiprune.costs.budget import Budget
    from epiprune.errors import EpipruneError
    from epiprune.policy.early_pruning import EarlyPruningPolicy

    torch.manual_seed(0)
    try:
        EarlyPruningPolicy(ZOO[name].build(), example_inputs(), Budget(flops=0.5), prune_at=1, log=lambda _: None,
                           progress=False)
    except EpipruneError as e:
        return "refused", str(e)
    return "pruned", ""


TABLE_START, TABLE_END = "<!-- zoo table: written by `python -m tests.zoo` -->", "<!-- end of zoo table -->"


def models_table() -> str:
    """The block table of docs/MODELS.md, from what the zoo models do now (tests/test_zoo.py checks the doc
    holds exactly this, and that each model is pruned or refused as its entry expects)."""
    lines = [TABLE_START, "", "| zoo model | block | result | why |", "| --- | --- | --- | --- |"]
    for name, entry in ZOO.items():
        result, message = outcome(name)
        why = entry.why + (f": `{message}`" if message else "")
        lines.append(f"| {name} | {entry.block} | {result} | {why} |")
    return "\n".join([*lines, "", TABLE_END])


if __name__ == "__main__":  # python -m tests.zoo: rewrite the table in docs/MODELS.md
    from pathlib import Path

    doc = Path(__file__).parents[1] / "docs" / "MODELS.md"
    text = doc.read_text()
    start, end = text.index(TABLE_START), text.index(TABLE_END) + len(TABLE_END)
    doc.write_text(text[:start] + models_table() + text[end:])
    print(f"wrote {doc}")
