"""Pruned models as data: an architecture spec (JSON) next to safetensors weights.

The spec names the registry model (or the import path and JSON keyword arguments of the user's own factory),
its constructor arguments, the input shape, the layers never pruned and the kept channel indices per channel
group; `load_pruned` rebuilds those exact shapes by re-applying the surgery to a fresh dense model, so no pickled
module is ever loaded. A user's factory is never imported because a file names it: the caller builds the dense
network and passes it (`load_pruned(path, model=...)`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from epiprune.errors import EpipruneError
from epiprune.files import atomic_write, atomic_write_text
from epiprune.io.preprocessing import Preprocessing, RawInputModel
from epiprune.models import MODELS, build_model, is_import_path
from epiprune.models.user import resolve_layers
from epiprune.surgery import SurgeryError, make_graph

ARCH_FILE = "architecture.json"
WEIGHTS_FILE = "model.safetensors"


def architecture_spec(model_name: str, in_channels: int, num_classes: int, input_size: tuple[int, int],
                      kept: dict[str, list[int]] | None, preprocessing: dict | None = None,
                      model_kwargs: dict | None = None, ignore_layers: list[str] | None = None) -> dict:
    """The architecture as data; `preprocessing` (Preprocessing.to_dict(): mean, std, class names) rides along.

    model_name: a registry name, or the import path `package.module:factory` of the user's network, which is
    recorded as information only (loading never imports it: see build_from_spec). model_kwargs: the factory's
    JSON keyword arguments; ignore_layers: module names whose output channels were never pruned. Both are stored
    only when given, so registry specs stay as they were."""
    spec = {"format": "epiprune-architecture/1", "model": model_name, "in_channels": in_channels,
            "num_classes": num_classes, "input_size": list(input_size), "kept": kept}
    if model_kwargs:
        spec["model_kwargs"] = model_kwargs
    if ignore_layers:
        spec["ignore_layers"] = list(ignore_layers)
    if preprocessing is not None:
        spec["preprocessing"] = preprocessing
    return spec


def _describe_model(spec: dict) -> str:
    """"'my_models:small_cnn' with model_kwargs {"width": 8} for 1-channel input and 10 classes"."""
    kwargs = spec.get("model_kwargs")
    return (f"{spec.get('model')!r}" + (f" with model_kwargs {json.dumps(kwargs)}" if kwargs else "")
            + f" for {spec.get('in_channels')}-channel input and {spec.get('num_classes')} classes")


def build_from_spec(spec: dict, model: nn.Module | None = None, source: str = "the architecture spec") -> nn.Module:
    """The spec's network with its pruned shapes (weights as they were: fresh for a registry model).

    model: the dense network to prune into those shapes, built by the caller (required for a user network: a
    name in a saved file is never imported); it is pruned in place and returned. Without it, the registry model
    the spec names is built. `source` names the spec's file in error messages."""
    try:
        name, in_channels, num_classes = spec["model"], spec["in_channels"], spec["num_classes"]
        h, w = spec["input_size"]
        kept = spec.get("kept")
        ignore = list(spec.get("ignore_layers") or [])
        user_network = is_import_path(name) or name not in MODELS
    except (KeyError, TypeError, ValueError) as e:
        raise EpipruneError(f"bad architecture spec ({e}); expected keys model, in_channels, num_classes, "
                            "input_size, kept") from None
    if model is None:
        if user_network:
            raise EpipruneError(f"{source} holds the network of {_describe_model(spec)}, which epiprune does not "
                                f"import from a saved file (accepted: load_pruned(path, model=<the dense network "
                                f"that {name} builds>), or `epiprune export` / `epiprune predict` with --model "
                                f"{name})")
        try:
            model = build_model(name, in_channels, num_classes, (h, w))
        except ValueError as e:
            raise EpipruneError(f"bad architecture spec ({e})") from None
    if not isinstance(model, nn.Module):
        raise EpipruneError(f"model= is a {type(model).__name__}, not a torch.nn.Module (accepted: the dense network "
                            f"of {_describe_model(spec)})")
    if kept:
        hint = f"(accepted: model= the dense network of {_describe_model(spec)}, built with the same arguments)"
        try:
            ignored = resolve_layers(model, ignore, type(model).__name__)
        except EpipruneError:
            raise EpipruneError(f"the run kept the layers {ignore} unpruned (ignore_layers), and model= lacks some "
                                f"of them {hint}") from None
        device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
        try:
            graph = make_graph(model, example_input(spec, device), ignored)
        except SurgeryError as e:
            raise EpipruneError(f"{e} {hint}") from None
        unknown = set(kept) - set(graph.names)
        if unknown:
            raise EpipruneError(f"{source} names channel groups {sorted(unknown)} that the model lacks (it has "
                                f"{graph.names}) {hint}")
        try:
            graph.prune([kept.get(name, list(range(g.size))) for name, g in zip(graph.names, graph.groups,
                                                                                  strict=True)])
        except SurgeryError as e:
            raise EpipruneError(f"{e} {hint}") from None
    return model


