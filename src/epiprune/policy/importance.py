"""Channel importance accumulated over an epoch.

Taylor (Molchanov et al. 2019): for a channel c whose output activation is a = W x + b (conv, linear) or
a = gamma * x_hat + beta (BN), sum over batch and positions of a * dL/da equals sum over the channel's
parameter slice of theta * dL/dtheta, because a is linear in those parameters. So the first-order Taylor
score needs no activation hooks at all: it is read from the parameters' .grad after backward, which is exact,
free of any forward-pass cost, and unaffected by in-place activations that follow BN. Per step and per layer
we take |sum theta * grad| per channel, add over the layers the group couples, and accumulate over the epoch.

Magnitude: the group's L2 weight norm (torch-pruning's GroupMagnitudeImportance), computed on demand.
BN: the sum of |gamma| over the group's BatchNorm layers (network slimming, Liu et al. 2017; Early-Bird's
ranking), computed on demand; a group without BN is ranked by its L2 weight norm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from epiprune.registry import Registry

if TYPE_CHECKING:  # the graph is passed in; importing surgery here would load torch-pruning with the config
    from epiprune.surgery import PrunableGraph

# name -> Importance class; `--importance` lists these, TrainConfig validates against them
IMPORTANCES: Registry[type] = Registry("importance")
# the paper's published thresholds (section 4): tau for Taylor importance and for magnitude importance
TAYLOR_TAU = 0.944
MAGNITUDE_TAU = 0.983


class Importance(Protocol):
    """What the policy needs of an importance: per-channel scores of every group, accumulated over an epoch.

    name: how summaries and checkpoints call it. default_threshold: EPI's tau when the user gives none (the paper
    calibrated one per importance: 0.944 for Taylor, 0.983 for magnitude).
    bind(graph): called once by the policy with the PrunableGraph whose groups are to be scored (a user's own
    importance is created without the graph, which only the policy builds).
    needs_gradients: scores come from step() (the policy falls back to weight magnitudes while steps == 0).
    scores() only looks: calling it twice in an epoch gives the same scores and changes no state; one float64
    array per channel group, shape (group size,).
    state_dict() / load_state_dict(): plain data (and tensors) to resume mid-training.
    """

    name: str
    default_threshold: float
    needs_gradients: bool
    steps: int

    def bind(self, graph: PrunableGraph) -> None: ...

    def step(self, grad_scale: float = 1.0) -> None: ...

    def scores(self) -> list[np.ndarray]: ...

    def reset(self) -> None: ...

    def state_tensors(self) -> list[torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# what the policy checks a user's importance object for before binding it: the protocol's members, but `steps`,
# which is read only after bind()
IMPORTANCE_MEMBERS = tuple(name for name in (*Importance.__annotations__, *vars(Importance))
                           if not name.startswith("_") and name != "steps")


def _channel_taylor(module: nn.Module) -> torch.Tensor | None:
    """sum over the output-channel slice of theta * dL/dtheta, shape (C_out,); None without gradients."""
    total = None
    for param in (module.weight, getattr(module, "bias", None)):
        if param is None or param.grad is None:
            continue
        # one batched dot product per parameter (a single kernel) instead of a product and then a sum: this runs
        # for every layer at every step, and on a GPU the launches, not the arithmetic, are what it costs
        weight, grad = param.detach().float(), param.grad.detach().float()
        prod = torch.linalg.vecdot(weight.reshape(len(weight), -1), grad.reshape(len(grad), -1))
        total = prod if total is None else total.add_(prod)
    return total


class GraphImportance:
    """Base of the built-in importances: bound to a graph at construction, or later by the policy (bind)."""

    name = ""
    default_threshold = TAYLOR_TAU

    def __init__(self, graph: PrunableGraph | None = None) -> None:
        if graph is not None:
            self.bind(graph)

    def bind(self, graph: PrunableGraph) -> None:
        self.graph = graph
        self.reset()

    def reset(self) -> None:
        raise NotImplementedError

    @classmethod
    def create(cls, graph: PrunableGraph, seed: int = 0) -> Importance:
        """The registry's constructor: every importance is made from the graph and the run's seed."""
        return cls(graph)


@IMPORTANCES.register("taylor")
class TaylorAccumulator(GraphImportance):
    """Accumulates first-order Taylor importance per channel group. Call `step()` after each backward
    (before the optimizer zeroes the gradients); read `scores()` at the end of the epoch; `reset()`."""

    name = "taylor"
    needs_gradients = True

    def reset(self) -> None:
        # accumulate on the parameters' device: no host synchronisation per step on a GPU
        self.totals = [torch.zeros(g.size, dtype=torch.float64, device=g.root.weight.device)
                       for g in self.graph.groups]
        self.steps = 0

    @torch.no_grad()
    def step(self, grad_scale: float = 1.0) -> None:
        for gi, group in enumerate(self.graph.groups):
            for module, local, root in group.taylor_targets:
                # a target with its own rule (a transformer unit scored from its output projection's columns)
                score = module.channel_taylor() if hasattr(module, "channel_taylor") else _channel_taylor(module)
                if score is None:
                    continue
                score = score.abs_()
                if grad_scale != 1.0:
                    score /= grad_scale
                if len(local) == len(score) == group.size and local == root:  # the usual case: same positions
                    self.totals[gi].add_(score)  # float32 into the float64 total, cast inside the one kernel
                else:
                    self.totals[gi][root] += score[local].double()
        self.steps += 1

    def scores(self) -> list[np.ndarray]:
        return [t.cpu().numpy().copy() for t in self.totals]

    def state_tensors(self) -> list[torch.Tensor]:
        """The accumulators themselves, e.g. to all-reduce them across data-parallel ranks."""
        return self.totals

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "totals": [t.clone() for t in self.totals]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        for mine, saved in zip(self.totals, state["totals"], strict=True):
            mine.copy_(saved)


class _StepCounter(GraphImportance):
    """Importances that need no gradients: step() only counts, there is nothing to accumulate or all-reduce."""

    needs_gradients = False
    steps = 0
    default_threshold = MAGNITUDE_TAU

    def reset(self) -> None:
        self.steps = 0

    def step(self, grad_scale: float = 1.0) -> None:
        self.steps += 1

    def state_tensors(self) -> list[torch.Tensor]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]


@IMPORTANCES.register("magnitude")
class MagnitudeImportance(_StepCounter):
    """Group L2 weight norm per channel (no accumulation: weights are read when scores are asked for)."""

    name = "magnitude"

    def bind(self, graph: PrunableGraph) -> None:
        import torch_pruning as tp  # here, not at the top: the config imports this registry, not torch-pruning

        super().bind(graph)
        if hasattr(graph, "magnitude_scores"):
            return
        self.criterion = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)

    @torch.no_grad()
    def scores(self) -> list[np.ndarray]:
        if hasattr(self.graph, "magnitude_scores"):  # a TransformerGraph: per unit, no torch-pruning group
            return self.graph.magnitude_scores()
        result = []
        for g in self.graph.groups:
            pruner = self.graph.dg.get_pruner_of_module(g.root)
            group = self.graph.dg.get_pruning_group(g.root, pruner.prune_out_channels, list(range(g.size)))
            result.append(self.criterion(group).double().cpu().numpy())
        return result


@IMPORTANCES.register("bn")
class BatchNormScaleImportance(_StepCounter):
    """Sum of |gamma| over the BatchNorm layers of each group (no accumulation: read when scores are asked for);
    groups without a BN fall back to their L2 weight norm."""

    name = "bn"

    @torch.no_grad()
    def scores(self) -> list[np.ndarray]:
        fallback: list[np.ndarray] | None = None
        result = []
        for gi, g in enumerate(self.graph.groups):
            if not g.bn_targets:
                fallback = fallback or MagnitudeImportance(self.graph).scores()
                result.append(fallback[gi])
                continue
            total = np.zeros(g.size)
            for module, local, root in g.bn_targets:
                total[root] += module.weight.detach().abs().double().cpu().numpy()[local]
            result.append(total)
        return result


@IMPORTANCES.register("random")
class RandomImportance(_StepCounter):
    """Uniform random scores (the random structured-pruning baseline), reproducible from `seed`: one draw per
    epoch, so scores() gives the same scores however often it is called until reset() starts the next epoch."""

    name = "random"
    default_threshold = TAYLOR_TAU

    def __init__(self, graph: PrunableGraph | None = None, seed: int = 0) -> None:
        self.seed = seed
        super().__init__(graph)

    def bind(self, graph: PrunableGraph) -> None:
        self.graph = graph
        self.replay(0)

    @classmethod
    def create(cls, graph: PrunableGraph, seed: int = 0) -> Importance:
        return cls(graph, seed)

    def reset(self) -> None:
        super().reset()
        self.current: list[np.ndarray] | None = None  # this epoch's draw, once looked at

    def scores(self) -> list[np.ndarray]:
        if self.current is None:
            self.current = [self.rng.random(g.size) for g in self.graph.groups]
            self.draws += 1
        return [s.copy() for s in self.current]

    def replay(self, draws: int) -> None:
        """Put the generator where it was after `draws` epochs' draws, so that a resumed run draws the same
        rankings as an uninterrupted one (the count is checkpointed, not the generator's state)."""
        self.rng, self.draws, self.current = np.random.default_rng(self.seed), 0, None
        for _ in range(draws):
            self.scores()
            self.current = None

    def state_dict(self) -> dict[str, Any]:
        # draws of finished epochs only: this epoch's draw, if looked at, is drawn again (the same) after resuming
        return {"steps": self.steps, "draws": self.draws - (self.current is not None)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.replay(state.get("draws", 0))
        self.steps = state["steps"]


def make_importance(kind: str, graph: PrunableGraph, seed: int = 0) -> Importance:
    """The registered importance `kind` bound to `graph` (EpipruneError naming the accepted kinds otherwise)."""
    return IMPORTANCES.get(kind).create(graph, seed)
