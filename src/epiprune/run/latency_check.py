"""After a latency-budget run: the final model's step time measured against a fresh dense one, timed the way the
latency table was, and the table's prediction error."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from epiprune.costs.timing import LatencySettings, time_model_step
from epiprune.numerics import in_memory_format
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.run.config import TrainConfig
from epiprune.run.data import Dataset
from epiprune.run.network import build_network


def measure_latency(policy: EarlyPruningPolicy, model: nn.Module, dense_model: nn.Module,
                    settings: LatencySettings, input_shape: tuple[int, ...]) -> dict:
    """Predicted and measured step time (ms) of the dense and the final model, timed the way the table was
    (interleaved, medians), and the prediction's error for the final model."""
    measured_dense, measured_final = [], []
    for _ in range(2):
        measured_dense.append(time_model_step(dense_model, input_shape, settings))
        measured_final.append(time_model_step(model, input_shape, settings))
    dense_ms, final_ms = min(measured_dense), min(measured_final)
    predicted_dense, predicted_final = policy.cost.dense, policy.predicted_latency_ms()
    return {"target": settings.target, "batch_size": settings.batch_size, "table": str(policy.latency_table_path),
            "predicted_dense_ms": predicted_dense, "predicted_final_ms": predicted_final,
            "measured_dense_ms": dense_ms, "measured_final_ms": final_ms,
            "predicted_ratio": predicted_final / predicted_dense, "measured_ratio": final_ms / dense_ms,
            "prediction_error": predicted_final / final_ms - 1.0}


PREDICTION_WARNING = 0.20  # warn when the latency prediction misses the measured time by more than this


def check_latency(cfg: TrainConfig, policy: EarlyPruningPolicy, model: nn.Module, dataset: Dataset,
                   device: torch.device, log: Callable[[str], None]) -> dict:
    """Time the final model against a freshly built dense one, as the table was timed; warn if the table's
    prediction is off by more than PREDICTION_WARNING."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        dense, _ = build_network(cfg, dataset.in_channels, dataset.num_classes, dataset.image_size)
        dense = dense.to(device)
    dense = in_memory_format(dense, cfg.channels_last)
    result = measure_latency(policy, model, dense, cfg.latency_settings(),
                             (dataset.in_channels, *dataset.image_size))
    log(f"latency ({result['target']}, batch {result['batch_size']}): dense {result['measured_dense_ms']:.1f} ms, "
        f"pruned {result['measured_final_ms']:.1f} ms measured ({100 * result['measured_ratio']:.1f}% of dense), "
        f"{result['predicted_final_ms']:.1f} ms predicted ({100 * result['prediction_error']:+.1f}%)")
    if abs(result["prediction_error"]) > PREDICTION_WARNING:
        log(f"warning: the latency table's prediction is off by {100 * result['prediction_error']:+.0f}% for the "
            f"pruned model (more than {100 * PREDICTION_WARNING:.0f}%): rebuild the table on an idle machine")
    return result
