"""Pruned models as data: an architecture spec (JSON) next to safetensors weights, and atomic file writes.

The spec names the registry model, its constructor arguments, the input shape and the kept channel indices per
channel group; `load_pruned` rebuilds those exact shapes by re-applying the surgery to a fresh model, so no
pickled module is ever loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import EpipruneError
from .models import build_model
from .preprocessing import Preprocessing, with_preprocessing
from .surgery import PrunableGraph

ARCH_FILE = "architecture.json"
WEIGHTS_FILE = "model.safetensors"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temp file in path's folder, then rename it over path (readers never see half)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make outputs private unlike every other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def architecture_spec(model_name: str, in_channels: int, num_classes: int, input_size: tuple[int, int],
                      kept: dict[str, list[int]] | None, preprocessing: dict | None = None) -> dict:
    """The architecture as data; `preprocessing` (Preprocessing.to_dict(): mean, std, class names) rides along."""
    spec = {"format": "epiprune-architecture/1", "model": model_name, "in_channels": in_channels,
            "num_classes": num_classes, "input_size": list(input_size), "kept": kept}
    if preprocessing is not None:
        spec["preprocessing"] = preprocessing
    return spec


def build_from_spec(spec: dict) -> nn.Module:
    """A registry model with the spec's pruned shapes (weights freshly initialised)."""
    try:
        model = build_model(spec["model"], spec["in_channels"], spec["num_classes"])
        h, w = spec["input_size"]
        kept = spec.get("kept")
    except (KeyError, TypeError, ValueError) as e:
        raise EpipruneError(f"bad architecture spec ({e}); expected keys model, in_channels, num_classes, "
                            "input_size, kept") from None
    if kept:
        graph = PrunableGraph(model, torch.zeros(1, spec["in_channels"], h, w))
        unknown = set(kept) - set(graph.names)
        if unknown:
            raise EpipruneError(f"architecture spec names unknown channel groups {sorted(unknown)} "
                                f"(model {spec['model']} has {graph.names})")
        graph.prune([kept.get(name, list(range(g.size))) for name, g in zip(graph.names, graph.groups,
                                                                              strict=True)])
    return model


def save_pruned(model: nn.Module, spec: dict, folder: Path) -> None:
    """Write architecture.json and model.safetensors into folder, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
    atomic_write_text(folder / ARCH_FILE, json.dumps(spec, indent=1))


def _read_spec(path: Path) -> tuple[dict, Path]:
    """(architecture spec, weights file) of a run folder or of a single exported .safetensors file."""
    if path.is_file() and path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                text = (f.metadata() or {}).get("epiprune_architecture")
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise EpipruneError(f"corrupt {path}: {e}") from None
        if text is None:
            raise EpipruneError(f"{path} has no epiprune architecture in its metadata (export it with epiprune)")
        return json.loads(text), path
    arch, weights = path / ARCH_FILE, path / WEIGHTS_FILE
    if not arch.is_file() or not weights.is_file():
        raise EpipruneError(f"no saved model in {path} (expected {ARCH_FILE} and {WEIGHTS_FILE})")
    try:
        return json.loads(arch.read_text()), weights
    except json.JSONDecodeError as e:
        raise EpipruneError(f"corrupt {arch}: {e}") from None


def load_preprocessing(path: str | Path) -> Preprocessing | None:
    """The input standardisation (per-channel mean and std of [0, 1] pixels), input size and class names stored
    with a run folder or exported .safetensors file; None for runs made before epiprune stored them."""
    spec, _ = _read_spec(Path(path))
    return Preprocessing.from_dict(spec["preprocessing"]) if spec.get("preprocessing") else None


def load_pruned(path: str | Path, raw_inputs: bool = False) -> nn.Module:
    """Rebuild a (pruned) model: `path` is a run folder (architecture.json + model.safetensors) or a .safetensors
    file exported by `epiprune export --format safetensors`. Exact shapes from the spec; no pickle involved.

    The network takes inputs standardised the way training did (see `load_preprocessing`). With raw_inputs=True
    it comes behind that standardisation (`nn.Sequential(Normalise, network)`) and takes raw images in [0, 1],
    like the exported TorchScript, .pt2 and ONNX models."""
    spec, weights = _read_spec(Path(path))
    model = build_from_spec(spec)
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise EpipruneError(f"corrupt {weights}: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EpipruneError(f"{weights} does not match its architecture: {str(e).splitlines()[0]}") from None
    if raw_inputs:
        prep = Preprocessing.from_dict(spec["preprocessing"]) if spec.get("preprocessing") else None
        if prep is None:
            raise EpipruneError(f"{path} was saved without its preprocessing (made by an older epiprune; accepted: "
                                "raw_inputs=False and inputs standardised by the caller, or a new run)")
        return with_preprocessing(model, prep)
    return model.eval()
