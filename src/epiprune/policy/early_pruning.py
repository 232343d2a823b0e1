"""EarlyPruningPolicy: what a training loop calls to prune at the moment the Early Pruning Indicator picks.

On the step clock (epi_every=N) the policy probes every N optimizer steps and prunes inside step():

    policy = EarlyPruningPolicy(model, example_inputs, Budget("flops", 0.5), epi_every=24,
                                steps_per_epoch=len(loader), threshold="auto")
    for epoch in range(epochs):
        for x, y in loader:
            loss_fn(model(x), y).backward()
            policy.step(optimizer=optimizer)  # after backward; True at the step it prunes (grads cut too)
            optimizer.step(); optimizer.zero_grad()

On the epoch clock (epi_every=0) it probes once per epoch: call policy.step() every step and
`policy.end_epoch(optimizer)` after each epoch (True in the epoch it prunes).

Why this file is over ~400 lines: it is the one class a user holds, and what is left here is what shares its
fields (the constructor's set-up in order, probe, prune, state and summary); its parts with a job of their own
already live beside it (clock, replay, records, variants, latency_loop, subnetwork, indicator).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from epiprune import distributed
from epiprune.costs.budget import Budget
from epiprune.costs.counting import counting_cost_models
from epiprune.costs.latency_build import load_or_build
from epiprune.costs.latency_model import LatencyCostModel
from epiprune.costs.model import Cost
from epiprune.costs.timing import LatencySettings
from epiprune.errors import EpipruneError
from epiprune.policy.clock import AUTO, cannot_fire_before_fallback
from epiprune.policy.config import PolicyConfig
from epiprune.policy.importance import BatchNormScaleImportance, Importance, MagnitudeImportance, make_importance
from epiprune.policy.indicator import (
    Indicator,
    TriggerRule,
    early_pruning_indicator,
    earlybird_stability,
    structural_similarity,
)
from epiprune.policy.latency_loop import LatencyLoop
from epiprune.policy.records import ProbeRecord
from epiprune.policy.replay import RecordedProbe, replay_epochs, replay_probes
from epiprune.policy.subnetwork import check_budget, normalise_per_group, select_subnetwork, widths_of
from epiprune.policy.variants import make_clock, resolve_variants
from epiprune.surgery import make_graph


class EarlyPruningPolicy:
    """Tracks the dominant sub-network per epoch, computes EPI, and prunes `model` in place when triggered.

    model: the network to prune; example_inputs: one sample shaped (1, C, H, W) for tracing and FLOPs.
    budget: fraction of the dense FLOPs, parameters or measured latency to keep (Budget(latency=0.5)).
    latency, latency_table: for a latency budget, what to time (LatencySettings: target 'train' or 'infer', batch
    size, memory format, autocast dtype; noise_limit, the timing spread above which a build is refused, default
    0.5: raise it on a busy machine) and where the table lives (default: a cache file named by its key);
    a missing or outdated table is measured now, on the device of example_inputs (minutes on a CPU).
    importance: a registered name, 'taylor' (gradients, accumulated by step()), 'magnitude' (weights, read at epoch
    end), 'bn' (BN |gamma|, network slimming) or 'random' (a baseline); or your own Importance object (bound to the
    policy's graph with bind(graph); its default_threshold is tau when threshold is None).
    indicator: a registered name or an Indicator object (policy.indicator.Indicator); 'epi' (default);
    'earlybird' (You et al. 2020 as published: masks keep the fraction
    sqrt(budget) of all channels with the largest BN |gamma|, prune once the last `earlybird_queue` distances
    between successive masks are all below epsilon = 1 - threshold, default 0.1); 'earlybird-budget' (the
    earlier variant: masks of the budget's dominant sub-network, over the EPI window, distances <= epsilon); or
    'none' (track EPI, never prune: the dense reference).
    window, threshold: EPI's r and tau (threshold None: the published tau for the importance).
    epi_average: 'layer' (the paper: a group spanning k conv/linear layers counts k times) or 'group'.
    peak, smooth: see TriggerRule (the paper's peak condition over `peak` earlier points; a moving mean of EPI).
    smooth = 2 by default: it moved the prune epoch least when tau moved by 0.005 or the numerics changed, at no
    loss of accuracy (docs/RESULTS.md, issue 13's study); it also means EPI fires at epoch r + 2 at the earliest.
    min_dense_epochs / max_dense_epochs: earliest EPI trigger / latest epoch (then prune anyway, 'fallback').
    prune_at: prune after exactly this many dense epochs instead of asking EPI.
    epi_every, steps_per_epoch: the step clock (policy.clock): probe every `epi_every` optimizer steps from step(),
    the epochs above being fractional (steps / steps_per_epoch) and met at the first probe at or after them;
    0 (default): the epoch clock, end_epoch() probes. threshold 'auto' (step clock, Taylor importance): the running
    mean of the similarity of the sub-networks selected from each probe interval's two halves (the noise floor;
    see policy/clock.py), compared with EPI under the same smoothing.
    channel_multiple: keep a multiple of this many channels per group (e.g. 8: faster kernels, coarser budget).
    latency_closed_loop: with a latency budget, time the table's pick against the dense model at the prune and
    correct it until it measures within [F - 0.03, F] (policy.latency_loop; the record: `latency_loop.result`).
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, budget: Budget | None = None,
                 importance: str | Importance = PolicyConfig.importance, window: int = PolicyConfig.window,
                 threshold: float | None = None, min_dense_epochs: int | None = None,
                 max_dense_epochs: int | None = None, prune_at: int | None = None,
                 require_peak: bool = PolicyConfig.require_peak, min_channels: int = PolicyConfig.min_channels,
                 ignored_layers: Sequence[nn.Module] = (), indicator: str | Indicator = PolicyConfig.indicator,
                 seed: int = PolicyConfig.seed, channel_multiple: int = PolicyConfig.channel_multiple,
                 latency: LatencySettings | None = None, latency_table: str | Path | None = None,
                 log: Callable[[str], None] = print, progress: bool = True,
                 epi_average: str = PolicyConfig.epi_average, peak: int = PolicyConfig.peak,
                 smooth: int = PolicyConfig.smooth, earlybird_queue: int = PolicyConfig.earlybird_queue,
                 epi_every: int = PolicyConfig.epi_every, steps_per_epoch: int | None = None,
                 latency_closed_loop: bool = PolicyConfig.latency_closed_loop) -> None:
        # Long on purpose: the set-up steps in their order (variants, rule, graph, cost model, budget check,
        # importance), each refusing bad input before the next, more expensive one runs.
        settings = dict(locals())  # the keyword arguments, recorded as a PolicyConfig below (names are its fields)
        importance_type, kind = resolve_variants(importance, indicator, epi_average, earlybird_queue)
        self.indicator_kind = kind
        self.indicator = kind.name
        self.epi_average = epi_average
        self.earlybird_queue = earlybird_queue
        self.clock = make_clock(epi_every, steps_per_epoch)
        self.auto_threshold = threshold == AUTO
        if self.auto_threshold and (self.clock is None or not importance_type.needs_gradients):
            raise EpipruneError(f"threshold {AUTO!r} needs the step clock and a gradient importance (accepted: "
                                f"epi_every >= 2 with importance taylor, or a number in (0, 1])")
        if threshold is None:
            threshold = kind.default_threshold(importance_type)
        self.model = model
        self.budget = budget or Budget()
        self.importance_kind = importance_type.name or type(importance).__name__  # `name` is a checked member
        self.config = PolicyConfig(**{f.name: settings[f.name] for f in fields(PolicyConfig)})
        self.config.budget, self.config.importance, self.config.indicator = \
            str(self.budget), self.importance_kind, kind.name
        signal_window = earlybird_queue if kind.bn_masks else window
        if self.clock is None:
            for name, value in (("min dense epochs", min_dense_epochs), ("max dense epochs", max_dense_epochs),
                                ("prune-at epoch", prune_at)):
                if value is not None and value != int(value):
                    raise EpipruneError(f"{name} {value:g} is not a whole number of epochs (accepted: fractions "
                                        "of an epoch on the step clock, epi_every >= 2)")
        if min_dense_epochs is None:  # EPI (Early-Bird's test) is defined from epoch r + 1 (probe r + 1)
            min_dense_epochs = 0 if prune_at is not None or self.clock is not None else signal_window + 1
            if max_dense_epochs is not None:  # a short schedule: the fallback comes first
                min_dense_epochs = min(min_dense_epochs, max_dense_epochs)
        self.rule = TriggerRule(window=window,
                                threshold=None if self.auto_threshold else threshold,
                                min_dense_epochs=min_dense_epochs,
                                max_dense_epochs=None if prune_at is not None else max_dense_epochs,
                                prune_at=prune_at, require_peak=require_peak, peak=peak,
                                smooth=smooth if kind.smoothed else 1, strict=kind.strict)
        self.min_channels = min_channels
        self.channel_multiple = channel_multiple
        self.graph = make_graph(model, example_inputs, ignored_layers)  # a TransformerGraph for heads and neurons
        self.group_names = self.graph.names
        self.dense_widths = self.graph.widths()
        self.partitions = self.graph.partitions()  # grouped convolutions: kept channels spread evenly over blocks
        self.dense_flops, self.dense_params = self.graph.count()
        self.latency_table_path: Path | None = None
        self.cost: Cost
        if self.budget.kind == "latency":
            self.cost, self.latency_table_path = load_or_build(self.graph, latency or LatencySettings(), latency_table,
                                                               progress, log, select=select_subnetwork)
        else:
            self.cost = counting_cost_models(self.graph)[self.budget.kind]
        self.target = self.budget.fraction * self.cost.dense
        # the same floor as every later selection, channel_multiple included: refuse now, not after an epoch
        check_budget(self.cost, self.target, min_channels, channel_multiple, budget=str(self.budget),
                     blocks=[g.blocks for g in self.graph.groups])
        self.graph.self_check()
        self.latency_loop = LatencyLoop(self.graph, self.cost, self.budget.fraction, min_channels, channel_multiple,
                                        latency or LatencySettings(), log) \
            if latency_closed_loop and self.budget.kind == "latency" else None
        if isinstance(importance, str):
            self.importance: Importance = make_importance(importance, self.graph, seed)
        else:
            importance.bind(self.graph)
            self.importance = importance
        self.layer_weights = [g.layers for g in self.graph.groups]
        self.history: list[ProbeRecord] = []
        self.masks: list[np.ndarray] = []  # concatenated keep-masks per dense epoch (for Early-Bird)
        self.last_scores: list[np.ndarray] | None = None  # the scores of the latest dominant sub-network
        self.last_half: list[np.ndarray] | None = None  # step clock: the first half's scores of the latest probe
        self._pending: tuple[list[np.ndarray], str] | None = None  # replay_probes' prune, done by the next step()
        self.epoch = 0
        self.prune_epoch: int | None = None
        self.prune_step: int | None = None  # the optimizer step it pruned at (step clock)
        self.trigger: str | None = None
        self.kept: dict[str, list[int]] | None = None  # kept channel indices per group, once pruned

    @classmethod
    def from_config(cls, model: nn.Module, example_inputs: torch.Tensor, config: PolicyConfig, *,
                    ignored_layers: Sequence[nn.Module] = (), log: Callable[[str], None] = print,
                    progress: bool = True) -> EarlyPruningPolicy:
        """The policy a PolicyConfig describes (what `epiprune train` builds from its TrainConfig); the arguments
        after `config` are how it runs, not what it decides."""
        settings = {f.name: getattr(config, f.name) for f in fields(config)}
        if isinstance(config.budget, str):
            settings["budget"] = Budget.parse(config.budget)
        return cls(model, example_inputs, **settings, ignored_layers=ignored_layers, log=log, progress=progress)

    @property
    def pruned(self) -> bool:
        return self.kept is not None

    @property
    def epi_history(self) -> list[float | None]:
        return [r.epi for r in self.history]

    def step(self, grad_scale: float = 1.0, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Accumulate importance from the current gradients (call after backward, before the optimizer steps and
        zeroes them). Under DistributedDataParallel the gradients are already averaged across ranks after backward.
        grad_scale: the loss scale when gradients are still scaled (AMP GradScaler.get_scale()); 1 otherwise.
        On the step clock every `epi_every`-th call is a probe and may prune: then it returns True, the model is
        smaller, its gradients are cut with it (the optimizer's step that follows updates the kept weights) and
        `optimizer`, if given, points at the new tensors with its state carried (without it, make a new one)."""
        if self.pruned:
            return False
        if self._pending is not None:  # a replayed probe (replay_probes): this step prunes as it did from scratch
            masks, decision = self._pending
            self._pending = None
            self.clock.tick()
            self._prune(masks, optimizer, decision)
            return True
        self.importance.step(grad_scale)
        clock = self.clock
        if clock is None:
            return False
        clock.tick()
        if clock.at_half and self.importance.needs_gradients:
            distributed.all_reduce_mean_(self.importance.state_tensors())
            clock.half = self.importance.scores()
        return clock.at_probe and self._probe(None, optimizer)

    def current_scores(self) -> list[np.ndarray]:
        """Per-channel importance of every group seen so far this epoch (weights if no gradients were seen)."""
        if self.importance.steps == 0 and self.importance.needs_gradients:
            return MagnitudeImportance(self.graph).scores()  # no gradients seen yet: fall back to weights
        return self.importance.scores()

    def select(self, scores: Sequence[np.ndarray], target: float | None = None) -> list[np.ndarray]:
        """Boolean keep-mask per group of the sub-network that `scores` rank first under the budget. Scores are
        importances, >= 0 and finite (selection divides each group's by their mean: a negative scale would invert
        the ranking), one array per group; anything else is refused in one line naming the importance."""
        if len(scores) != len(self.group_names):
            raise EpipruneError(f"importance {self.importance_kind!r} gave scores for {len(scores)} groups (accepted: "
                                f"one array per channel group, {len(self.group_names)})")
        for name, group_scores in zip(self.group_names, scores, strict=True):
            values = np.asarray(group_scores, dtype=np.float64)
            if values.size and not (np.all(np.isfinite(values)) and values.min() >= 0):
                raise EpipruneError(f"importance {self.importance_kind!r} gave group {name} scores from "
                                    f"{values.min():g} to {values.max():g} (accepted: finite scores >= 0)")
        target = self.target if target is None else target  # another target: the latency closed loop's
        return select_subnetwork(normalise_per_group(list(scores)), self.cost, target, self.min_channels,
                                 self.channel_multiple, self.partitions)

    def dominant_subnetwork(self) -> list[np.ndarray]:
        """Boolean keep-mask per group: what would be kept if the model were pruned now."""
        return self.select(self.current_scores())

    def earlybird_mask(self) -> np.ndarray:
        """Early-Bird's channel mask (concatenated over groups): the fraction sqrt(budget) of all channels with the
        largest BN |gamma| (one global threshold, as in network slimming; sqrt: a uniform width ratio r keeps
        about r^2 of the FLOPs). A mask of the dense model: refused once the policy has pruned."""
        if self.pruned:
            raise EpipruneError("the model is already pruned (Early-Bird's mask is of the dense model)")
        scores = np.concatenate(BatchNormScaleImportance(self.graph).scores())
        keep = max(1, round(np.sqrt(self.budget.fraction) * len(scores)))
        mask = np.zeros(len(scores), dtype=bool)
        mask[np.argsort(-scores, kind="stable")[:keep]] = True
        return mask

    def end_epoch(self, optimizer: torch.optim.Optimizer | None = None,
                  scores: Sequence[np.ndarray] | None = None) -> bool:
        """Close a training epoch: extract the dominant sub-network, update EPI, prune if the rule says so.
        scores: importance recorded earlier (one array per group) to use instead of what step() accumulated.
        Returns True in the epoch it prunes (the model is smaller and the optimizer points at the new tensors).
        On the step clock it only counts the epoch (step() probes)."""
        self.epoch += 1
        if self.pruned or (self.clock is not None and scores is None):
            return False
        return self._probe(scores, optimizer)

    def _probe(self, scores: Sequence[np.ndarray] | None, optimizer: torch.optim.Optimizer | None) -> bool:
        """Observe (see _observe) and prune if the rule says so; True when it pruned."""
        decision, masks = self._observe(scores)
        if decision is None:
            return False
        self._prune(masks, optimizer, decision)
        return True

    def replay(self, recorded: Sequence[Sequence[np.ndarray]],
               before_prune: Callable[[int], torch.optim.Optimizer | None]) -> int | None:
        """Decide on importance recorded epoch by epoch along a dense trajectory (recorded[e - 1]: the scores of
        epoch e), exactly as end_epoch would have decided then, and prune at the epoch the rule picks. Just before
        the surgery, before_prune(epoch) must put that epoch's weights into the model and return the optimizer to
        carry (or None). This branches a pruned run from a dense one without training the dense epochs again.
        Returns the prune epoch, or None if the rule never fires within the recorded epochs."""
        return replay_epochs(self, recorded, before_prune)

    def replay_probes(self, probes: Sequence[RecordedProbe], before_prune: Callable[[int], None]) -> int | None:
        """The step clock's replay: decide on the probes recorded along a dense trajectory (policy.replay's
        RecordedProbe: step, the interval's scores and its first half's), exactly as step() would have decided,
        until the rule fires at a probe step s. Then before_prune(s) must put the run as it was after s - 1
        optimizer steps into the model (and the loop's optimizer, schedule and data position), and the next
        step() call, after the backward of step s, prunes with the replayed sub-network: the step's gradients are
        cut with the weights as in the run from scratch. Returns s, or None if the rule never fires."""
        return replay_probes(self, probes, before_prune)

    def _observe(self, scores: Sequence[np.ndarray] | None) -> tuple[str | None, list[np.ndarray]]:
        """This probe's dominant sub-network, EPI, Early-Bird signal and (step clock) noise floor, recorded in
        history; the rule's decision."""
        masks = self._synchronised_subnetwork(scores)
        widths = widths_of(masks)
        history = [r.widths for r in self.history] + [widths]
        epi_layer = early_pruning_indicator(history, self.rule.window, self.layer_weights)
        epi_group = early_pruning_indicator(history, self.rule.window)
        epi = epi_layer if self.epi_average == "layer" else epi_group
        kind = self.indicator_kind
        self.masks.append(self.earlybird_mask() if kind.bn_masks else np.concatenate(masks))
        eb = earlybird_stability(self.masks, self.earlybird_queue if kind.bn_masks else self.rule.window)
        clock = self.clock
        noise = self._noise_similarity() if clock is not None else None
        if clock is not None and noise is not None:
            clock.noise.append(noise)
        threshold = clock.threshold() if self.auto_threshold else self.rule.threshold
        signals = [*(getattr(r, kind.signal) for r in self.history), {"epi": epi, "earlybird": eb}[kind.signal]]
        thresholds = [*(r.threshold for r in self.history), threshold]
        compared, compared_with = self.rule.compared(signals, thresholds)
        decision = None
        if kind.prunes:
            decision = self.rule.decide(self.epoch if clock is None else clock.epochs, signals, thresholds)
            decision = kind.trigger if decision == "epi" else decision
        decision = distributed.agree_with_rank0(decision, "pruning decision")
        epoch = self.epoch if clock is None else clock.epoch
        self.history.append(ProbeRecord(epoch, epi, widths, decision, eb, epi_layer, epi_group,
                                        None if clock is None else clock.step, noise, threshold, compared,
                                        compared_with))
        self.importance.reset()
        if clock is not None:
            self.last_half, clock.half = clock.half, None
        return decision, masks

    def epi_cannot_fire_before_fallback(self) -> str | None:
        """One line saying why the indicator cannot fire before the fallback under these settings, or None."""
        if not self.indicator_kind.prunes:
            return None
        probes = self.rule.window + self.rule.smooth if not self.indicator_kind.bn_masks else self.earlybird_queue + 1
        return cannot_fire_before_fallback(self.indicator, self.rule, self.clock, probes)

    def _noise_similarity(self) -> float | None:
        """Similarity (as EPI averages it) of the sub-networks selected from the two halves of the probe interval
        that ends now; None without a snapshot at the half (no gradient importance, or the first interval of a
        resumed run that started after its half)."""
        half = self.clock.half
        if half is None or not self.importance.needs_gradients:
            return None
        second = [np.maximum(full - first, 0.0) for full, first in zip(self.last_scores, half, strict=True)]
        a, b = widths_of(self.select(half)), widths_of(self.select(second))
        weights = self.layer_weights if self.epi_average == "layer" else None
        return structural_similarity(a, b, weights)

    def prune_now(self, optimizer: torch.optim.Optimizer | None = None, trigger: str = "fixed") -> None:
        """Prune immediately to the budget from the importance seen so far (weights if none)."""
        if self.pruned:
            raise EpipruneError("the model is already pruned (a policy prunes once)")
        self._prune(self._synchronised_subnetwork(), optimizer, trigger)

    def _synchronised_subnetwork(self, scores: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """The dominant sub-network from importance averaged over data-parallel ranks (or from `scores`); rank
        0's masks are broadcast as a safeguard and every rank must have computed the same (no-ops in one process)."""
        if scores is None:
            distributed.all_reduce_mean_(self.importance.state_tensors())
            scores = self.current_scores()
        self.last_scores = [np.asarray(s, dtype=np.float64).copy() for s in scores]
        masks = self.select(self.last_scores)
        distributed.agree_with_rank0([np.flatnonzero(m).tolist() for m in masks], "dominant sub-network")
        return masks

    def _prune(self, masks: list[np.ndarray], optimizer: torch.optim.Optimizer | None, trigger: str) -> None:
        if self.latency_loop is not None and self.last_scores is not None:  # measure the table's pick, correct it
            masks = self.latency_loop.correct(masks, lambda target: self.select(self.last_scores or [], target))
        self.graph.prune(masks, optimizer)
        self.importance.reset()  # accumulators now have the pruned widths (and are no longer used)
        self.kept = {name: np.flatnonzero(m).tolist() for name, m in zip(self.group_names, masks, strict=True)}
        # on the step clock a prune before the first step (at initialisation) is at epoch 0, step 0
        self.prune_epoch = self.epoch if self.clock is None else self.clock.epoch if self.clock.step else 0
        self.trigger = trigger
        self.prune_step = None if self.clock is None else self.clock.step

    def predicted_latency_ms(self, widths: Sequence[int] | None = None) -> float | None:
        """The latency cost model's milliseconds for `widths` (default: the model's current widths); None without a
        latency budget."""
        if not isinstance(self.cost, LatencyCostModel):
            return None
        return self.cost(np.asarray(self.widths() if widths is None else widths))

    def widths(self) -> list[int]:
        """Current channels per group of the model itself."""
        return self.graph.widths()

    def count(self) -> tuple[int, int]:
        """(FLOPs, params) per sample of the model as it is now."""
        return self.graph.count()

    def state_dict(self) -> dict:
        """Plain data (and tensors) describing the policy: enough to resume before or after the prune event."""
        return {"budget": str(self.budget), "importance": self.importance_kind, "group_names": self.group_names,
                "indicator": self.indicator, "masks": [torch.as_tensor(m) for m in self.masks],
                "epoch": self.epoch, "history": [asdict(r) for r in self.history], "prune_epoch": self.prune_epoch,
                "trigger": self.trigger, "kept": self.kept, "prune_step": self.prune_step,
                "clock": None if self.clock is None else self.clock.state_dict(),
                **{f"importance_{key}": value for key, value in self.importance.state_dict().items()},
                **({} if self.latency_loop is None else {"latency_loop": self.latency_loop.state_dict()})}

    def load_state_dict(self, state: dict) -> None:
        """Restore a policy built on the same dense model. If the saved policy had pruned, the same channels are
        removed from the model now (without an optimizer: load the optimizer's state after this)."""
        for key, mine in (("budget", str(self.budget)), ("importance", self.importance_kind),
                          ("group_names", self.group_names), ("indicator", self.indicator)):
            if state.get(key) != mine:
                raise EpipruneError(f"policy state does not match: {key} {state.get(key)!r} vs {mine!r}")
        if self.pruned and state["kept"] != self.kept:
            raise EpipruneError("policy state was pruned differently from this (already pruned) model")
        if state["kept"] is not None and not self.pruned:
            self.graph.prune([state["kept"][name] for name in self.group_names])
        self.kept = state["kept"]
        self.epoch, self.prune_epoch, self.trigger = state["epoch"], state["prune_epoch"], state["trigger"]
        self.prune_step = state.get("prune_step")
        if (state.get("clock") is None) != (self.clock is None):
            raise EpipruneError("policy state does not match: one clock probes per epoch, the other every N steps "
                                "(accepted: the same epi_every)")
        if self.clock is not None:
            self.clock.load_state_dict(state["clock"])
        self.history = [ProbeRecord(**r) for r in state["history"]]
        self.masks = [m.numpy() for m in state.get("masks", [])]
        if self.latency_loop is not None:  # the closed loop's record, kept across a resume after the prune
            self.latency_loop.load_state_dict(state.get("latency_loop"))
        self.importance.reset()
        if not self.pruned:  # importance_steps, importance_totals (taylor), importance_draws (random)
            self.importance.load_state_dict({key.removeprefix("importance_"): value for key, value in state.items()
                                             if key.startswith("importance_")})

    def summary(self) -> dict:
        return {"budget": str(self.budget), "importance": self.importance_kind, "indicator": self.indicator,
                "window": self.rule.window, "epi_average": self.epi_average, "peak": self.rule.peak,
                "smooth": self.rule.smooth, "epi_every": 0 if self.clock is None else self.clock.every,
                "threshold": AUTO if self.auto_threshold else self.rule.threshold, "prune_epoch": self.prune_epoch,
                "prune_step": self.prune_step, "trigger": self.trigger,
                "history": [asdict(r) for r in self.history]}
