"""ProbeRecord: what the policy saw at one probe, as plain data (checkpoints, summaries, metrics rows)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ProbeRecord:
    """What the policy saw at one probe (the end of a dense epoch on the epoch clock)."""

    epoch: int  # the (1-based) epoch the probe fell in
    epi: float | None  # the EPI the rule used (per layer or per group, as the policy averages)
    widths: list[int]  # kept channels per group of the dominant sub-network
    decision: str | None  # 'epi', 'earlybird', 'fixed', 'fallback' or None
    earlybird: float | None = None  # 1 - max recent mask distance (Early-Bird's test as a similarity)
    epi_layer: float | None = None  # EPI averaged over layers (the paper's formula)
    epi_group: float | None = None  # EPI averaged over channel groups (each group once)
    step: int | None = None  # optimizer steps seen at the probe (step clock)
    noise: float | None = None  # similarity of the sub-networks of the probe interval's two halves (step clock)
    threshold: float | None = None  # the threshold of this probe (fixed tau, or the auto threshold's running mean)
    compared: float | None = None  # the (smoothed) signal the rule compared ...
    compared_with: float | None = None  # ... with this (smoothed) threshold


EpochRecord = ProbeRecord  # the name before the step clock
