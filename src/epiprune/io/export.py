"""Export a trained (pruned) run for deployment without epiprune.

TorchScript, .pt2 and ONNX exports take raw images with values in [0, 1], (N, C, H, W): the training set's
per-channel standardisation is part of the exported graph. Every export carries the preprocessing record (mean,
std, input size, channels, class names) as JSON under the key "epiprune_preprocessing": TorchScript and .pt2 in
their extra files, ONNX in the model's metadata_props, safetensors in its metadata.

torchscript: a TorchScript archive (torch.jit.load, no Python class needed; deprecated by torch in favour of:)
export: a torch.export program (.pt2; torch.export.load(path).module()), batch size dynamic.
onnx: an ONNX graph (needs the `onnx` and `onnxscript` packages: `pip install epiprune[onnx]`).
safetensors: one .safetensors file whose metadata holds the architecture spec; `epiprune.load_pruned` rebuilds the
model from it, and any safetensors reader gets the tensors.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from epiprune.errors import EpipruneError
from epiprune.files import RUN_FILES, atomic_write
from epiprune.io.preprocessing import METADATA_KEY, with_preprocessing
from epiprune.io.serialization import load_preprocessing, load_pruned, read_spec, safetensors_state

FORMATS = ("torchscript", "export", "onnx", "safetensors")
SUFFIX = {"torchscript": ".torchscript.pt", "export": ".pt2", "onnx": ".onnx", "safetensors": ".safetensors"}
LOAD_SUFFIX = {"torchscript": ".pt", "export": ".pt2", "onnx": ".onnx", "safetensors": ".safetensors"}  # required


def export_target(run_dir: Path, fmt: str, out: str | Path | None, force: bool = False) -> Path:
    """The file an export writes: `out`, or RUN_DIR/model_export.<suffix>. Refused (EpipruneError) when its suffix
    is not the format's (predict and the loaders read a file by its suffix), when it is a file of a run, and when
    it exists and `force` is off (nothing is replaced unless asked for)."""
    target = Path(out) if out is not None else run_dir / f"model_export{SUFFIX[fmt]}"
    suffix = LOAD_SUFFIX[fmt]
    if not target.name.endswith(suffix):
        formats = ", ".join(f"{name} {s}" for name, s in LOAD_SUFFIX.items())
        raise EpipruneError(f"--out {target} does not end in {suffix}, the suffix of --format {fmt} (accepted: a "
                            f"name ending in {suffix}, or the --format of that suffix: {formats})")
    if target.name in RUN_FILES or target.is_dir():
        raise EpipruneError(f"--out {target} would replace a file of a run (accepted: a new file name, e.g. "
                            f"model{SUFFIX[fmt]})")
    if target.exists() and not force:
        raise EpipruneError(f"--out {target} exists and would be replaced (accepted: another file name, or --force "
                            "to replace it)")
    return target


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, model: nn.Module | None = None,
               force: bool = False) -> Path:
    """Export the model saved in run_dir (by `epiprune train`) to `fmt`; returns the written file.

    model: for a run of the user's own network, its dense network built by the caller (see load_pruned); the run's
    surgery and weights are applied to it in place. force: replace an existing file at `out` (refused otherwise).

    Long on purpose: one straight path per format (each with its own import guard and its own one-line refusal),
    checked before anything is written."""
    if fmt not in FORMATS:
        raise EpipruneError(f"unknown export format {fmt!r} (accepted: {', '.join(FORMATS)})")
    run_dir = Path(run_dir)
    target = export_target(run_dir, fmt, out, force)
    spec, _ = read_spec(run_dir)  # "no saved model in ..." for a folder without one
    if spec.get("task") == "text" and fmt != "safetensors":
        raise EpipruneError(f"{run_dir} holds a language model; its --format {fmt} is not built yet (accepted: "
                            "--format safetensors, or epiprune.io.pretrained.save_pretrained)")
    bare = load_pruned(run_dir, raw_inputs=False, model=model)
    prep = load_preprocessing(run_dir)
    # standardisation inside the graph: the exported model takes raw [0, 1] images (runs saved before the
    # preprocessing was stored export the bare network, as before)
    model = with_preprocessing(bare, prep)
    extra = {METADATA_KEY: json.dumps(prep.to_dict())} if prep is not None else {}
    example = torch.zeros(2, spec["in_channels"], *spec["input_size"])  # batch 1 would be specialised
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EpipruneError(f"cannot write --out {target}: {e.strerror} (accepted: a file in a writable "
                            "folder)") from None
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example)
            atomic_write(target, lambda p: torch.jit.save(traced, str(p), _extra_files=extra))
    elif fmt == "export":
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))

        def write_program(p: Path) -> None:
            with open(p, "wb") as f:  # a path not ending in .pt2 (our temp file) makes torch log a warning
                torch.export.save(program, f, extra_files=extra)

        atomic_write(target, write_program)
    elif fmt == "onnx":
        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise EpipruneError(f"ONNX export needs the packages {', '.join(missing)} "
                                "(accepted: pip install 'epiprune[onnx]', or --format torchscript)")
        def write_onnx(p: Path) -> None:
            # torch logs "torchvision is not installed. Skipping torchvision::nms" (and 3 more): not our user's
            # business, a CNN without detection ops needs none of them
            registration = logging.getLogger("torch.onnx._internal.exporter._registration")
            level = registration.level
            registration.setLevel(logging.ERROR)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                                output_names=["logits"], dynamic_shapes=({0: "batch"},),
                                                verbose=False)
                    program.save(str(p), external_data=False)
            finally:
                registration.setLevel(level)
            if extra:
                import onnx

                graph = onnx.load(str(p))
                onnx.helper.set_model_props(graph, extra)
                onnx.save(graph, str(p))

        atomic_write(target, write_onnx)
    else:
        state = safetensors_state(bare)
        metadata = {"epiprune_architecture": json.dumps(spec), **extra}
        atomic_write(target, lambda p: save_file(state, str(p), metadata=metadata))
    return target
