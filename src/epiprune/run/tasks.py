"""What a run learns, as registered objects (TASKS): image classification (the CNNs' and vit_tiny's) and next-byte
prediction (lm_tiny's). A task owns what differs between them in the loop: the loaders, the example input the
policy counts FLOPs on, the loss, the accuracy's count, and the extra metrics of an epoch row and of the summary.
The dataset names its task (`Dataset.task`); the loop asks TASKS for it.

Units: losses are natural-log cross-entropies per sample (image) or per byte (text); bits per byte = loss / ln 2,
perplexity (per byte) = exp(loss)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from epiprune.registry import Registry
from epiprune.run.data import TensorLoader
from epiprune.run.text import TokenLoader


def logits_of(output: Any) -> torch.Tensor:
    """A network's logits: the tensor itself, or a Hugging Face output's `.logits`. No labels are passed to the
    network, so an output's `.loss` is never computed: the task's loss() is the run's loss."""
    return getattr(output, "logits", output)


class ImageTask:
    """Classification of images (N, C, H, W) into num_classes: logits (N, classes), labels (N,)."""

    name = "image"

    def loaders(self, dataset: Any, batch_size: int, seed: int, rank: int, world: int,
                test_split: tuple | None) -> tuple[TensorLoader, TensorLoader, TensorLoader | None]:
        """(train, validation, test or None) loaders; validation and test standardised with the training stats."""
        train = TensorLoader(dataset.train_images, dataset.train_labels, batch_size, train=True, seed=seed,
                             rank=rank, world=world)
        val = TensorLoader(dataset.val_images, dataset.val_labels, 512, train=False, rank=rank, world=world)
        val.normalise_like(train)
        test = None
        if test_split is not None:  # evaluated once, at the end: nothing is chosen on it
            test = TensorLoader(*test_split, 512, train=False, rank=rank, world=world)
            test.normalise_like(train)
        return train, val, test

    def example(self, dataset: Any, device: torch.device) -> torch.Tensor:
        h, w = dataset.image_size
        return torch.zeros(1, dataset.in_channels, h, w, device=device)

    def describe(self, dataset: Any) -> str:
        h, w = dataset.image_size
        return f"{len(dataset.train_labels)} train / {len(dataset.val_labels)} val, {dataset.in_channels}x{h}x{w}"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return nn.functional.cross_entropy(logits, labels, reduction=reduction)

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Right predictions in the batch (a 0-d integer tensor)."""
        return (logits.argmax(1) == labels).sum()

    def units(self, labels: torch.Tensor) -> int:
        """Predictions per batch: one per image."""
        return len(labels)

    def units_per_sample(self, dataset: Any) -> int:
        return 1

    def input_size(self, dataset: Any) -> tuple[int, int] | None:
        """(H, W) a network is built for and a user network is checked on."""
        return dataset.image_size

    def row_metrics(self, train_loss: float, val_loss: float) -> dict[str, float]:
        """Extra fields of an epoch row (none: the golden run's rows stay as they were)."""
        return {}

    def summary_metrics(self, metrics: list[dict]) -> dict[str, float]:
        """Extra fields of summary.json (none for images)."""
        return {}

    def test_metrics(self, test_loss: float, test_top1: float) -> dict[str, float]:
        """The last epoch row's fields of the test split (--holdout; evaluated once, nothing is chosen on it)."""
        return {"test_top1": test_top1}

    def test_summary(self, last_row: dict) -> dict[str, float]:
        """summary.json's fields of the test split, from the last epoch row (--holdout)."""
        return {"final_test_top1": last_row["test_top1"]}

    def describe_epoch(self, val_loss: float, val_top1: float) -> str:
        return f"val top-1 {100 * val_top1:5.2f}%"


class TextTask(ImageTask):
    """Next-byte prediction: inputs (N, T) int64 bytes, logits (N, T, 256), targets (N, T); a unit is a byte."""

    name = "text"

    def loaders(self, dataset: Any, batch_size: int, seed: int, rank: int, world: int,
                test_split: tuple | None) -> tuple[TokenLoader, TokenLoader, TokenLoader | None]:
        """(train, validation, test or None) loaders; test_split is (windows,) with --holdout (run/text.py)."""
        train = TokenLoader(dataset.train_windows, batch_size, train=True, seed=seed, rank=rank, world=world)
        val = TokenLoader(dataset.val_windows, 64, train=False, rank=rank, world=world)
        test = None if test_split is None else TokenLoader(test_split[0], 64, train=False, rank=rank, world=world)
        return train, val, test

    def example(self, dataset: Any, device: torch.device) -> torch.Tensor:
        return torch.zeros(1, dataset.seq_len, dtype=torch.long, device=device)

    def describe(self, dataset: Any) -> str:
        return dataset.describe()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return nn.functional.cross_entropy(logits.flatten(0, -2).float(), labels.reshape(-1), reduction=reduction)

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(-1) == labels).sum()

    def units(self, labels: torch.Tensor) -> int:
        return labels.numel()

    def units_per_sample(self, dataset: Any) -> int:
        return dataset.seq_len

    def input_size(self, dataset: Any) -> None:
        return None  # token ids: no image size

    def row_metrics(self, train_loss: float, val_loss: float) -> dict[str, float]:
        """Losses per byte (nats), bits per byte (loss / ln 2) and perplexity per byte (exp loss)."""
        return {"val_loss": val_loss, "train_bits_per_byte": bits_per_byte(train_loss),
                "val_bits_per_byte": bits_per_byte(val_loss), "val_perplexity": math.exp(min(val_loss, 700.0))}

    def summary_metrics(self, metrics: list[dict]) -> dict[str, float]:
        return {"final_val_bits_per_byte": metrics[-1]["val_bits_per_byte"],
                "best_val_bits_per_byte": min(m["val_bits_per_byte"] for m in metrics),
                "final_val_perplexity": metrics[-1]["val_perplexity"]}

    def test_metrics(self, test_loss: float, test_top1: float) -> dict[str, float]:
        """Top-1 per byte, loss per byte (nats), bits per byte and perplexity per byte of the test split."""
        return {"test_top1": test_top1, "test_loss": test_loss, "test_bits_per_byte": bits_per_byte(test_loss),
                "test_perplexity": math.exp(min(test_loss, 700.0))}

    def test_summary(self, last_row: dict) -> dict[str, float]:
        return {"final_test_top1": last_row["test_top1"], "final_test_bits_per_byte": last_row["test_bits_per_byte"],
                "final_test_perplexity": last_row["test_perplexity"]}

    def describe_epoch(self, val_loss: float, val_top1: float) -> str:
        return f"val {bits_per_byte(val_loss):.3f} bits/byte (ppl {math.exp(min(val_loss, 700.0)):.2f})"


def bits_per_byte(loss: float) -> float:
    """Bits per byte of a mean natural-log cross-entropy per byte: loss / ln 2."""
    return loss / math.log(2)


TASKS: Registry[ImageTask] = Registry("task")
TASKS.register("image", ImageTask())
TASKS.register("text", TextTask())


def task_of(dataset: Any) -> ImageTask:
    """The registered task of a dataset (its `task` attribute; image datasets have none: "image")."""
    return TASKS.get(getattr(dataset, "task", "image"))
