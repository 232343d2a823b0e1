"""`epiprune predict MODEL IMAGE...`: the top classes for image files (or folders of them), a user's first check
that a trained or exported model works as it is. MODEL is a run folder, its model.safetensors, an exported
.safetensors, TorchScript (.pt) or torch.export (.pt2) file, or an .onnx file (with onnxruntime installed). A run of
the user's own network needs its dense network (`model=`), which epiprune never imports from a saved name."""

from __future__ import annotations

import importlib.util
import json
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from epiprune.errors import EpipruneError
from epiprune.files import CHECKPOINT_FILE
from epiprune.io.preprocessing import METADATA_KEY, Preprocessing, read_image
from epiprune.io.serialization import load_preprocessing, load_pruned

ACCEPTED = ("a run folder of `epiprune train` or its model.safetensors, or a file from `epiprune export`: "
            ".safetensors, .pt, .pt2, .onnx")
BATCH = 256  # images per forward pass
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _record(text: str | bytes | None, path: Path) -> Preprocessing:
    if not text:
        raise EpipruneError(f"{path} carries no preprocessing record (exported by an older epiprune; accepted: "
                            "export the run again)")
    return Preprocessing.from_dict(json.loads(text))


def _pickled_archive(path: Path) -> bool:
    """True for a torch.save file (a zip holding data.pkl and no TorchScript code): a checkpoint or a state dict,
    which torch.jit.load reports as a corrupt archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names)


def _refuse_pickle(path: Path) -> None:
    """A training checkpoint (or any torch.save file) passed as a model: say what it is and what to pass."""
    if path.name == CHECKPOINT_FILE or _pickled_archive(path):
        what = ("the training checkpoint of a run (what `epiprune train --resume` reads)" if path.name ==
                CHECKPOINT_FILE else "a torch.save file (pickled tensors), not a TorchScript archive")
        folder = f"the run folder {path.parent}" if path.name == CHECKPOINT_FILE else "a run folder"
        raise EpipruneError(f"{path} is {what}, not a model to predict with (accepted: {folder}, its "
                            "model.safetensors, or a file of `epiprune export`)")


def load_model(path: str | Path, model: nn.Module | None = None
               ) -> tuple[Callable[[torch.Tensor], torch.Tensor], Preprocessing]:
    """(function from raw [0, 1] images (N, C, H, W) to logits, the preprocessing record) for any MODEL above.
    model: for a run (folder or .safetensors) of the user's own network, its dense network (see load_pruned)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        net = load_pruned(path, raw_inputs=True, model=model)
        prep = load_preprocessing(path)
        return net, prep  # load_pruned(raw_inputs=True) has refused a run without a record
    if model is not None:
        raise EpipruneError(f"--model is for a run of your own network, and {path} is an exported model that "
                            "holds its network already (accepted: --model with a run folder or .safetensors file, "
                            "or the exported file alone)")
    if not path.is_file():
        raise EpipruneError(f"model not found: {path} (accepted: {ACCEPTED})")
    _refuse_pickle(path)
    try:
        if path.suffix == ".pt2":
            extra = {METADATA_KEY: ""}
            program = torch.export.load(str(path), extra_files=extra)
            return program.module(), _record(extra[METADATA_KEY], path)
        if path.suffix == ".pt":
            extra = {METADATA_KEY: ""}
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's business here
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            return module.eval(), _record(extra[METADATA_KEY], path)
    except Exception as e:  # foreign or corrupt archives: RuntimeError, BadZipFile, pickle errors, ...
        if isinstance(e, EpipruneError):
            raise
        raise EpipruneError(f"cannot read {path}: {(str(e).splitlines() or [type(e).__name__])[0][:200]} "
                            f"(accepted: {ACCEPTED})") from None
    if path.suffix == ".onnx":
        return _load_onnx(path)
    raise EpipruneError(f"unknown model file {path} (accepted: {ACCEPTED})")


def _load_onnx(path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], Preprocessing]:
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise EpipruneError(f"predicting with an .onnx file needs {', '.join(missing)} (accepted: pip install "
                            "onnx onnxruntime, or the run folder)")
    import onnx
    import onnxruntime

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnx raises DecodeError, onnxruntime its own exception types
        raise EpipruneError(f"cannot read {path}: {str(e)[:200]} (accepted: {ACCEPTED})") from None
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return run, _record(props.get(METADATA_KEY), path)


def image_files(paths: list[str | Path]) -> list[Path]:
    """The image files named: each file as it is, each folder as the image files below it (sorted, by suffix:
    IMAGE_SUFFIXES). A folder without images is one EpipruneError line."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise EpipruneError(f"no image files in {path} (accepted: a folder holding files ending in "
                                    f"{', '.join(IMAGE_SUFFIXES)}, or image files)")
            files += found
        else:
            files.append(path)
    return files


def predict(model_path: str | Path, images: list[str | Path], top: int = 3, model: nn.Module | None = None
            ) -> list[tuple[Path, list[tuple[str, float]]]]:
    """For each image file (folders: the images in them): (its path, the `top` most likely (class name,
    probability) pairs, most likely first). model: the dense network of a run of your own network."""
    if top < 1:
        raise EpipruneError(f"--top {top} is too small (accepted: an integer >= 1)")
    files = image_files(images)
    net, prep = load_model(model_path, model)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(files), BATCH):  # a folder of thousands of images is not one batch
            batch = torch.cat([read_image(p, prep) for p in files[start:start + BATCH]])
            chunks.append(torch.softmax(net(batch).float(), dim=1))
    probs = torch.cat(chunks)
    k = min(top, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    names = prep.class_names if len(prep.class_names) == probs.shape[1] else [str(i) for i in range(probs.shape[1])]
    return [(f, [(names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist(), strict=True)])
            for f, vs, ix in zip(files, values, indices, strict=True)]
