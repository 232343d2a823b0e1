"""epiprune: structural pruning during training, at the epoch the Early Pruning Indicator picks."""

from epiprune.costs.budget import Budget
from epiprune.errors import EpipruneError
from epiprune.io.serialization import load_preprocessing, load_pruned, save_pruned
from epiprune.models import build_model
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.policy.indicator import TriggerRule, early_pruning_indicator, structural_similarity
from epiprune.run.checkpoint import load_checkpoint, save_checkpoint

__version__ = "0.1.0"
__all__ = ["Budget", "EarlyPruningPolicy", "EpipruneError", "TriggerRule", "build_model",
           "early_pruning_indicator", "load_checkpoint", "load_preprocessing", "load_pruned", "save_checkpoint",
           "save_pruned", "structural_similarity"]
