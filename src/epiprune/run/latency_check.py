"""After a latency-budget run: the final model's step time measured against a fresh dense one in one interleaved
loop (dense, final, dense, final, ...; the median pair ratio, as the closed loop measures), and the table's
prediction error as a ratio of the dense step (a load that slows both models alike cancels)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from epiprune.costs.timing import LatencySettings, StepRunner, paired_ratio, step_runner
from epiprune.numerics import in_memory_format
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.run.config import TrainConfig
from epiprune.run.data import Dataset
from epiprune.run.network import build_network
from epiprune.run.tasks import task_of

CHECK_PAIRS = 10  # timed (dense, final) pairs of the check, after 2 untimed ones


def measure_latency(policy: EarlyPruningPolicy, model: nn.Module, dense_model: nn.Module,
                    settings: LatencySettings, input_shape: tuple[int, ...], runner: StepRunner | None = None,
                    token_ids: bool = False) -> dict:
    """Predicted and measured step time (ms, medians) of the dense and the final model, measured in one
    interleaved loop; measured_ratio: the median pair ratio; prediction_error: the table's predicted ratio over the
    measured one, minus 1 (prediction_error_ms: the same in absolute milliseconds, which a load bends).
    input_shape: one sample's, (C, H, W), or (T,) with token_ids (a language model's byte ids).
    runner: how a model's step is timed (default: costs.closed_loop.step_runner; tests inject a fake)."""
    runner = runner or step_runner(input_shape, settings, token_ids)
    timing = paired_ratio(runner(dense_model), runner(model), CHECK_PAIRS, warmup=2)
    predicted_dense, predicted_final = policy.cost.dense, policy.predicted_latency_ms()
    predicted_ratio = predicted_final / predicted_dense
    return {"target": settings.target, "batch_size": settings.batch_size, "table": str(policy.latency_table_path),
            "predicted_dense_ms": predicted_dense, "predicted_final_ms": predicted_final,
            "measured_dense_ms": timing.dense_ms, "measured_final_ms": timing.candidate_ms,
            "predicted_ratio": predicted_ratio, "measured_ratio": timing.ratio,
            "measured_ratio_spread": timing.spread, "prediction_error": predicted_ratio / timing.ratio - 1.0,
            "prediction_error_ms": predicted_final / timing.candidate_ms - 1.0}


PREDICTION_WARNING = 0.20  # warn when the latency prediction misses the measured time by more than this


def check_latency(cfg: TrainConfig, policy: EarlyPruningPolicy, model: nn.Module, dataset: Dataset,
                   device: torch.device, log: Callable[[str], None]) -> dict:
    """Time the final model against a freshly built dense one, as the table was timed; warn if the table's
    prediction is off by more than PREDICTION_WARNING."""
    task = task_of(dataset)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        dense, _ = build_network(cfg, dataset.in_channels, dataset.num_classes, task.input_size(dataset), task.name)
        dense = dense.to(device)
    dense = in_memory_format(dense, cfg.channels_last)
    example = task.example(dataset, device)
    result = measure_latency(policy, model, dense, cfg.latency_settings(), tuple(example.shape[1:]),
                             token_ids=not example.is_floating_point())
    log(f"latency ({result['target']}, batch {result['batch_size']}): dense {result['measured_dense_ms']:.1f} ms, "
        f"pruned {result['measured_final_ms']:.1f} ms measured ({100 * result['measured_ratio']:.1f}% of dense in one "
        f"interleaved loop), {100 * result['predicted_ratio']:.1f}% predicted by the table "
        f"({100 * result['prediction_error']:+.1f}%)")
    if abs(result["prediction_error"]) > PREDICTION_WARNING:
        log(f"warning: the latency table's prediction is off by {100 * result['prediction_error']:+.0f}% for the "
            f"pruned model's share of the dense step (more than {100 * PREDICTION_WARNING:.0f}%)"
            + ("; the closed loop measured the pruned model itself" if policy.latency_loop is not None else
               ": rebuild the table, or leave --latency-closed-loop on"))
    return result
