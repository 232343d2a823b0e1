"""What a trained model expects of its input, stored with it so that it can be used as it is.

Training standardises images per channel with the training set's mean and std (of pixel values scaled to
[0, 1]). That, the input size and channel count, and the class names are kept in the run's architecture.json
(key "preprocessing") and in every export, and `Normalise` puts the standardisation in front of the network,
so an exported model (and what `load_pruned` returns, a `RawInputModel`) takes raw images in [0, 1];
`image_to_tensor` reads an image file the way training read images.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
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
class Preprocessing(Mapping):
    """Per-channel mean and std (of [0, 1] pixels) to subtract and divide by, the input (C, H, W), class names.
    Read-only dict-like too: prep["mean"], dict(prep), list(prep) (the keys of to_dict)."""

    mean: list[float]
    std: list[float]
    in_channels: int
    input_size: list[int]
    class_names: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    def __getitem__(self, key: str) -> object:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def _keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))

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


class RawInputModel(nn.Module):
    """A trained network behind its recorded standardisation: call it on raw images, float (N, C, H, W) with
    values in [0, 1] (`image_to_tensor` makes them from files). `.network` is the bare network (it expects
    standardised inputs), `.preprocessing` the record; any other attribute is the network's (`model.layers`)."""

    def __init__(self, network: nn.Module, prep: Preprocessing) -> None:
        super().__init__()
        self.normalise = prep.normalise()
        self.network = network
        self.preprocessing = prep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(self.normalise(x))
        return getattr(out, "logits", out)  # a Hugging Face model's output: its logits

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            network = self.__dict__.get("_modules", {}).get("network")
            if network is None:
                raise
            return getattr(network, name)


class LogitsOnly(nn.Module):
    """A Hugging Face model returning its output's `.logits` tensor (what tracers and exporters need)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x).logits


def with_preprocessing(model: nn.Module, prep: Preprocessing | None) -> nn.Module:
    """`model` behind its standardisation (an nn.Sequential: [0] Normalise, [1] the network); the model itself when
    there is no record (runs made before it was stored: their inputs must be standardised by the caller)."""
    if hasattr(getattr(model, "config", None), "to_dict"):  # a Hugging Face model: its logits
        model = LogitsOnly(model)
    return model if prep is None else nn.Sequential(prep.normalise(), model).eval()


def image_to_tensor(image: str | Path | object, prep: Preprocessing) -> torch.Tensor:
    """An image (a file path, or a PIL image) as the (1, C, H, W) float tensor in [0, 1] that a model from
    `load_pruned` or an export takes: converted to grayscale or RGB and resized (bilinear) to the input size the
    way training read images. `prep` is the model's record (`load_preprocessing`, or `model.preprocessing`)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return _pixels(image, prep)
    path = Path(image)  # type: ignore[arg-type]
    if not path.is_file():
        raise EpipruneError(f"image not found: {path} (accepted: an existing image file)")
    try:
        with Image.open(path) as im:
            return _pixels(im, prep)
    except (OSError, UnidentifiedImageError) as e:
        raise EpipruneError(f"unreadable image {path}: {e} (accepted: png, jpg, bmp, gif, webp files)") from None


def _pixels(im: object, prep: Preprocessing) -> torch.Tensor:
    from PIL import Image

    h, w = prep.input_size
    im = im.convert("L" if prep.in_channels == 1 else "RGB").resize((w, h), Image.BILINEAR)  # type: ignore[attr-defined]
    pixels = np.asarray(im, dtype=np.float32).reshape(h, w, prep.in_channels) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()


read_image = image_to_tensor  # the name predict uses
