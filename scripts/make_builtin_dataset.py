"""Make the built-in dataset: a class-balanced random subset of Fashion-MNIST, stored as a compressed .npz.

Usage: python scripts/make_builtin_dataset.py [FASHION_MNIST_DIR] [--train 10000] [--val 2000]
FASHION_MNIST_DIR holds the original IDX .gz files (default: ../shared/data/fashion-mnist).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from epiprune.run.data import BUILTIN_FILE, load_fashion_mnist  # noqa: E402


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    classes = np.unique(labels)
    per_class = n // len(classes)
    idx = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
    return np.sort(np.concatenate(idx))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(ROOT.parent / "shared" / "data" / "fashion-mnist"))
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--val", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    full = load_fashion_mnist(Path(args.folder))
    rng = np.random.default_rng(args.seed)
    ti = balanced_subset(full.train_labels, args.train, rng)
    vi = balanced_subset(full.val_labels, args.val, rng)
    out = ROOT / "src" / "epiprune" / "assets" / BUILTIN_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, train_images=full.train_images[ti, :, :, 0],
                        train_labels=full.train_labels[ti].astype(np.uint8),
                        val_images=full.val_images[vi, :, :, 0], val_labels=full.val_labels[vi].astype(np.uint8))
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {len(ti)} train, {len(vi)} val images")


if __name__ == "__main__":
    main()
