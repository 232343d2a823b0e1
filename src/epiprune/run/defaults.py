"""The run settings whose default depends on the network (issue 21): a CNN (or a user's own network) trains with
SGD as the CNN papers do; a registry transformer (vit_tiny, lm_tiny: pruned by attention heads and MLP neurons) as
transformers are trained, with AdamW, a short linear warm-up and the gradient norm clipped (SGD at lr 0.1 does not
train them). TrainConfig declares these fields with the default None ("the network's"), and fills in what was left
unset from here when it is made (TrainConfig.__post_init__): an explicit value always wins, and the run records the
values it used (summary.json's config, the checkpoint)."""

from __future__ import annotations

from typing import Any

from epiprune.models import is_transformer

# field -> value in a CNN's run (also a user network's: what it is is known only once it is built)
CNN_DEFAULTS: dict[str, Any] = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 0.0,
                                "clip_grad_norm": 0.0}
# field -> value in a registry transformer's run (warmup_epochs: see TRANSFORMER_WARMUP)
TRANSFORMER_DEFAULTS: dict[str, Any] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05,
                                        "clip_grad_norm": 1.0}
# a transformer's warm-up: this share of the main schedule (--epochs), as a fraction of epochs (a language model
# trains for about one epoch, a ViT for tens: a fixed number of epochs fits neither)
TRANSFORMER_WARMUP = 0.05


def model_defaults(model: object, epochs: object) -> dict[str, Any]:
    """The value of each network-dependent setting (CNN_DEFAULTS' fields) in a run of `model` over `epochs` epochs
    (a registry transformer's, else a CNN's). A value of a wrong type (refused later by TrainConfig.validate) gets
    the CNN's."""
    if not (isinstance(model, str) and is_transformer(model)):
        return dict(CNN_DEFAULTS)
    # rounded: 0.05 x 12 is 0.6, not 0.6000000000000001, in the recorded config
    share = round(TRANSFORMER_WARMUP * epochs, 6) if isinstance(epochs, int) and not isinstance(epochs, bool) else 0.0
    return {**TRANSFORMER_DEFAULTS, "warmup_epochs": share}


def describe(name: str) -> str:
    """The help text's '(default: ...)' of network-dependent field `name`, e.g. '(default: 0.1, or 0.001 for the
    transformers vit_tiny and lm_tiny)'."""
    def text(value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    transformer = f"{TRANSFORMER_WARMUP:g} x --epochs" if name == "warmup_epochs" else text(TRANSFORMER_DEFAULTS[name])
    return f"(default: {text(CNN_DEFAULTS[name])}, or {transformer} for the transformers vit_tiny and lm_tiny)"
