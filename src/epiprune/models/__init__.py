"""Model registry: build a network by name. Every model takes 1- or 3-channel input.

`make_model` also builds the user's own network from an import path `package.module:factory` (see models.user).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from epiprune.errors import EpipruneError
from epiprune.registry import Registry

from .convnext import convnext_mini
from .hf import lm_tiny, vit_tiny
from .mobilenetv2 import mobilenetv2, mobilenetv2_small
from .resnet import resnet20, resnet56
from .resnext import resnext20_4x8d
from .user import build_user_model, check_output, device_of, import_factory, is_import_path
from .user_task import check_task, check_text_output, declared_task, network_task
from .vgg import vgg11_bn

# name -> factory(in_channels=..., num_classes=...): `list(MODELS)` lists them, build_model creates one by name;
# a new architecture is added with MODELS.register("name", factory)
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
for _name, _factory in (("resnet20", resnet20), ("resnet56", resnet56), ("vgg11_bn", vgg11_bn),
                        ("mobilenetv2", mobilenetv2), ("mobilenetv2_small", mobilenetv2_small),
                        ("resnext20_4x8d", resnext20_4x8d), ("convnext_mini", convnext_mini),
                        ("vit_tiny", vit_tiny), ("lm_tiny", lm_tiny)):
    MODELS.register(_name, _factory)


def build_model(name: str, in_channels: int = 3, num_classes: int = 10, input_size: tuple[int, int] | None = None
                ) -> nn.Module:
    """Build a registered model. Raises ValueError naming the accepted names for an unknown one. input_size (H, W)
    is passed as image_size to a factory that takes it (vit_tiny: its patch grid and position embeddings)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (accepted: {', '.join(MODELS)})")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    factory = MODELS.get(name)
    extra = {}
    if input_size is not None and "image_size" in inspect.signature(factory).parameters:
        extra["image_size"] = int(input_size[0])
    return factory(in_channels=in_channels, num_classes=num_classes, **extra)


def channel_models() -> list[str]:
    """The registry models pruned by channels (the CNNs), without the transformers of models.hf."""
    return [n for n in MODELS if not is_transformer(n)]


def is_transformer(name: str) -> bool:
    """Whether `name` is a registry transformer (models.hf: pruned by heads and neurons, trained with AdamW); False
    for a CNN, an unknown name and a user's network (an import path: what it is shows only once it is built)."""
    return not is_import_path(name) and name in MODELS and getattr(MODELS.get(name), "transformer", False)


def model_task(name: str) -> str | None:
    """What a model takes: "text" (token ids (N, T)) or "image" (pixels (N, C, H, W)), as its factory's `task`
    attribute says (a registry model without one: "image"). None for a user's factory (an import path, imported
    here) that declares nothing: its network says what it takes once built (models/user_task.py)."""
    if is_import_path(name):
        return declared_task(import_factory(name), name)
    if name not in MODELS:
        return None
    return getattr(MODELS.get(name), "task", "image")


def check_model_name(name: str, model_kwargs: dict | None = None) -> None:
    """Raise EpipruneError unless `name` is a registry name (then without model_kwargs) or an import path."""
    if is_import_path(name):
        return
    if name not in MODELS:
        raise EpipruneError(f"unknown model {name!r} (accepted: {', '.join(MODELS)}, or your own network as "
                            "package.module:factory)")
    if model_kwargs:
        raise EpipruneError(f"--model-kwargs is given but {name} is a registry model, which takes none (accepted: "
                            "--model-kwargs with --model package.module:factory)")


def check_model_task(name: str, task: str, data: str) -> None:
    """Raise EpipruneError when registry model `name` takes other data than dataset `data` of `task` ("image" or
    "text") gives."""
    have = model_task(name)
    if have is not None and have != task:
        fits = [n for n in MODELS if model_task(n) == task]
        words = {"text": "text", "image": "images"}
        if is_import_path(name):
            raise EpipruneError(f"model {name} takes {words[have]} (its factory's task), but --data {data} is "
                                f"{words[task]} (accepted: {'--data text' if have == 'text' else 'image data'} for "
                                f"it, or a factory whose task is {task!r})")
        raise EpipruneError(f"model {name} takes {words[have]}, but --data {data} is {words[task]} (accepted: --model "
                            f"{', '.join(fits)} for --data {data}, or your own network as package.module:factory)")


def make_model(name: str, in_channels: int, num_classes: int, model_kwargs: dict | None = None,
               input_size: tuple[int, int] | None = None, task: str | None = None) -> nn.Module:
    """A dense network: registry `name`, or the factory at import path `name` called with model_kwargs (plus
    num_classes and in_channels if it takes them). task: what the run's data is, "image" or "text" (None: not
    checked). A user network must take that data (its task: models/user_task.py) and make logits of it: a language
    model (2, T) byte ids -> (2, T, num_classes); an image network, with input_size (H, W), a (2, in_channels, H, W)
    batch -> (2, num_classes); a Hugging Face output's `.logits` counts. Every failure is one EpipruneError line."""
    check_model_name(name, model_kwargs)
    if not is_import_path(name):
        try:
            return build_model(name, in_channels, num_classes, input_size)
        except ValueError as e:
            raise EpipruneError(str(e)) from None
    model = build_user_model(name, model_kwargs, in_channels, num_classes)
    takes = network_task(model, declared_task(import_factory(name), name), name)
    if task is not None:
        check_task(name, model, takes, task)
    if takes == "text":
        check_text_output(model, name, num_classes, device_of(model))
    elif input_size is not None:
        check_output(model, name, in_channels, input_size, num_classes)
    return model


__all__ = ["MODELS", "build_model", "check_model_name", "is_import_path", "make_model", "model_task",
           "channel_models", "check_model_task", "is_transformer"]
