"""PolicyConfig: every setting that decides what EarlyPruningPolicy keeps and when, as one typed record.

Its field names are the policy constructor's keyword names (a test holds them equal), so
`EarlyPruningPolicy.from_config(model, x, config)` passes them on without a mapping, and the defaults written here are
the constructor's. `TrainConfig` (run/config.py) declares for each of its policy options which field it feeds
(`policy=` in the option's metadata) and builds this record with `TrainConfig.policy_config()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from epiprune.costs.timing import LatencySettings
from epiprune.policy.indicator import DEFAULT_WINDOW, EARLYBIRD_QUEUE

DEFAULT_SMOOTH = 2  # issue 13's study: the mean of two EPI values moved the prune epoch least (docs/RESULTS.md)


@dataclass
class PolicyConfig:
    """What the policy keeps (budget, importance, channel multiple) and when it prunes (indicator, EPI's window r,
    threshold tau, average, peak and smoothing, the dense span, a fixed epoch); see EarlyPruningPolicy for each.
    budget: text as `--budget` takes it ('flops:0.5'), or a Budget. importance and indicator: registered names.
    latency, latency_table: what a latency budget's table times and where it lives (None: defaults).
    latency_closed_loop: measure the table's pick at the prune and correct it (policy.latency_loop)."""

    budget: str = "flops:0.5"
    importance: str = "taylor"
    indicator: str = "epi"
    window: int = DEFAULT_WINDOW
    threshold: float | str | None = None  # 'auto': the noise-floor threshold (step clock)
    epi_average: str = "layer"
    peak: int = 0
    smooth: int = DEFAULT_SMOOTH
    earlybird_queue: int = EARLYBIRD_QUEUE
    min_dense_epochs: float | None = None
    max_dense_epochs: float | None = None
    prune_at: float | None = None
    channel_multiple: int = 1
    min_channels: int = 1
    require_peak: bool = False
    seed: int = 0
    latency: LatencySettings | None = None
    latency_table: str | None = None
    epi_every: int = 0  # optimizer steps between probes (the step clock); 0: once per epoch
    steps_per_epoch: int | None = None  # the step clock's epoch length (its spans are in epochs)
    latency_closed_loop: bool = True
