"""Shared helpers for tests: tiny networks and channel zeroing."""

import numpy as np
import torch
from torch import nn

from epiprune.surgery import PrunableGraph


class ConvBNNet(nn.Module):
    """conv-BN-ReLU x2 then a linear classifier: 2 channel groups (4 and 6 channels)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def random_keep(graph: PrunableGraph, fraction: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for g in graph.groups:
        keep = np.zeros(g.size, dtype=bool)
        keep[rng.permutation(g.size)[: max(1, int(round(fraction * g.size)))]] = True
        masks.append(keep)
    return masks


@torch.no_grad()
def zero_dropped_channels(graph: PrunableGraph, masks: list[np.ndarray]) -> None:
    """Make dropped channels contribute nothing: zero every output-channel slice of the group's layers
    (conv/linear weight rows and biases, BN scale and shift), so each dropped channel outputs exactly 0."""
    for g, keep in zip(graph.groups, masks, strict=True):
        drop = torch.as_tensor(np.flatnonzero(~keep))
        if len(drop) == 0:
            continue
        for m in g.out_modules:
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                m.weight[drop] = 0
                if m.bias is not None:
                    m.bias[drop] = 0


def registry_params(needs_core: dict[str, str]) -> list:
    """Every registry model name for pytest.mark.parametrize; those in `needs_core` (name: what is missing) are
    strict xfails until the pruning support of branch issue11-core (grouped convs, LayerNorm) is merged."""
    import pytest

    from epiprune.models import MODELS

    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=f"needs issue11-core: {needs_core[name]}"))
            if name in needs_core else name for name in sorted(MODELS)]
