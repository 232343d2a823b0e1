"""Factories for the bring-your-own-model tests (tests/test_user_model.py): good ones and each kind of bad one."""

import torch
from torch import nn

IMPORTED = True  # a module-level marker: tests check whether this module was imported


class Tiny(nn.Module):
    """conv-BN-ReLU x2 and a classifier: (N, in_channels, H, W) -> (N, num_classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def tiny(num_classes: int, in_channels: int, width: int = 4) -> Tiny:
    return Tiny(num_classes, in_channels, width)


def tiny_any(**kwargs: object) -> Tiny:
    """Takes everything through **kwargs: epiprune still passes num_classes and in_channels."""
    return Tiny(**kwargs)  # type: ignore[arg-type]


def tiny_fixed() -> Tiny:
    """Takes neither num_classes nor in_channels: builds a 3-channel, 10-class network."""
    return Tiny()


def five_classes(in_channels: int = 3) -> Tiny:
    """Ignores the data's classes: its output is (N, 5)."""
    return Tiny(5, in_channels)


def returns_dict() -> dict:
    return {"not": "a module"}


def raises(width: int = 4) -> Tiny:
    raise ValueError(f"width {width} is not supported")


class TupleOut(Tiny):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().forward(x)
        return out, out


def tuple_out(num_classes: int, in_channels: int) -> TupleOut:
    return TupleOut(num_classes, in_channels)


NOT_CALLABLE = 42
