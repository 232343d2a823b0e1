"""Timing on the device: what a latency table times (LatencySettings), the median of repeated runs, and one
whole-model step. 'train' = forward + backward of a training batch (whole model: plus the loss and an SGD step),
since EPI's point is a cheaper training run; 'infer' = forward only, eval mode, no grad. Every timing: warm-up
runs, then the median of `repeats`; on a GPU after torch.cuda.synchronize(). Times are in milliseconds.
Two models compared (a candidate against the dense one): paired_ratio, interleaved pairs and their median ratio."""

from __future__ import annotations

import contextlib
import copy
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from epiprune.errors import EpipruneError
from epiprune.numerics import AMP_DTYPES, autocast, in_memory_format

TARGETS = ("train", "infer")
# The default limit on a table build's noise (costs.layer_ratios.check_noise): refuse a build whose pair ratios spread
# more than this (median over grid points of IQR / median of a point's pair ratios). Measured on this project's 2-core
# CPU with other engineers' test suites running (load average 2.7-4; docs/BENCHMARKS.md, "Latency budget, closed
# loop"): at one thread 0.10 (the tests' tiny net, batch 16) and 0.17 (ResNet-20, batch 16), while the references
# themselves spread 0.30 and 0.71 (the load moving, which the ratios cancel); at two threads, where two intra-op
# threads wait for each other behind the other jobs, 0.74 and 0.94, with single references spread up to 20x their
# median: those timings say nothing about the layer. A user may raise it (LatencySettings.noise_limit,
# --latency-noise-limit; issue 23: two threads on a busy machine could not build a table at all): it decides whether a
# build is accepted, not what is measured, so it is no part of a table's key, and the closed loop at the prune still
# corrects the table's pick against measured steps.
MAX_PAIR_RATIO_SPREAD = 0.5


def check_noise_limit(value: object, name: str = "latency noise limit") -> float:
    """`value` as a noise limit (a fraction: the largest pair-ratio spread a table build may have), or one
    EpipruneError line naming it (as `name`, e.g. the option) and what is accepted: a finite number > 0."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None or not (math.isfinite(number) and number > 0):
        shown = f"{number:g}" if number is not None else repr(value)
        raise EpipruneError(f"{name} {shown} is not a number > 0 (accepted: the largest spread of a latency table "
                            f"build's timings as a fraction, e.g. {MAX_PAIR_RATIO_SPREAD} = 50%, the default; higher "
                            "accepts a table built under load)")
    return float(number)


@dataclass(frozen=True)
class LatencySettings:
    """What a latency table times, and how.

    target: 'train' (forward + backward at batch_size) or 'infer' (forward only). batch_size: samples per timed
    batch. channels_last / amp: the memory format and autocast dtype ('none', 'bf16', 'fp16') of the run the
    table must match. repeats / warmup: timed and untimed runs per point (the median is kept). grid_points:
    about this many measured channel counts per wide axis (every channel up to it). noise_limit: a build whose
    timings spread more than this is refused (a fraction, see MAX_PAIR_RATIO_SPREAD; higher accepts a table built
    under load); it is not in the table's key (costs.latency_table.table_key), as it changes no timing."""

    target: str = "train"
    batch_size: int = 128
    channels_last: bool = False
    amp: str = "none"
    repeats: int = 3
    warmup: int = 1
    grid_points: int = 12
    noise_limit: float = MAX_PAIR_RATIO_SPREAD

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise EpipruneError(f"unknown latency target {self.target!r} (accepted: {', '.join(TARGETS)})")
        if self.amp not in AMP_DTYPES:
            raise EpipruneError(f"unknown amp dtype {self.amp!r} (accepted: {', '.join(AMP_DTYPES)})")
        for name, value, low in (("latency batch", self.batch_size, 1), ("latency repeats", self.repeats, 1),
                                 ("latency warm-up", self.warmup, 0), ("latency grid points", self.grid_points, 2)):
            if not isinstance(value, int) or value < low:
                raise EpipruneError(f"{name} {value!r} is too small (accepted: an integer >= {low})")
        check_noise_limit(self.noise_limit)


def device_name(device: torch.device) -> str:
    """A human-readable name of the processor that runs the timings (the GPU's, or the CPU model)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(run: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of run() in milliseconds (GPU: between two synchronisations)."""
    _synchronize(device)
    start = time.perf_counter()
    run()
    _synchronize(device)
    return 1000.0 * (time.perf_counter() - start)


