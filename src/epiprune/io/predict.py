"""`epiprune predict MODEL IMAGE...`: the top classes for a few image files, a user's first check that a trained
or exported model works as it is. MODEL is a run folder, an exported .safetensors, TorchScript (.pt) or
torch.export (.pt2) file, or an .onnx file (with onnxruntime installed)."""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from epiprune.errors import EpipruneError
from epiprune.io.preprocessing import METADATA_KEY, Preprocessing, read_image
from epiprune.io.serialization import load_preprocessing, load_pruned

ACCEPTED = "a run folder of `epiprune train`, or a file from `epiprune export`: .safetensors, .pt, .pt2, .onnx"


def _record(text: str | bytes | None, path: Path) -> Preprocessing:
    if not text:
        raise EpipruneError(f"{path} carries no preprocessing record (exported by an older epiprune; accepted: "
                            "export the run again)")
    return Preprocessing.from_dict(json.loads(text))


def load_model(path: str | Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], Preprocessing]:
    """(function from raw [0, 1] images (N, C, H, W) to logits, the preprocessing record) for any MODEL above."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        model = load_pruned(path, raw_inputs=True)
        prep = load_preprocessing(path)
        return model, prep  # load_pruned(raw_inputs=True) has refused a run without a record
    if not path.is_file():
        raise EpipruneError(f"model not found: {path} (accepted: {ACCEPTED})")
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


def predict(model_path: str | Path, images: list[str], top: int = 3) -> list[list[tuple[str, float]]]:
    """For each image file: the `top` most likely (class name, probability) pairs, most likely first."""
    if top < 1:
        raise EpipruneError(f"--top {top} is too small (accepted: an integer >= 1)")
    model, prep = load_model(model_path)
    batch = torch.cat([read_image(p, prep) for p in images])
    with torch.no_grad():
        probs = torch.softmax(model(batch).float(), dim=1)
    k = min(top, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    names = prep.class_names if len(prep.class_names) == probs.shape[1] else [str(i) for i in range(probs.shape[1])]
    return [[(names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist(), strict=True)]
            for vs, ix in zip(values, indices, strict=True)]
