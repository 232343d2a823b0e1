"""compare's table: finished runs aggregated per method (mean and spread over seeds), the oracle (per seed, the best
fixed prune epoch on validation), paired differences with bootstrap intervals, compare.md / compare.json and the
plots, all in the comparison's metric (evidence/metrics.py: top-1 for images, bits per byte for text). Reads run
summaries only: `epiprune report` uses it without importing the training stack."""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from epiprune.evidence.metrics import TOP1, Metric, metric_of
from epiprune.evidence.plots import plot_accuracy_vs_cost, plot_epi_curve, plot_grid, plot_width_heatmap
from epiprune.files import atomic_write_text
from epiprune.run.records import EpochRow


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def test_top1(run: dict) -> float:
    """The reported accuracy (%) of an image run: the test split when the run held out a validation split, else
    validation (TOP1.reported; a comparison of any task uses its metric_of(runs).reported)."""
    return TOP1.reported(run)


BOOTSTRAP_DRAWS = 10_000


def bootstrap_interval(values: list[float], draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of `values` (resampling them with replacement)."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def prune_point(run: dict) -> float | None:
    """Where a run pruned, in epochs: its prune epoch (epoch clock), or its prune step over the epoch's steps (step
    clock: a fraction, e.g. 2.67 for step 128 of 48-step epochs); None if it never pruned."""
    step = run.get("prune_step")
    if step and run.get("epi_every"):  # step 0: pruned at initialisation, epoch 0
        return step / run["steps_per_epoch"]
    return run["prune_epoch"]


def oracle_runs(runs: list[dict], metric: Metric | None = None) -> list[dict]:
    """Per seed, the fixed-epoch run with the best final validation value of the metric (default: the runs' own,
    metric_of) in its direction (the grid search a user would do; with a held-out validation split, its test value
    was not used to choose). A tie keeps the earlier grid point."""
    metric = metric or metric_of(runs)
    best: dict[int, dict] = {}
    for r in runs:
        if r["family"] != "fixed":
            continue
        if r["seed"] not in best or metric.is_better(metric.validation(r), metric.validation(best[r["seed"]])):
            best[r["seed"]] = r
    return [best[seed] for seed in sorted(best)]


def _row(name: str, family: str, rs: list[dict], dense_flops: float | None, dense_seconds: float | None,
         metric: Metric = TOP1) -> dict:
    """One table row: the metric's mean and spread over the runs (seeds) as <row_key>_mean/_std (reported split)
    and val_<row_key>_mean, its extra columns' means, FLOPs (per sample), params, training FLOPs and seconds."""
    values = [metric.reported(r) for r in rs]
    cost = _mean([r["train_flops_total"] for r in rs])
    secs = _mean([r["train_seconds"] for r in rs])
    epochs = [prune_point(r) for r in rs]
    fallbacks = sum(r.get("trigger") == "fallback" for r in rs)
    return {"method": name, "family": family, "seeds": len(rs),
            "prune_epoch": epochs[0] if len(set(epochs)) == 1 else epochs, "fallbacks": fallbacks,
            f"{metric.row_key}_mean": _mean(values), f"{metric.row_key}_std": _spread(values),
            f"val_{metric.row_key}_mean": _mean([metric.validation(r) for r in rs]),
            **{e.row_key: _mean([e.reported(r) for r in rs]) for e in metric.extras},
            "flops": _mean([r["final_flops"] for r in rs]), "params": _mean([r["final_params"] for r in rs]),
            "flops_ratio": _mean([r["flops_ratio"] for r in rs]),
            "train_flops": cost, "train_seconds": secs,
            "train_flops_vs_dense": cost / dense_flops if dense_flops else None,
            "train_seconds_vs_dense": secs / dense_seconds if dense_seconds else None}


def _grid_scan_cost(runs: list[dict]) -> tuple[float, float | None]:
    """(from scratch, branched) training FLOPs of the whole grid, mean over seeds: from scratch, every fixed-k run
    trains its dense epochs itself; branched, the dense trajectory is trained once (to the last grid epoch) and
    each branch adds its own pruned epochs (None when no seed's grid was branched: nothing to cost that way)."""
    scratch, branched = [], []
    for seed in sorted({r["seed"] for r in runs if r["family"] == "fixed"}):
        grid = [r for r in runs if r["family"] == "fixed" and r["seed"] == seed]
        scratch.append(sum(r["train_flops_total"] for r in grid))
        last = max(grid, key=prune_point)
        shared = last["train_flops_total"] - last.get("branch_train_flops", last["train_flops_total"])
        branched.append(shared + sum(r.get("branch_train_flops", r["train_flops_total"]) for r in grid)
                        if all("branch_train_flops" in r for r in grid) else scratch[-1])
    was_branched = any("branch_train_flops" in r for r in runs if r["family"] == "fixed")
    return _mean(scratch), _mean(branched) if was_branched else None


def aggregate(runs: list[dict], metric: Metric | None = None) -> list[dict]:
    """One row per method (mean and spread over seeds), plus the oracle: per seed, the fixed prune epoch with the
    best validation value of the metric (default: the runs' own, metric_of), reported on the test split when there
    is one, costed as the branched grid and as the grid from scratch."""
    metric = metric or metric_of(runs)
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    dense = by_method.get("dense")
    dense_flops = _mean([r["train_flops_total"] for r in dense]) if dense else None
    dense_seconds = _mean([r["train_seconds"] for r in dense]) if dense else None
    rows = [_row(name, rs[0]["family"], rs, dense_flops, dense_seconds, metric) for name, rs in by_method.items()]
    chosen = oracle_runs(runs, metric)
    if chosen:
        grid_size = len({r["method"] for r in runs if r["family"] == "fixed"})
        scratch, branched = _grid_scan_cost(runs)
        base = _row("oracle", "oracle", chosen, dense_flops, dense_seconds, metric)
        methods = {r["method"] for r in chosen}  # one grid point (fixed-3, fixed-2.66) for every seed, or not
        label = methods.pop() if len(methods) == 1 else "best per seed"
        for name, cost in ((f"oracle ({label}), branched grid", branched),
                           (f"oracle ({label}), grid from scratch", scratch)):
            if cost is None:  # a grid trained from scratch has no branched cost to show
                continue
            rows.append({**base, "method": name, "train_flops": cost, "grid_size": grid_size,
                         "train_flops_vs_dense": cost / dense_flops if dense_flops else None,
                         "train_seconds": None, "train_seconds_vs_dense": None})
    return rows


def paired_differences(runs: list[dict], reference: str = "epi-taylor", metric: Metric | None = None) -> list[dict]:
    """Per method, the per-seed differences of the reported metric (default: the runs' own, metric_of; method minus
    `reference`, in its unit: top-1 points, bits per byte), their mean and 95% bootstrap interval; the oracle is
    each seed's best grid run. Only seeds both have are paired."""
    metric = metric or metric_of(runs)
    ref = {r["seed"]: metric.reported(r) for r in runs if r["method"] == reference}
    methods: dict[str, dict[int, float]] = {}
    for r in runs:
        if r["method"] != reference:
            methods.setdefault(r["method"], {})[r["seed"]] = metric.reported(r)
    methods["oracle"] = {r["seed"]: metric.reported(r) for r in oracle_runs(runs, metric)}
    result = []
    for name, by_seed in methods.items():
        diffs = [by_seed[s] - ref[s] for s in sorted(by_seed) if s in ref]
        if diffs:
            low, high = bootstrap_interval(diffs)
            result.append({"method": name, "vs": reference, "seeds": len(diffs), "diffs": diffs,
                           "mean": _mean(diffs), "low": low, "high": high})
    return result


def paired_table(pairs: list[dict], metric: Metric = TOP1) -> str:
    """The paired differences as markdown, in the metric's unit and digits (its header says which sign is
    better where lower is)."""
    def signed(value: float) -> str:
        return f"{value:+.{metric.decimals}f}"

    lines = ["| method | seeds | mean difference vs " + (pairs[0]["vs"] if pairs else "reference") +
             f" ({metric.difference_unit}) | 95% bootstrap interval | per seed |", "|---|---|---|---|---|"]
    for p in pairs:
        # one seed has no spread to resample: an interval [x, x] would read as certainty
        interval = f"[{signed(p['low'])}, {signed(p['high'])}]" if p["seeds"] > 1 else "- (one seed)"
        lines.append(f"| {p['method']} | {p['seeds']} | {signed(p['mean'])} | {interval} "
                     f"| {' '.join(signed(d) for d in p['diffs'])} |")
    return "\n".join(lines) + "\n"


def _point_cell(point: float | list | None) -> str:
    """A prune point in the table: whole epochs as they are (3, [2, 3]), fractions (step clock) to 2 decimals."""
    if point is None:
        return "-"
    if isinstance(point, list):
        return str(point) if all(isinstance(p, int) or p is None for p in point) else \
            "[" + ", ".join(_point_cell(p) for p in point) + "]"
    return str(point) if isinstance(point, int) else f"{point:.2f}"


def markdown_table(rows: list[dict], metric: Metric = TOP1) -> str:
    """compare.md's main table: one line per row, the metric's column (and its extra columns) after the prune
    point."""
    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    extra_headers = "".join(f" {e.header} |" for e in metric.extras)
    lines = [f"| method | prune epoch | {metric.column} |{extra_headers} FLOPs (M) | params (M) | train cost (TFLOPs) "
             "| vs dense | wall-clock (s) | vs dense |", "|---" * (9 + len(metric.extras)) + "|"]
    key = metric.row_key
    for r in rows:
        value = metric.cell(r[f"{key}_mean"], r[f"{key}_std"] if r["seeds"] > 1 else None)
        extras = "".join(f" {r[e.row_key]:.{e.decimals}f} |" for e in metric.extras)
        epoch = _point_cell(r["prune_epoch"])
        if r.get("fallbacks"):
            epoch = f"{epoch} ({r['fallbacks']} fallback{'s' if r['fallbacks'] > 1 else ''})"
        seconds = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(f"| {r['method']} | {epoch} | {value} |{extras} {r['flops'] / 1e6:.2f} "
                     f"| {r['params'] / 1e6:.3f} | {r['train_flops'] / 1e12:.2f} | {ratio(r['train_flops_vs_dense'])} "
                     f"| {seconds} | {ratio(r['train_seconds_vs_dense'])} |")
    return "\n".join(lines) + "\n"


def group_names(runs: list[dict], count: int) -> list[str] | None:
    """The channel groups' names (each group's first layer, in the graph's order), read from the architecture.json
    of a pruned run ("kept" is keyed by them; every run of a comparison has the same model); None if no run has
    `count` of them."""
    for r in runs:
        try:
            kept = json.loads((Path(r["run_dir"]) / "architecture.json").read_text()).get("kept")
        except (KeyError, OSError, ValueError):
            continue
        if isinstance(kept, dict) and len(kept) == count:
            return list(kept)
    return None


def _metrics(run_dir: str) -> list[EpochRow]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@dataclass
class Comparison:
    """A comparison's numbers in its metric: the rows (per method and the oracle), the paired differences to EPI,
    and compare.md's text."""

    metric: Metric
    rows: list[dict]
    pairs: list[dict]
    table: str


def tabulate(runs: list[dict]) -> Comparison:
    """The table of finished runs in their task's metric (metric_of: runs of two tasks are refused)."""
    metric = metric_of(runs)
    rows = aggregate(runs, metric)
    pairs = paired_differences(runs, metric=metric)
    table = markdown_table(rows, metric) + f"\n{metric.footnote(runs)}\n"
    if pairs:
        table += "\n" + paired_table(pairs, metric)
    return Comparison(metric, rows, pairs, table)


def write_comparison(out: Path, runs: list[dict], config: dict, log: Callable[[str], None] = print) -> list[dict]:
    """Aggregate finished runs into compare.md, compare.json (with the metric named) and the four plots in `out`;
    return the rows."""
    result = tabulate(runs)
    atomic_write_text(out / "compare.md", result.table)
    atomic_write_text(out / "compare.json", json.dumps({"config": config, "metric": result.metric.describe(runs),
                                                        "rows": result.rows, "paired": result.pairs, "runs": runs},
                                                       indent=1, default=str))
    _plot_comparison(out, runs, result)
    log(result.table)
    return result.rows


def _plot_comparison(out: Path, runs: list[dict], result: Comparison) -> None:
    """The four plots of a comparison, the metric's axis on the first two."""
    metric, key = result.metric, result.metric.row_key
    on_test = metric.on_test_split(runs)  # the rows' values are on the split the table reports
    plot_accuracy_vs_cost([r for r in result.rows if r["family"] != "oracle"], out / "accuracy_vs_cost.png", metric,
                          on_test)
    epi_runs = [r for r in runs if r["method"] == "epi-taylor"]
    epi_epoch = prune_point(epi_runs[0]) if epi_runs else None
    grid = sorted((r["prune_epoch"], r[f"{key}_mean"], r[f"{key}_std"]) for r in result.rows if r["family"] == "fixed")
    if grid:
        plot_grid(grid, [(prune_point(r), r.get("trigger")) for r in epi_runs], out / "accuracy_vs_prune_epoch.png",
                  metric, on_test)
    dense_runs = [r for r in runs if r["method"] == "dense"]
    if dense_runs:
        dense_metrics = _metrics(dense_runs[0]["run_dir"])
        threshold = epi_runs[0]["epi_threshold"] if epi_runs else dense_runs[0]["epi_threshold"]
        plot_epi_curve(dense_metrics, threshold, epi_epoch, out / "epi_curve.png",
                       trigger=epi_runs[0].get("trigger") if epi_runs else None,
                       steps_per_epoch=dense_runs[0]["steps_per_epoch"] if dense_runs[0].get("epi_every") else None)
        widths = dense_runs[0]["dense_widths"]
        plot_width_heatmap(dense_metrics, widths, out / "widths_heatmap.png", group_names(runs, len(widths)))