def median_ms(run: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of run() in milliseconds, after `warmup` untimed calls (GPU: timed after a sync)."""
    for _ in range(warmup):
        run()
    return statistics.median(time_once(run, device) for _ in range(repeats))


def _logits(output: object) -> torch.Tensor:
    """A network's logits: the tensor itself or a Hugging Face output's `.logits`."""
    return getattr(output, "logits", output)


def prepare_step(model: nn.Module, input_shape: Sequence[int], settings: LatencySettings, token_ids: bool = False
                 ) -> Callable[[], None]:
    """A function running one step of a deep copy of `model` as `settings` describe it (the caller's weights, BN
    statistics and gradients are untouched). train: forward, cross-entropy, backward, SGD step with momentum;
    infer: eval-mode forward without autograd. input_shape: one sample's (C, H, W), or (T,) with token_ids; the
    batch is settings.batch_size random samples: pixels, or token ids below the vocabulary (the logits' last
    dimension: a language model predicts its own tokens) with random next-token targets (batch, T)."""
    device = next(model.parameters()).device
    clone = copy.deepcopy(model)
    clone = in_memory_format(clone, settings.channels_last)
    if token_ids:
        with torch.no_grad():
            vocab = _logits(clone(torch.zeros(1, *input_shape, dtype=torch.long, device=device))).shape[-1]
        x = torch.randint(0, vocab, (settings.batch_size, *input_shape), device=device)
    else:
        x = in_memory_format(torch.randn(settings.batch_size, *input_shape, device=device), settings.channels_last)
    if settings.target == "infer":
        clone.eval()

        def run() -> None:
            with torch.no_grad(), autocast(device, settings.amp):
                clone(x)
        return run
    clone.train()
    optimizer = torch.optim.SGD(clone.parameters(), lr=1e-6, momentum=0.9)
    if token_ids:
        y = torch.randint(0, vocab, tuple(x.shape), device=device)
    else:
        with torch.no_grad():
            classes = _logits(clone(x[:2])).shape[1]
        y = torch.randint(0, classes, (settings.batch_size,), device=device)

    def run_train() -> None:
        with autocast(device, settings.amp):
            logits = _logits(clone(x))
            if token_ids:  # (batch, T, vocab) against (batch, T), as the text task's loss
                loss = nn.functional.cross_entropy(logits.flatten(0, -2).float(), y.reshape(-1))
            else:
                loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return run_train


def time_model_step(model: nn.Module, input_shape: Sequence[int], settings: LatencySettings,
                    repeats: int = 10, warmup: int = 3, token_ids: bool = False) -> float:
    """Milliseconds of one step of `model` as `settings` describe it (see prepare_step), the median of `repeats`
    after `warmup` untimed steps."""
    device = next(model.parameters()).device
    return median_ms(prepare_step(model, input_shape, settings, token_ids), device, warmup, repeats)


# runner(model) -> a function that runs one step of `model` and returns its milliseconds
StepRunner = Callable[[nn.Module], Callable[[], float]]


@dataclass
class PairedTiming:
    """Dense and candidate steps timed in one interleaved loop. dense_ms / candidate_ms: medians (milliseconds);
    ratio: the median of candidate / dense over the pairs; spread: (max - min) / median of those pair ratios;
    uncertainty: about the 95% half-width of that median, 1.58 x IQR / sqrt(pairs) (a box plot's notch, McGill et
    al. 1978), in units of the ratio."""

    dense_ms: float
    candidate_ms: float
    ratio: float
    spread: float
    pairs: int
    uncertainty: float = 0.0


def paired_ratio(dense: Callable[[], float], candidate: Callable[[], float], pairs: int, warmup: int = 1,
                 min_pairs: int | None = None, settled: Callable[[PairedTiming], bool] | None = None
                 ) -> PairedTiming:
    """Time dense and candidate alternately (`warmup` untimed pairs, then up to `pairs` timed ones), each call
    returning one step's milliseconds; the median pair ratio is robust to a load that changes between pairs.
    Sequential: with `settled`, timing stops at the first pair count from `min_pairs` (default: `pairs`) on at which
    settled(timing so far) is true (more pairs would not change what the caller decides)."""
    for _ in range(warmup):
        dense()
        candidate()
    first = pairs if min_pairs is None or settled is None else max(1, min(min_pairs, pairs))
    a, b = [], []
    for _ in range(pairs):
        a.append(dense())
        b.append(candidate())
        if len(a) >= first and len(a) < pairs and settled is not None and settled(_summary(a, b)):
            break
    return _summary(a, b)


def _summary(dense_ms: Sequence[float], candidate_ms: Sequence[float]) -> PairedTiming:
    """The PairedTiming of timed pairs (milliseconds, in the order timed)."""
    ratios = [y / x for x, y in zip(dense_ms, candidate_ms, strict=True)]
    ratio = statistics.median(ratios)
    q1, q3 = np.percentile(ratios, [25, 75])
    notch = float(1.58 * (q3 - q1) / np.sqrt(len(ratios)))
    return PairedTiming(statistics.median(dense_ms), statistics.median(candidate_ms), ratio,
                        (max(ratios) - min(ratios)) / ratio, len(ratios), notch)


def step_runner(input_shape: Sequence[int], settings: LatencySettings, token_ids: bool = False) -> StepRunner:
    """The real runner: a model's step as `settings` time it (costs.timing.prepare_step; token_ids: a language
    model's input), one call = one step."""

    def prepare(model: nn.Module) -> Callable[[], float]:
        run = prepare_step(model, input_shape, settings, token_ids)
        device = next(model.parameters()).device
        return lambda: time_once(run, device)
    return prepare
