"""epiprune: structural pruning during training, at the moment the Early Pruning Indicator picks.

The public API is imported lazily (PEP 562): `import epiprune.evidence.report` or `import epiprune.io.predict` runs
this file first, and must not load the training stack (torch-pruning, the trainer) on the way.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Budget": "epiprune.costs.budget",
    "EarlyPruningPolicy": "epiprune.policy.early_pruning",
    "EpipruneError": "epiprune.errors",
    "Preprocessing": "epiprune.io.preprocessing",
    "RawInputModel": "epiprune.io.preprocessing",
    "TriggerRule": "epiprune.policy.indicator",
    "build_model": "epiprune.models",
    "early_pruning_indicator": "epiprune.policy.indicator",
    "image_to_tensor": "epiprune.io.preprocessing",
    "load_checkpoint": "epiprune.run.checkpoint",
    "load_preprocessing": "epiprune.io.serialization",
    "load_pruned": "epiprune.io.serialization",
    "save_checkpoint": "epiprune.run.checkpoint",
    "save_pruned": "epiprune.io.serialization",
    "structural_similarity": "epiprune.policy.indicator",
}
__all__ = ["Budget", "EarlyPruningPolicy", "EpipruneError", "Preprocessing", "RawInputModel", "TriggerRule",
           "build_model", "early_pruning_indicator", "image_to_tensor", "load_checkpoint", "load_preprocessing",
           "load_pruned", "save_checkpoint", "save_pruned", "structural_similarity"]  # = sorted(_EXPORTS), tested

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from epiprune.costs.budget import Budget
    from epiprune.errors import EpipruneError
    from epiprune.io.preprocessing import Preprocessing, RawInputModel, image_to_tensor
    from epiprune.io.serialization import load_preprocessing, load_pruned, save_pruned
    from epiprune.models import build_model
    from epiprune.policy.early_pruning import EarlyPruningPolicy
    from epiprune.policy.indicator import TriggerRule, early_pruning_indicator, structural_similarity
    from epiprune.run.checkpoint import load_checkpoint, save_checkpoint


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'epiprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
