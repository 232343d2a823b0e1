"""What a trained model expects of its input, stored with it so that it can be used as it is.

Training standardises images per channel with the training set's mean and std (of pixel values scaled to
[0, 1]). That, the input size and channel count, and the class names are kept in the run's architecture.json
(key "preprocessing") and in every export, and `Normalise` puts the standardisation in front of the network,
so an exported model (and `load_pruned(..., raw_inputs=True)`) takes raw images in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from epiprune.errors import EpipruneError

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
METADATA_KEY = "epiprune_preprocessing"  # name of the entry in export files' metadata


@dataclass
class Preprocessing:
    """Per-channel mean and std (of [0, 1] pixels) to subtract and divide by, the input (C, H, W), class names."""

    mean: list[float]
    std: list[float]
    in_channels: int
    input_size: list[int]
    class_names: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        """Read the dict written by to_dict; a malformed one is an EpipruneError."""
        try:
            prep = cls(mean=[float(v) for v in data["mean"]], std=[float(v) for v in data["std"]],
                       in_channels=int(data["in_channels"]), input_size=[int(v) for v in data["input_size"]],
                       class_names=[str(v) for v in data["class_names"]])
        except (KeyError, TypeError, ValueError) as e:
            raise EpipruneError(f"bad preprocessing record ({e}); expected keys mean, std, in_channels, input_size, "
                                "class_names") from None
        if not len(prep.mean) == len(prep.std) == prep.in_channels:
            raise EpipruneError(f"preprocessing has {len(prep.mean)} means and {len(prep.std)} stds for "
                                f"{prep.in_channels} channels")
        return prep

    def normalise(self) -> Normalise:
        """The standardisation as a module (put it in front of the network)."""
        return Normalise(self.mean, self.std)


def from_loader_stats(mean: torch.Tensor, std: torch.Tensor, input_size: Sequence[int],
                      class_names: Sequence[str]) -> Preprocessing:
    """A record from a TensorLoader's mean/std tensors (1, C, 1, 1)."""
    m, s = mean.flatten().tolist(), std.flatten().tolist()
    return Preprocessing(mean=m, std=s, in_channels=len(m), input_size=list(input_size),
                         class_names=list(class_names))


class Normalise(nn.Module):
    """(x - mean) / std per channel; x holds images with values in [0, 1], shape (N, C, H, W)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def with_preprocessing(model: nn.Module, prep: Preprocessing | None) -> nn.Module:
    """`model` behind its standardisation (an nn.Sequential: [0] Normalise, [1] the network); the model itself when
    there is no record (runs made before it was stored: their inputs must be standardised by the caller)."""
    return model if prep is None else nn.Sequential(prep.normalise(), model).eval()


def read_image(path: str | Path, prep: Preprocessing) -> torch.Tensor:
    """An image file as a (1, C, H, W) float tensor in [0, 1], converted and resized the way training read images
    (grayscale or RGB, bilinear to the input size)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise EpipruneError(f"image not found: {path} (accepted: an existing image file)")
    h, w = prep.input_size
    try:
        with Image.open(path) as im:
            im = im.convert("L" if prep.in_channels == 1 else "RGB").resize((w, h), Image.BILINEAR)
            pixels = np.asarray(im, dtype=np.float32).reshape(h, w, prep.in_channels) / 255.0
    except (OSError, UnidentifiedImageError) as e:
        raise EpipruneError(f"unreadable image {path}: {e} (accepted: png, jpg, bmp, gif, webp files)") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()
