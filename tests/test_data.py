import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from epiprune.run.data import DataError, TensorLoader, load_builtin, load_dataset


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_builtin_is_fashion_mnist_subset():
    ds = load_builtin()
    assert ds.train_images.shape == (10000, 28, 28, 1) and ds.val_images.shape == (2000, 28, 28, 1)
    assert ds.num_classes == 10 and set(np.unique(ds.train_labels)) == set(range(10))
    assert np.bincount(ds.train_labels).min() == 1000  # class-balanced


def test_fashion_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    ds = load_dataset("fashion-mnist", tmp_path)
    assert ds.train_images.shape == (12, 28, 28, 1) and ds.val_labels.shape == (5,)


def test_fashion_mnist_shared_copy_if_present():
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
    if not shared.is_dir():
        pytest.skip("no ../shared/data/fashion-mnist beside the checkout")
    ds = load_dataset("fashion-mnist", shared)
    assert ds.train_images.shape == (60000, 28, 28, 1) and ds.val_images.shape == (10000, 28, 28, 1)


def test_cifar10_pickles(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 9]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train_images.shape == (20, 32, 32, 3) and ds.num_classes == 10 and ds.in_channels == 3


def test_cifar_loader_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(DataError, match="refusing"):
        load_dataset("cifar10", tmp_path)


def test_image_folder(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(np.full((40, 30, 3), 40 * i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset("imagefolder", tmp_path, image_size=16)
    assert ds.num_classes == 2 and ds.train_images.shape[1:] == (16, 16, 3)
    assert len(ds.train_labels) + len(ds.val_labels) == 10 and len(ds.val_labels) >= 1


def test_image_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match="no images"):
        load_dataset("imagefolder", tmp_path)


@pytest.mark.parametrize("name,folder,match", [("mnist", None, "unknown dataset"),
                                               ("cifar10", "/nonexistent/x", "not found"),
                                               ("cifar100", None, "needs --data-dir")])
def test_bad_dataset_arguments(name, folder, match):
    with pytest.raises(DataError, match=match):
        load_dataset(name, folder)


def test_loader_shapes_and_determinism():
    images = np.random.default_rng(0).integers(0, 255, (10, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(10) % 3

    def batches(seed):
        return list(TensorLoader(images, labels, 4, train=True, seed=seed))

    a, b = batches(1), batches(1)
    assert [x.shape for x, _ in a] == [(4, 1, 8, 8), (4, 1, 8, 8), (2, 1, 8, 8)]
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b, strict=True))
    val = TensorLoader(images, labels, 4, train=False)
    assert torch.equal(torch.cat([y for _, y in val]), torch.as_tensor(labels))