def example_input(spec: dict, device: torch.device | str = "cpu") -> torch.Tensor:
    """One sample of what the spec's network takes: token ids (1, seq_len) for a language model (a spec with
    seq_len), else zeros (1, in_channels, H, W)."""
    if spec.get("seq_len"):
        return torch.zeros(1, int(spec["seq_len"]), dtype=torch.long, device=device)
    h, w = spec["input_size"]
    return torch.zeros(1, spec["in_channels"], h, w, device=device)


def safetensors_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """model's state_dict as safetensors stores it: detached, contiguous, on the CPU, and a tensor that shares
    memory with an earlier one (tied input and output embeddings, tie_word_embeddings=True) copied, since
    safetensors refuses shared tensors; loading both keys into the tied parameter restores the same values."""
    state, seen = {}, set()
    for key, value in model.state_dict().items():
        tensor = value.detach().contiguous().cpu()
        storage = tensor.untyped_storage().data_ptr()
        if tensor.numel() and storage in seen:
            tensor = tensor.clone()
        seen.add(storage)
        state[key] = tensor
    return state


def save_pruned(model: nn.Module, spec: dict, folder: Path) -> None:
    """Write architecture.json and model.safetensors into folder, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = safetensors_state(model)
    atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
    atomic_write_text(folder / ARCH_FILE, json.dumps(spec, indent=1))


def read_spec(path: Path) -> tuple[dict, Path]:
    """(architecture spec, weights file) of a run folder or of a single exported .safetensors file."""
    if path.is_file() and path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                text = (f.metadata() or {}).get("epiprune_architecture")
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise EpipruneError(f"corrupt {path}: {e}") from None
        if text is None:
            if (path.parent / ARCH_FILE).is_file():  # a run folder's weights: the architecture is beside them
                return _read_arch(path.parent / ARCH_FILE), path
            raise EpipruneError(f"{path} has no epiprune architecture in its metadata and no {ARCH_FILE} beside it "
                                "(accepted: a run folder, its model.safetensors, or a file of `epiprune export`)")
        return json.loads(text), path
    arch, weights = path / ARCH_FILE, path / WEIGHTS_FILE
    if not arch.is_file() or not weights.is_file():
        raise EpipruneError(f"no saved model in {path} (expected {ARCH_FILE} and {WEIGHTS_FILE})")
    return _read_arch(arch), weights


def _read_arch(arch: Path) -> dict:
    try:
        return json.loads(arch.read_text())
    except json.JSONDecodeError as e:
        raise EpipruneError(f"corrupt {arch}: {e}") from None


def load_preprocessing(path: str | Path) -> Preprocessing | None:
    """The input standardisation (per-channel mean and std of [0, 1] pixels), input size and class names stored
    with a run folder or exported .safetensors file; None for runs made before epiprune stored them."""
    spec, _ = read_spec(Path(path))
    return Preprocessing.from_dict(spec["preprocessing"]) if spec.get("preprocessing") else None


def load_pruned(path: str | Path, raw_inputs: bool | None = None, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a (pruned) model: `path` is a run folder (architecture.json + model.safetensors) or a .safetensors
    file exported by `epiprune export --format safetensors`. Exact shapes from the spec; no pickle involved.

    model: for a run of your own network (`--model package.module:factory`), the dense network built the way
    the run built it (e.g. `model=small_cnn(in_channels=1, width=8)`): the recorded channel surgery is applied to
    it in place, then the weights are loaded into it. epiprune never imports a module named in a saved file, so
    without model= such a run is refused. For registry models model= is optional.

    What it returns takes raw images, float (N, C, H, W) in [0, 1] (`image_to_tensor` reads them from files),
    like the exported TorchScript, .pt2 and ONNX models: a `RawInputModel`, the network behind the standardisation
    training used (`.network` is the bare network, `.preprocessing` the record; other attributes are the
    network's). raw_inputs=None (default): so when the run stored its preprocessing, else (a spec saved without
    one, e.g. by save_pruned in your own loop) the bare network. raw_inputs=True: the same, but a missing record
    is an error. raw_inputs=False: the bare network, which expects inputs standardised as training did (see
    `load_preprocessing`): fed raw images it silently scores far worse."""
    spec, weights = read_spec(Path(path))
    if raw_inputs and spec.get("task") == "text":
        raise EpipruneError(f"{path} holds a language model (--data text), which takes token ids, not images "
                            "(accepted: load_pruned(path) and the model's forward or generate on byte ids)")
    model = build_from_spec(spec, model, source=str(path))
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise EpipruneError(f"corrupt {weights}: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        # torch's first line only names the class ("Error(s) in loading state_dict for X:"): show the first reason
        reasons = [line.strip() for line in str(e).splitlines()[1:] if line.strip()] or [str(e).strip()]
        raise EpipruneError(f"{weights} does not match its architecture: {reasons[0][:300]} (accepted: the "
                            f"weights saved with it; with model=, the dense network of {_describe_model(spec)})"
                            ) from None
    if raw_inputs is False:
        return model.eval()
    prep = Preprocessing.from_dict(spec["preprocessing"]) if spec.get("preprocessing") else None
    if prep is None:
        if raw_inputs is None:
            return model.eval()
        raise EpipruneError(f"{path} was saved without its preprocessing (made by an older epiprune; accepted: "
                            "raw_inputs=False and inputs standardised by the caller, or a new run)")
    return RawInputModel(model, prep).eval()
