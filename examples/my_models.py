"""my_models.py: a network of your own, for `epiprune train --model my_models:small_cnn`."""

import torch
from torch import nn


class SmallCNN(nn.Module):
    """A stem, two residual stages and a linear classifier: (N, in_channels, H, W) -> (N, num_classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                    nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(width))
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block1(x))
        x = self.down(x)
        x = x + self.block2(x)
        return self.head(x.mean(dim=(2, 3)))


def small_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> SmallCNN:
    """epiprune passes num_classes and in_channels (from the data); --model-kwargs sets the rest."""
    return SmallCNN(num_classes, in_channels, width)
