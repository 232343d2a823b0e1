"""Model registry: build a network by name. Every model takes 1- or 3-channel input."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .convnext import convnext_mini
from .mobilenetv2 import mobilenetv2, mobilenetv2_small
from .resnet import resnet20, resnet56
from .resnext import resnext20_4x8d
from .vgg import vgg11_bn

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "vgg11_bn": vgg11_bn,
    "mobilenetv2": mobilenetv2,
    "mobilenetv2_small": mobilenetv2_small,
    "resnext20_4x8d": resnext20_4x8d,
    "convnext_mini": convnext_mini,
}


def build_model(name: str, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Build a registered model. Raises ValueError naming the accepted names for an unknown one."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (accepted: {', '.join(MODELS)})")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    return MODELS[name](in_channels=in_channels, num_classes=num_classes)


__all__ = ["MODELS", "build_model"]
