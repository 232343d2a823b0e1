"""compare's plots: the comparison's metric (top-1 or bits per byte, evidence/metrics.py) against training cost and
against the prune epoch (the oracle grid), the dense run's EPI curve and its per-group widths (matplotlib, Agg
backend: chosen in run/plots.py, whose helpers they share)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from epiprune.evidence.metrics import TOP1, Metric
from epiprune.run.plots import _epi_axis, _finish, _integer_epochs, _save, probe_points

# one colour and one legend name per method family; a family not listed is drawn and named as "other"
FAMILY_COLOURS = {"dense": "black", "plain": "tab:cyan", "init": "tab:gray", "tpf": "tab:brown",
                  "fixed": "tab:green", "earlybird": "tab:purple", "epi": "tab:red", "oracle": "tab:olive",
                  "other": "tab:blue"}
FAMILY_NAMES = {"dense": "dense", "plain": "dense, no importance hooks", "init": "prune at init",
                "tpf": "train-prune-fine-tune", "fixed": "fixed prune epoch", "earlybird": "Early-Bird", "epi": "EPI",
                "oracle": "oracle", "other": "other"}
LABEL_POINTS = 7  # font size of the method labels, in points


def plot_accuracy_vs_cost(rows: list[dict], path: Path, metric: Metric = TOP1, on_test_split: bool = False) -> None:
    """The final metric (top-1 by default; rows' <row_key>_mean and _std, on the test split when on_test_split, as
    the axis says) vs total training FLOPs, one point per method (error bars: spread over seeds). A point and its
    legend entry take their colour from one key (the family); labels of nearby points are moved apart."""
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels: dict[tuple[float, float], list[str]] = {}  # methods landing on one point share one label
    legend: dict[str, Line2D] = {}  # one legend entry per family, drawn with its points' own style
    for r in rows:
        family = r["family"] if r["family"] in FAMILY_COLOURS else "other"
        style = point_style(family)
        mean, std = r[f"{metric.row_key}_mean"], r[f"{metric.row_key}_std"]
        ax.errorbar(r["train_flops"] / 1e12, mean, yerr=std or None, capsize=3,
                    ecolor=style["color"], linestyle="none", **style)
        legend.setdefault(family, Line2D([], [], linestyle="none", label=FAMILY_NAMES[family], **style))
        labels.setdefault((round(r["train_flops"] / 1e12, 2), round(mean, metric.decimals)), []).append(r["method"])
    _annotate_apart(ax, [(x, y, " = ".join(names)) for (x, y), names in labels.items()])
    ax.set_xlabel("training cost (TFLOPs, forward + backward)")
    ax.set_ylabel(metric.axis(on_test_split))
    ax.set_title(f"{metric.title} vs. training cost")
    if legend:
        ax.legend(handles=list(legend.values()), fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    _save(fig, path)


def point_style(family: str) -> dict:
    """How a family's points (and its legend entry) are drawn. The dense run without importance hooks ("plain")
    lands on the dense run's point: it is a larger ring under it, so both stay visible."""
    colour = FAMILY_COLOURS[family]
    ring = family == "plain"
    return {"color": colour, "marker": "o", "markersize": 10 if ring else 6, "markerfacecolor": "none" if ring
            else colour, "markeredgecolor": colour, "zorder": 2 if ring else 3}


def _annotate_apart(ax: plt.Axes, points: list[tuple[float, float, str]]) -> None:
    """Label each (x, y, text) point just above right of it; a label that would overlap one already placed (points
    close on screen, like init-random and init-magnitude) is moved up, with a thin line back to its point."""
    ax.figure.canvas.draw()  # the axes limits as they will be drawn, for the data-to-pixel transform
    to_pixels = ax.transData.transform
    pixels_per_point = ax.figure.dpi / 72
    line = 1.3 * LABEL_POINTS * pixels_per_point
    placed: list[tuple[float, float, float]] = []  # (left, right, baseline) of labels already placed, in pixels
    for x, y, text in sorted(points, key=lambda p: (p[1], p[0])):
        px, py = to_pixels((x, y))
        left, right = px, px + 0.6 * LABEL_POINTS * pixels_per_point * len(text)
        base = py + 3 * pixels_per_point
        for other_left, other_right, other_base in sorted(placed, key=lambda t: t[2]):
            if left < other_right and other_left < right and abs(base - other_base) < line:
                base = other_base + line
        placed.append((left, right, base))
        shift = (base - py) / pixels_per_point
        moved = shift > 3.5
        ax.annotate(text, (x, y), fontsize=LABEL_POINTS, xytext=(4, shift), textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if moved else None)


def epi_choice_label(choices: list[tuple[int | None, str | None]]) -> str | None:
    """"EPI's epoch (4)", "EPI's epochs (3, 4)", "EPI's epochs (0.51 by fallback, all 3 seeds)"; an epoch the
    fallback chose says so ("4 by fallback": EPI did not cross its threshold before the last allowed epoch). None
    when no seed pruned."""
    chosen = [(e, t) for e, t in choices if e is not None]
    if not chosen:
        return None
    parts = [f"{_epoch_text(e)} by fallback" if t == "fallback" else _epoch_text(e) for e, t in chosen]
    if len(parts) > 1 and len(set(parts)) == 1:  # every seed at one point: say it once
        parts = [f"{parts[0]}, all {len(chosen)} seeds"]
    return f"EPI's epoch{'s' if len(chosen) > 1 else ''} ({', '.join(parts)})"


