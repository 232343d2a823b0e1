"""Datasets held as in-memory tensors, and a loader that augments on tensors.

Images are float32 (N, C, H, W) normalised per channel; labels int64 (N,). No torchvision needed:
Fashion-MNIST IDX files, CIFAR python pickles (through a restricted unpickler) and image folders (Pillow)
are read by the code below.
"""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from epiprune.errors import EpipruneError
from epiprune.io.preprocessing import CIFAR10_CLASSES, FASHION_MNIST_CLASSES
from epiprune.run.text import TextDataset, load_text

BUILTIN_FILE = "fashion_mnist_subset.npz"
DATASETS = ("builtin", "fashion-mnist", "cifar10", "cifar100", "imagefolder", "text")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataError(EpipruneError):
    """Bad dataset name or unreadable dataset folder; the message is one line for the user."""


@dataclass
class Dataset:
    """Train and validation splits as uint8 image arrays (N, H, W, C) and int64 labels (N,)."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    num_classes: int
    class_names: list[str] | None = None  # None: "0", "1", ...

    @property
    def labels(self) -> list[str]:
        """Class names in label order (the class indices as text where the dataset names none)."""
        if self.class_names is not None and len(self.class_names) == self.num_classes:
            return list(self.class_names)
        return [str(i) for i in range(self.num_classes)]

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[-1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_images.shape[1]), int(self.train_images.shape[2])

    def hold_out(self, count: int, seed: int = 0) -> tuple[Dataset, tuple[np.ndarray, np.ndarray]]:
        """Split `count` random training images off as the validation split; the old validation split becomes
        the test split, returned as (images, labels) beside the new dataset. Raises DataError if too few."""
        if not 0 < count < len(self.train_labels):
            raise DataError(f"--holdout {count} does not fit {len(self.train_labels)} training images (accepted: "
                            f"1..{len(self.train_labels) - 1})")
        order = np.random.default_rng(seed).permutation(len(self.train_labels))
        held, rest = np.sort(order[:count]), np.sort(order[count:])
        split = Dataset(self.name, self.train_images[rest], self.train_labels[rest], self.train_images[held],
                        self.train_labels[held], self.num_classes, self.class_names)
        return split, (self.val_images, self.val_labels)

    def subset(self, train: int | None, val: int | None, seed: int = 0) -> Dataset:
        """A random subset with at most `train` and `val` samples (None keeps all)."""
        rng = np.random.default_rng(seed)

        def pick(images: np.ndarray, labels: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
            if n is None or n >= len(labels):
                return images, labels
            idx = np.sort(rng.permutation(len(labels))[:n])
            return images[idx], labels[idx]

        ti, tl = pick(self.train_images, self.train_labels, train)
        vi, vl = pick(self.val_images, self.val_labels, val)
        return Dataset(self.name, ti, tl, vi, vl, self.num_classes, self.class_names)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise DataError(f"not an IDX uint8 file: {path}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"truncated IDX file: {path}")
    return data.reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing {stem}[.gz] in {folder} (expected the Fashion-MNIST IDX files)")


def load_fashion_mnist(folder: Path) -> Dataset:
    """Full Fashion-MNIST from the original IDX files (gzipped or not): 60k train, 10k test, 28x28x1."""
    parts = [_read_idx(_find(folder, f"{split}-{kind}-idx{d}-ubyte"))
             for split in ("train", "t10k") for kind, d in (("images", 3), ("labels", 1))]
    train_images, train_labels, val_images, val_labels = parts
    return Dataset("fashion-mnist", train_images[..., None], train_labels.astype(np.int64),
                   val_images[..., None], val_labels.astype(np.int64), 10, list(FASHION_MNIST_CLASSES))


def load_builtin() -> Dataset:
    """The Fashion-MNIST subset shipped in the package (made by scripts/make_builtin_dataset.py)."""
    blob = resources.files("epiprune").joinpath("assets", BUILTIN_FILE).read_bytes()
    with np.load(io.BytesIO(blob)) as z:
        return Dataset("builtin", z["train_images"][..., None], z["train_labels"].astype(np.int64),
                       z["val_images"][..., None], z["val_labels"].astype(np.int64), 10, list(FASHION_MNIST_CLASSES))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's python format is a pickle: allow only what rebuilds numpy arrays, nothing that runs code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "bytes")}

    def find_class(self, module: str, name: str) -> object:  # pickle's protocol: a class or function
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch[label_key.encode()], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
        raise DataError(f"unreadable CIFAR batch {path}: {e}") from None
    return np.ascontiguousarray(data), labels


def load_cifar(folder: Path, num_classes: int) -> Dataset:
    """CIFAR-10/100 in the python pickle format (the extracted cifar-10-batches-py / cifar-100-python folder)."""
    if num_classes == 10:
        sub = folder / "cifar-10-batches-py"
        folder = sub if sub.is_dir() else folder
        train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        test_file, key = folder / "test_batch", "labels"
    else:
        sub = folder / "cifar-100-python"
        folder = sub if sub.is_dir() else folder
        train_files, test_file, key = [folder / "train"], folder / "test", "fine_labels"
    missing = [p.name for p in [*train_files, test_file] if not p.is_file()]
    if missing:
        raise DataError(f"missing CIFAR-{num_classes} files in {folder}: {', '.join(missing)}")
    train = [_load_cifar_batch(p, key) for p in train_files]
    val_images, val_labels = _load_cifar_batch(test_file, key)
    return Dataset(f"cifar{num_classes}", np.concatenate([t[0] for t in train]),
                   np.concatenate([t[1] for t in train]), val_images, val_labels, num_classes,
                   _cifar_class_names(folder, num_classes))


def _cifar_class_names(folder: Path, num_classes: int) -> list[str] | None:
    """CIFAR-10's names are fixed; CIFAR-100's come from its `meta` file (None if it is missing or unreadable)."""
    if num_classes == 10:
        return list(CIFAR10_CLASSES)
    try:
        with open(folder / "meta", "rb") as f:
            names = _NumpyOnlyUnpickler(f, encoding="bytes").load()[b"fine_label_names"]
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except (OSError, pickle.UnpicklingError, KeyError, TypeError, EOFError, AttributeError):
        return None


def _load_image_dir(root: Path, classes: list[str], size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    mode = "L" if channels == 1 else "RGB"
    for label, cls in enumerate(classes):
        cls_dir = root / cls
        if not cls_dir.is_dir():
            continue
        for path in sorted(cls_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as im:
                    im = im.convert(mode).resize((size, size), Image.BILINEAR)
                    images.append(np.asarray(im, dtype=np.uint8).reshape(size, size, channels))
            except OSError as e:
                raise DataError(f"unreadable image {path}: {e}") from None
            labels.append(label)
    if not images:
        return np.zeros((0, size, size, channels), np.uint8), np.zeros((0,), np.int64)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def load_image_folder(folder: Path, image_size: int = 32, channels: int = 3, val_fraction: float = 0.1,
                      seed: int = 0) -> Dataset:
    """ImageNet-style folder: `train/<class>/*.png` and `val/<class>/*.png`, or `<class>/*.png` (then a
    `val_fraction` of it is held out). Images are resized to image_size x image_size and held in memory."""
    has_splits = (folder / "train").is_dir()
    train_root = folder / "train" if has_splits else folder
    classes = sorted(p.name for p in train_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"no class folders in {train_root} (expected <class>/<image> files)")
    images, labels = _load_image_dir(train_root, classes, image_size, channels)
    if len(labels) == 0:
        raise DataError(f"no images in {train_root} (accepted suffixes: {', '.join(IMAGE_SUFFIXES)})")
    if has_splits and (folder / "val").is_dir():
        val_images, val_labels = _load_image_dir(folder / "val", classes, image_size, channels)
    else:
        order = np.random.default_rng(seed).permutation(len(labels))
        n_val = max(1, int(round(val_fraction * len(labels))))
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        val_images, val_labels = images[val_idx], labels[val_idx]
        images, labels = images[train_idx], labels[train_idx]
    if len(val_labels) == 0 or len(labels) == 0:
        raise DataError(f"too few images in {folder} to make both a train and a validation split")
    return Dataset("imagefolder", images, labels, val_images, val_labels, len(classes), classes)


def load_dataset(name: str, folder: str | Path | None = None, image_size: int = 32, channels: int = 3,
                 seq_len: int = 128) -> Dataset | TextDataset:
    """Load a dataset by name (see DATASETS). `folder` is required except for builtin and text (its built-in corpus
    without a folder; see run/text.py), and for fashion-mnist when Debian's dataset-fashion-mnist package is
    installed. seq_len: bytes per text sample."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (accepted: {', '.join(DATASETS)})")
    if name == "builtin":
        return load_builtin()
    if name == "text":
        return load_text(folder, seq_len)
    if folder is None:
        if name == "fashion-mnist" and FASHION_MNIST_SYSTEM_DIR.is_dir():
            folder = FASHION_MNIST_SYSTEM_DIR
        else:
            raise DataError(f"dataset {name!r} needs --data-dir (a folder with its files)")
    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"data folder not found: {path} (give an existing folder with --data-dir)")
    if name == "fashion-mnist":
        return load_fashion_mnist(path)
    if name in ("cifar10", "cifar100"):
        return load_cifar(path, 10 if name == "cifar10" else 100)
    return load_image_folder(path, image_size=image_size, channels=channels)


