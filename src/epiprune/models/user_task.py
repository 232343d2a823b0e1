"""What data the user's network takes (`--model package.module:factory`), and the check that it makes logits of it.

Two tasks (run/tasks.py): "image", pixels (N, C, H, W) -> logits (N, classes), and "text", byte ids (N, T) int64
-> logits (N, T, 256). A network's output is its logits tensor, or a Hugging Face output whose `.logits` is that
tensor; epiprune never passes labels, so an output's `.loss` is never computed: the task computes the loss from the
logits (a causal LM would shift labels that run/text.py has shifted already).

The task of a user's network, first match wins:
  1. the factory's `task` attribute, "text" or "image" (what models.hf's registry factories declare:
     `lm_tiny.task = "text"`); a class factory may declare it as a class attribute;
  2. a Hugging Face model (a transformers.PreTrainedModel) by its class (or a base class): a causal language model
     of transformers' MODEL_FOR_CAUSAL_LM_MAPPING_NAMES (LlamaForCausalLM, MistralForCausalLM, GPT2LMHeadModel, ...)
     takes text; an image classifier of MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES (ViTForImageClassification,
     ...) takes images; any other one (BertForMaskedLM, LlamaModel, ...) is refused in one line saying how to
     declare it (1);
  3. any other network takes images (the bring-your-own CNNs of issue 11).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable

import torch
from torch import nn

from epiprune.errors import EpipruneError

TASK_NAMES = ("image", "text")
WORDS = {"image": "images", "text": "text"}
CHECK_TOKENS = 8  # tokens per sequence of the check's batch (2, 8) of byte ids


def first_line(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message (at most 200 characters)."""
    text = (str(e).splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def declared_task(factory: Callable[..., object], path: str) -> str | None:
    """The factory's `task` attribute ("image" or "text"), or None when it has none."""
    task = getattr(factory, "task", None)
    if task is None:
        return None
    if task not in TASK_NAMES:
        raise EpipruneError(f"factory {path} declares task {task!r} (accepted: task = 'text' for byte ids (N, T) -> "
                            "logits (N, T, 256), or 'image' for pixels (N, C, H, W) -> logits (N, classes))")
    return task


def _names(values: Iterable[str | tuple[str, ...]]) -> set[str]:
    """Class names of a transformers auto mapping's values (a name, or a tuple of names)."""
    return {n for v in values for n in ((v,) if isinstance(v, str) else v)}


def hugging_face_task(model: nn.Module) -> str | None:
    """"text" for a causal LM, "image" for an image classifier of transformers (by class or base class name, see
    the module note), "other" for any other PreTrainedModel; None when `model` is no Hugging Face model (then
    transformers is not imported: a model of it would have imported it)."""
    transformers = sys.modules.get("transformers")
    pretrained = getattr(transformers, "PreTrainedModel", None)
    if pretrained is None or not isinstance(model, pretrained):
        return None
    auto = importlib.import_module("transformers.models.auto.modeling_auto")
    classes = {c.__name__ for c in type(model).__mro__}
    for task, mapping in (("text", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
                          ("image", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES")):
        if classes & _names(getattr(auto, mapping, {}).values()):
            return task
    return "other"


def network_task(model: nn.Module, declared: str | None, path: str) -> str:
    """The task of the user's network built by factory `path` (declared: its `task` attribute); see the module
    note. An unrecognised Hugging Face model is an EpipruneError saying how to declare it."""
    if declared is not None:
        return declared
    found = hugging_face_task(model)
    if found == "other":
        attribute = path.partition(":")[2]
        raise EpipruneError(f"cannot tell whether {path} ({type(model).__name__}) takes text or images: it is no "
                            "causal language model or image classifier of transformers (accepted: declare it in "
                            f"its module, {attribute}.task = 'text' for byte ids (N, T) -> logits (N, T, 256), "
                            "or 'image')")
    return found or "image"


def check_task(name: str, model: nn.Module, takes: str, task: str) -> None:
    """EpipruneError when the network `name` takes other data (`takes`) than the run's (`task`)."""
    if takes != task:
        raise EpipruneError(f"model {name} ({type(model).__name__}) takes {WORDS[takes]}, but the run's data is "
                            f"{WORDS[task]} (accepted: --data text for a language model, image data for an image "
                            "model; a factory says which with factory.task = 'text' or 'image')")


def logits_for(model: nn.Module, example: torch.Tensor, name: str, accepted: str) -> torch.Tensor:
    """The logits `model` makes of `example` (eval mode, no gradients; training mode restored): its output tensor,
    or the `.logits` tensor of a Hugging Face output. Anything else is one EpipruneError line."""
    shape = tuple(example.shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as e:  # the user's network: whatever it raises becomes one line
        raise EpipruneError(f"model {name} fails on a batch of shape {shape}: {first_line(e)} ({accepted})") from None
    finally:
        model.train(was_training)
    logits = out if torch.is_tensor(out) else getattr(out, "logits", None)
    if not torch.is_tensor(logits):
        raise EpipruneError(f"model {name} returns a {type(out).__name__} for a batch of shape {shape}, which is no "
                            f"tensor of logits and has no .logits tensor ({accepted})")
    return logits


def check_text_output(model: nn.Module, name: str, num_classes: int, device: torch.device) -> None:
    """Require logits (2, T, num_classes) for a (2, T) batch of byte ids (zeros, T = CHECK_TOKENS)."""
    example = torch.zeros(2, CHECK_TOKENS, dtype=torch.long, device=device)
    accepted = (f"accepted: a language model that maps byte ids (N, T) to logits (N, T, {num_classes}), e.g. a "
                f"causal LM with vocab_size={num_classes}; the factory gets num_classes if it has a parameter of "
                "that name")
    logits = logits_for(model, example, name, accepted)
    if tuple(logits.shape) != (2, CHECK_TOKENS, num_classes):
        raise EpipruneError(f"model {name} maps byte ids of shape {tuple(example.shape)} to logits of shape "
                            f"{tuple(logits.shape)}, not (2, {CHECK_TOKENS}, {num_classes}) ({accepted})")