def _epoch_text(epoch: float) -> str:
    """An epoch as a label shows it: whole epochs as integers, the step clock's fractions to two decimals."""
    return str(int(epoch)) if float(epoch).is_integer() else f"{epoch:.2f}"


def plot_grid(grid: list[tuple[float, float, float]], epi_choices: list[tuple[float | None, str | None]],
              path: Path, metric: Metric = TOP1, on_test_split: bool = False) -> None:
    """The metric (top-1 by default; on the test split when on_test_split, as the axis says) of fixed-epoch pruning
    for each prune epoch (the oracle scan; (epoch, mean, std over seeds) in the metric's unit), with the epochs EPI
    chose marked (one (epoch, trigger) per seed; a seed that never pruned has no mark). On the step clock the
    epochs are fractions (a probe's step over the epoch's steps)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    epochs, top1, std = zip(*grid, strict=True)
    ax.errorbar(epochs, top1, yerr=[s or 0 for s in std], fmt="o-", color="tab:green", capsize=3,
                label="prune at fixed epoch")
    label = epi_choice_label(epi_choices)
    for i, epoch in enumerate(sorted({e for e, _ in epi_choices if e is not None})):
        ax.axvline(epoch, color="tab:red", ls="--", label=label if i == 0 else None)
    if all(float(e).is_integer() for e in epochs):
        _integer_epochs(ax)
    _finish(fig, ax, "prune epoch", metric.axis(on_test_split),
            f"Oracle scan: {metric.title.lower()} vs. prune epoch", path)


def plot_epi_curve(metrics: list[dict], threshold: float | str, epi_epoch: float | None, path: Path,
                   trigger: str | None = None, steps_per_epoch: int | None = None) -> None:
    """EPI per epoch of a dense run (the indicator tracked over the whole schedule; steps_per_epoch given: the step
    clock, EPI at every probe, in fractional epochs); the epoch the EPI run pruned after, and whether that was the
    fallback (trigger "fallback"). An 'auto' threshold (per probe) is drawn as the dense run's thresholds."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    probes = probe_points(metrics, steps_per_epoch) if steps_per_epoch else None
    if probes is None:
        points = [(m["epoch"], m["epi"]) for m in metrics if m.get("epi") is not None]
    else:
        points = [(p["x"], p["epi"]) for p in probes if p["epi"] is not None]
    if points:
        ax.plot(*zip(*points, strict=True), "o-" if probes is None else ".-", color="tab:blue", ms=6, clip_on=False,
                zorder=3, label="EPI (dense run)")
    levels = [threshold] if not isinstance(threshold, str) else []
    if levels:
        ax.axhline(threshold, color="tab:blue", ls=":", label=f"threshold {threshold:g}")
    elif probes:  # the auto threshold: the dense run's noise floor at each probe
        noise = [(p["x"], p["threshold"]) for p in probes if p.get("threshold") is not None]
        if noise:
            ax.plot(*zip(*noise, strict=True), ":", color="tab:blue", label="threshold auto (noise floor)")
            levels = [t for _, t in noise]
    _epi_axis(ax, [e for _, e in points] + levels)
    if probes is None:
        _integer_epochs(ax)
    if epi_epoch is not None:
        how = " (fallback: EPI stayed below the threshold)" if trigger == "fallback" else ""
        when = f"{epi_epoch}" if float(epi_epoch).is_integer() else f"{epi_epoch:.2f}"
        ax.axvline(epi_epoch, color="tab:red", ls="--", label=f"EPI run pruned after epoch {when}{how}")
    _finish(fig, ax, "epoch", "EPI", "Early Pruning Indicator per " + ("epoch" if probes is None else "probe"), path)


def plot_width_heatmap(metrics: list[dict], dense_widths: list[int], path: Path,
                       group_names: list[str] | None = None) -> None:
    """Fraction of channels each group keeps in the dominant sub-network, per epoch; the y axis names each group
    by its layer (group_names, in the graph's order) when known, else by its index."""
    import numpy as np

    data = np.array([np.asarray(m["widths"], dtype=float) / np.asarray(dense_widths) for m in metrics]).T
    fig, ax = plt.subplots(figsize=(7, max(3, 0.18 * len(dense_widths) + 1.5)))
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest",
                   extent=(0.5, len(metrics) + 0.5, len(dense_widths) - 0.5, -0.5))
    ax.set_xlabel("epoch")
    _integer_epochs(ax)
    if group_names is not None and len(group_names) == len(dense_widths):
        ax.set_yticks(range(len(group_names)), [f"{name} ({w})" for name, w in zip(group_names, dense_widths,
                                                                                  strict=True)], fontsize=7)
        ax.set_ylabel("channel group (dense width)")
    else:
        ax.set_ylabel("channel group (input to output)")
    ax.set_title("Dominant sub-network: kept fraction per layer")
    fig.colorbar(im, ax=ax, label="kept fraction")
    _save(fig, path)