class TensorLoader:
    """Shuffling mini-batch iterator over in-memory tensors with random-crop (zero padding) and optional
    horizontal flip, done on whole batches. Yields (images float32 (B, C, H, W), labels int64 (B,))."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, train: bool,
                 seed: int = 0, pad: int = 2, flip: bool = True, drop_last: bool = False, rank: int = 0,
                 world: int = 1) -> None:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        self.mean = x.mean(dim=(0, 2, 3), keepdim=True)
        self.std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
        self.images = (x - self.mean) / self.std
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.batch_size, self.train, self.pad, self.flip = batch_size, train, pad, flip
        # with several ranks each global batch is split into `world` shards; a final batch too small to give
        # every rank a sample is dropped
        self.rank, self.world = rank, world
        self.drop_last = drop_last or (train and world > 1 and len(self.labels) % batch_size < world)
        self.order_generator = torch.Generator().manual_seed(seed)  # identical on every rank
        self.generator = torch.Generator().manual_seed(seed + 7919 * rank)  # augmentation, per rank

    def rng_state(self) -> list[torch.Tensor]:
        return [self.order_generator.get_state(), self.generator.get_state()]

    def set_rng_state(self, state: list[torch.Tensor]) -> None:
        self.order_generator.set_state(state[0])
        self.generator.set_state(state[1])

    def normalise_like(self, other: TensorLoader) -> None:
        """Use another loader's (the training set's) mean and std, so validation sees the same scaling."""
        raw = self.images * self.std + self.mean
        self.mean, self.std = other.mean, other.std
        self.images = (raw - self.mean) / self.std

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.pad > 0:
            padded = torch.nn.functional.pad(x, (self.pad,) * 4)
            dy = torch.randint(0, 2 * self.pad + 1, (b,), generator=self.generator)
            dx = torch.randint(0, 2 * self.pad + 1, (b,), generator=self.generator)
            rows = (dy[:, None] + torch.arange(h)[None, :])  # (B, H)
            cols = (dx[:, None] + torch.arange(w)[None, :])  # (B, W)
            x = padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                       rows[:, None, :, None], cols[:, None, None, :]]
        if self.flip:
            mask = torch.rand(b, generator=self.generator) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch `start` on: the order is drawn for the whole epoch, the first `start`
        batches are skipped without drawing their augmentation (a run resumed inside an epoch restores the
        augmentation generator's state of that point)."""
        n = len(self.labels)
        order = torch.randperm(n, generator=self.order_generator) if self.train else torch.arange(n)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            if self.world > 1:
                idx = idx.tensor_split(self.world)[self.rank]
            x = self.images[idx]
            yield (self._augment(x) if self.train else x), self.labels[idx]
