"""epiprune: structural pruning during training, at the epoch the Early Pruning Indicator picks."""

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import EpipruneError
from .indicator import TriggerRule, early_pruning_indicator, structural_similarity
from .models import build_model
from .policy import EarlyPruningPolicy
from .serialization import load_preprocessing, load_pruned, save_pruned
from .subnetwork import Budget

__version__ = "0.1.0"
__all__ = ["Budget", "EarlyPruningPolicy", "EpipruneError", "TriggerRule", "build_model",
           "early_pruning_indicator", "load_checkpoint", "load_preprocessing", "load_pruned", "save_checkpoint",
           "save_pruned", "structural_similarity"]
