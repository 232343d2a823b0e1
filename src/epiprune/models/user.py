"""The user's own network: `--model package.module:factory`, called with JSON keyword arguments.

A factory is any callable (a function or an nn.Module class) reached as `module:attribute` (the attribute may be
dotted: `module:Class.build`). It is called with the user's keyword arguments plus `num_classes` and
`in_channels` when its signature accepts them (by name, or through **kwargs) and the user did not set them.
The result must be an nn.Module that maps a (N, in_channels, H, W) batch to logits of shape (N, num_classes), or a
language model that maps byte ids (N, T) to logits (N, T, 256); Hugging Face models included (models/user_task.py).

Only import paths that the caller names (on the command line, in a TrainConfig, as `model=` of `load_pruned`) are
ever imported: a saved run records its import path as information, and nothing that reads a run imports it.
The folder the command runs in is put on `sys.path` first (as `python -m` does), so a `my_models.py` beside the
user works without installing it.

Every failure is an EpipruneError with one line: what went wrong and what is accepted.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence

import torch
from torch import nn

from epiprune.errors import EpipruneError
from epiprune.models.user_task import first_line, logits_for

ACCEPTED_PATH = "accepted: package.module:factory, e.g. my_models:small_cnn"
AUTOMATIC_KWARGS = ("num_classes", "in_channels")  # passed by epiprune when the factory takes them


def is_import_path(name: str) -> bool:
    """True for `package.module:factory` (a user model); registry names have no colon."""
    return ":" in name


def parse_model_kwargs(text: str | None) -> dict:
    """`--model-kwargs` text (a JSON object) as a dict; None or empty text is {}."""
    if text is None or not text.strip():
        return {}
    accepted = "accepted: a JSON object such as '{\"width\": 32}'"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise EpipruneError(f"--model-kwargs {text!r} is not JSON: {e.msg} at character {e.pos} ({accepted})") from None
    if not isinstance(value, dict):
        raise EpipruneError(f"--model-kwargs {text!r} is a JSON {type(value).__name__}, not an object ({accepted})")
    return value


def import_factory(path: str) -> Callable[..., object]:
    """The callable named by `package.module:factory`; imports the module (the current folder is searched first)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute or ":" in attribute or any(not p.isidentifier() for p in
                                                                   module_name.split(".") + attribute.split(".")):
        raise EpipruneError(f"bad model import path {path!r} ({ACCEPTED_PATH})")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ModuleNotFoundError, or whatever the module raises while it runs
        raise EpipruneError(f"cannot import module {module_name!r} of --model {path}: {first_line(e)} (accepted: a "
                            "module on the Python path or in the current folder)") from None
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise EpipruneError(f"module {module_name!r} has no attribute {attribute!r} (--model {path}; accepted: "
                                "a function or nn.Module class defined there)")
        target = getattr(target, part)
    if not callable(target):
        raise EpipruneError(f"--model {path} names an object of type {type(target).__name__}, which is not callable "
                            "(accepted: a function or nn.Module class that returns the network)")
    return target


def _signature(factory: Callable[..., object]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins and C extensions have none: call them as they are
        return None


def factory_arguments(factory: Callable[..., object], path: str, kwargs: dict, in_channels: int,
                      num_classes: int) -> dict:
    """The keyword arguments the factory is called with: the user's, plus num_classes / in_channels when its
    signature takes them and the user did not set them. Raises EpipruneError if the signature refuses them."""
    signature = _signature(factory)
    arguments = dict(kwargs)
    if signature is None:
        return arguments
    params = signature.parameters
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        p = params.get(name)
        takes = var_keyword or (p is not None and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                             inspect.Parameter.KEYWORD_ONLY))
        if takes and name not in arguments:
            arguments[name] = value
    try:
        signature.bind(**arguments)
    except TypeError as e:
        names = [n for n, p in params.items() if p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                inspect.Parameter.VAR_KEYWORD)]
        raise EpipruneError(f"factory {path} does not accept --model-kwargs {json.dumps(kwargs)}: {e} (accepted: "
                            f"its parameters {', '.join(names) or 'none'})") from None
    return arguments


def build_user_model(path: str, kwargs: dict | None, in_channels: int, num_classes: int) -> nn.Module:
    """Import `path` and call the factory (see factory_arguments); the result must be an nn.Module."""
    factory = import_factory(path)
    arguments = factory_arguments(factory, path, kwargs or {}, in_channels, num_classes)
    try:
        model = factory(**arguments)
    except Exception as e:  # the user's code: whatever it raises becomes one line
        raise EpipruneError(f"factory {path}({_format_arguments(arguments)}) failed: {first_line(e)} (accepted: "
                            "a factory that builds the network from these arguments)") from None
    if not isinstance(model, nn.Module):
        raise EpipruneError(f"factory {path} returned a {type(model).__name__}, not a torch.nn.Module (accepted: a "
                            "callable that returns the network)")
    return model


def _format_arguments(arguments: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in arguments.items())


def check_output(model: nn.Module, name: str, in_channels: int, input_size: tuple[int, int],
                 num_classes: int) -> None:
    """Run a (2, in_channels, H, W) batch of zeros through `model` (eval mode, no gradients, on its device) and
    require logits of shape (2, num_classes): the output tensor, or a Hugging Face output's `.logits`. Restores the
    model's training mode."""
    example = torch.zeros(2, in_channels, *input_size, device=device_of(model))
    shape = f"(2, {in_channels}, {input_size[0]}, {input_size[1]})"
    accepted = (f"accepted: a network that maps (N, {in_channels}, H, W) images to logits (N, {num_classes}); the "
                "factory gets num_classes and in_channels if it has parameters of those names")
    out = logits_for(model, example, name, accepted)
    if tuple(out.shape) != (2, num_classes):
        raise EpipruneError(f"model {name} maps a batch of shape {shape} to shape {tuple(out.shape)}, not "
                            f"(2, {num_classes}) ({accepted})")


def device_of(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def resolve_layers(model: nn.Module, names: Sequence[str], model_name: str) -> list[nn.Module]:
    """The modules named in `--ignore-layers` (names as in model.named_modules(); a container stands for every
    Conv2d / Linear inside it). An unknown name is an EpipruneError listing some names that exist."""
    modules = dict(model.named_modules())
    found: list[nn.Module] = []
    for name in names:
        if name not in modules or not name:
            prunable = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
            shown = ", ".join(prunable[:8]) + (", ..." if len(prunable) > 8 else "")
            raise EpipruneError(f"--ignore-layers names {name!r}, which is no layer of {model_name} (accepted: "
                                f"module names as in model.named_modules(), e.g. {shown})")
        module = modules[name]
        inner = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for m in inner or [module]:
            if not any(m is f for f in found):
                found.append(m)
    return found


def parse_layer_names(text: str | None) -> list[str]:
    """`--ignore-layers a.b,c.d` as ['a.b', 'c.d'] (blanks around names dropped, empty text: [])."""
    if text is None:
        return []
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise EpipruneError(f"--ignore-layers {text!r} has an empty name (accepted: comma-separated module names "
                            "such as conv1,layers.0.conv1)")
    return names
