"""`epiprune report DIR`: tables and plots again from a finished (or still running) train or compare folder,
without training. Useful to look at a grid while its last runs are still going, or to re-plot after the fact."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from epiprune.errors import EpipruneError
from epiprune.evidence.metrics import METRICS, run_task
from epiprune.evidence.runs import finished_runs
from epiprune.evidence.table import write_comparison
from epiprune.files import CHECKPOINT_FILE
from epiprune.policy.indicator import default_threshold
from epiprune.run.checkpoint import load_checkpoint
from epiprune.run.plots import plot_epi
from epiprune.run.records import EpochRow


def report(folder: str | Path, log: Callable[[str], None] = print) -> Path:
    """Rewrite the report of an `epiprune compare` folder (compare.md/json and plots, from every finished run)
    or of an `epiprune train` folder (epi.png, and a per-epoch table printed, in the run's metric: top-1 for
    images, bits per byte for text). Returns the folder."""
    out = Path(folder)
    if (out / "runs").is_dir():
        return _report_comparison(out, log)
    if (out / "metrics.jsonl").is_file():
        return _report_run(out, log)
    raise EpipruneError(f"{out} holds neither an `epiprune compare` output (runs/) nor an `epiprune train` output "
                        "(metrics.jsonl) (accepted: a folder given as --out to either)")


def _report_comparison(out: Path, log: Callable[[str], None]) -> Path:
    runs, unfinished = finished_runs(out)
    if not runs:
        raise EpipruneError(f"no finished run under {out / 'runs'} yet (accepted: a compare folder with at least "
                            "one summary.json)")
    previous = out / "compare.json"
    config = json.loads(previous.read_text()).get("config", {}) if previous.is_file() else {}
    write_comparison(out, runs, config, log)
    if unfinished:
        log(f"not finished (left out of the table): {', '.join(unfinished)}")
    log(f"table and plots in {out}/: compare.md compare.json accuracy_vs_cost.png accuracy_vs_prune_epoch.png "
        "epi_curve.png widths_heatmap.png")
    return out


def read_metrics(path: Path, log: Callable[[str], None] = print) -> list[EpochRow]:
    """The rows of a metrics.jsonl. A truncated last line (a run killed while appending it) is left out with a
    note; any other unreadable line is an EpipruneError naming the file and line."""
    lines = [(i, line) for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if line.strip()]
    rows = []
    for n, (i, line) in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not {"epoch", "train_loss", "val_top1", "flops", "pruned"} <= set(row):
                raise ValueError("not a metrics row")
        except ValueError:
            if n == len(lines) - 1:
                log(f"note: left out the incomplete last line {i} of {path}")
                break
            raise EpipruneError(f"{path} line {i} is not a metrics row (accepted: the metrics.jsonl that "
                                "`epiprune train` writes)") from None
        rows.append(row)
    if not rows:
        raise EpipruneError(f"{path} holds no finished epoch yet (accepted: a run with at least one epoch)")
    return rows


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(errors="replace"))
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise EpipruneError(f"{path} is not readable JSON (accepted: the file `epiprune` wrote; rerun the run or "
                            "delete the file)")
    return value


def _report_run(out: Path, log: Callable[[str], None]) -> Path:
    metrics = read_metrics(out / "metrics.jsonl", log)
    summary_path = out / "summary.json"
    if summary_path.is_file():
        summary = _read_json(summary_path)
        threshold, prune_epoch, trigger = summary["epi_threshold"], summary["prune_epoch"], summary["trigger"]
        steps_per_epoch = summary.get("steps_per_epoch") if summary.get("epi_every") else None  # step clock
        prune_step = summary.get("prune_step")
        config = summary.get("config", {})
    else:  # still running or interrupted: the settings are in the checkpoint
        state = load_checkpoint(out / CHECKPOINT_FILE)
        config, policy = state["extra"]["config"], state["policy"]
        threshold = config.get("epi_threshold") or default_threshold(config.get("indicator", "epi"),
                                                                     config.get("importance", "taylor"))
        prune_epoch, trigger, prune_step = policy["prune_epoch"], policy["trigger"], policy.get("prune_step")
        steps_per_epoch = (policy.get("clock") or {}).get("steps_per_epoch")
        summary = {}
    if threshold == "auto":
        threshold = None  # per probe, in the metrics
    metric = METRICS.get(run_task({"config": config}))
    log(f"epoch  train loss  {metric.epoch_header}    EPI   MFLOPs  pruned")
    for m in metrics:
        epi = "    -" if m.get("epi") is None else f"{m['epi']:.3f}"
        log(f"{m['epoch']:5d}  {m['train_loss']:10.4f}  {metric.epoch_cell(m)}  {epi}  {m['flops'] / 1e6:7.2f}"
            f"  {'yes' if m['pruned'] else 'no'}")
    if metric.test_key in summary:  # --holdout: measured once, after the last epoch; what compare reports
        log(f"test split (held out, chooses nothing), after the last epoch: {metric.name} "
            f"{metric.cell(metric.reported(summary))}{metric.suffix}")
    plot_epi(metrics, out / "epi.png", threshold, prune_epoch, trigger, steps_per_epoch, prune_step)
    log(f"wrote {out / 'epi.png'}")
    return out
