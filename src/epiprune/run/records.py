"""What a run writes and what compare, report and the benchmarks read: one `EpochRow` per line of metrics.jsonl and
the `RunSummary` of summary.json. TypedDicts: at run time they are the plain dicts of those JSON files, keys exactly
as written (the optional ones are NotRequired)."""

from typing import Any

from typing_extensions import NotRequired, TypedDict  # typing has NotRequired from Python 3.11 (torch requires this)


class EpochRow(TypedDict):
    """One line of metrics.jsonl: an epoch of training (fractions in [0, 1], FLOPs per sample)."""

    epoch: int
    train_loss: float
    train_top1: float
    val_top1: float
    epi: float | None
    epi_layer: float | None
    epi_group: float | None
    widths: list[int]
    pruned: bool
    pruned_this_epoch: bool
    flops: float
    params: float
    lr: float
    epoch_seconds: float
    train_flops_cumulative: float
    epi_compared: float | None  # the (smoothed) value the trigger rule compared at the epoch's last probe ...
    threshold: float | None  # ... with this (smoothed) threshold
    test_top1: NotRequired[float]  # the last epoch of a run with --holdout
    probes: NotRequired[list[dict]]  # step clock: the epoch's probes (step, epi, noise, threshold, decision)
    prune_step: NotRequired[int | None]  # step clock: the optimizer step it pruned at, in the epoch it did
    # --data text (run/tasks.py): mean cross-entropy per byte (nats), bits per byte (loss / ln 2), perplexity per byte
    val_loss: NotRequired[float]
    train_bits_per_byte: NotRequired[float]
    val_bits_per_byte: NotRequired[float]
    val_perplexity: NotRequired[float]
    # --data text with --holdout, the last epoch: the same of the test split (test_top1 above: per byte)
    test_loss: NotRequired[float]
    test_bits_per_byte: NotRequired[float]
    test_perplexity: NotRequired[float]


class LatencyCheck(TypedDict):
    """summary.json's "latency" of a latency-budget run: the table's prediction against measured step times."""

    target: str
    batch_size: int
    table: str
    predicted_dense_ms: float
    predicted_final_ms: float
    measured_dense_ms: float
    measured_final_ms: float
    predicted_ratio: float
    measured_ratio: float  # the median (final / dense) pair ratio of one interleaved loop
    measured_ratio_spread: float  # (max - min) / median of those pair ratios
    prediction_error: float  # predicted_ratio / measured_ratio - 1 (a load that slows both cancels)
    prediction_error_ms: float  # predicted_final_ms / measured_final_ms - 1 (absolute: a load bends it)


class RunSummary(TypedDict):
    """summary.json of a finished run."""

    model: str
    data: str
    budget: str
    importance: str
    indicator: str
    epochs: int
    finetune_epochs: int
    seed: int
    epi_window: int
    world_size: int
    device: str
    epi_threshold: float | str  # 'auto': the noise-floor threshold (per probe in metrics.jsonl)
    prune_epoch: int | None
    prune_step: int | None  # step clock: the optimizer step it pruned at (None: at an epoch's end)
    epi_every: int  # optimizer steps between probes (0: once per epoch)
    steps_per_epoch: int
    trigger: str | None
    final_val_top1: float
    best_val_top1: float
    dense_flops: float
    final_flops: float
    flops_ratio: float
    dense_params: float
    final_params: float
    params_ratio: float
    dense_widths: list[int]
    final_widths: list[int]
    train_flops_total: float
    train_flops_dense_equivalent: float
    train_flops_ratio: float
    train_seconds: float
    epi_layer_weights: list[int]
    config: dict[str, Any]  # the run's TrainConfig as a dict
    final_test_top1: NotRequired[float]  # with --holdout
    final_val_bits_per_byte: NotRequired[float]  # --data text
    best_val_bits_per_byte: NotRequired[float]
    final_val_perplexity: NotRequired[float]
    final_test_bits_per_byte: NotRequired[float]  # --data text with --holdout
    final_test_perplexity: NotRequired[float]
    branched_from: NotRequired[str]  # with --branch-from, when the run pruned
    branch_train_flops: NotRequired[float]
    branch_seconds: NotRequired[float]
    latency: NotRequired[LatencyCheck]  # with a latency budget
    # with a latency budget and the closed loop on, once the run pruned (costs.closed_loop.ClosedLoopResult.record,
    # plus share_of_run: its seconds over train_seconds); None when this process did not run it (a resumed run)
    latency_closed_loop: NotRequired[dict | None]


class CompareRun(RunSummary):
    """A finished run as compare and report see it: its summary, and which method made it where."""

    method: str
    family: str
    run_dir: str


def probe_fields(probes: list, widths: list[int], step_clock: bool, prune_step: int | None) -> dict[str, Any]:
    """An epoch row's indicator fields from the epoch's probes (policy ProbeRecords; the last one speaks for the
    epoch); widths: the model's when the epoch had no probe. On the step clock also every probe and the prune step."""
    record = probes[-1] if probes else None
    fields: dict[str, Any] = {
        "epi": None if record is None else record.epi, "epi_layer": None if record is None else record.epi_layer,
        "epi_group": None if record is None else record.epi_group,
        "widths": widths if record is None else record.widths,
        "epi_compared": None if record is None else record.compared,
        "threshold": None if record is None else record.compared_with}
    if step_clock:
        fields["probes"] = [{"step": r.step, "epi": r.epi, "noise": r.noise, "threshold": r.threshold,
                             "compared": r.compared, "compared_with": r.compared_with, "decision": r.decision}
                            for r in probes]
        fields["prune_step"] = prune_step
    return fields
