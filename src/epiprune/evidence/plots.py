"""compare's plots: accuracy against training cost, accuracy against the prune epoch (the oracle grid), the dense
run's EPI curve and its per-group widths (matplotlib, Agg backend: chosen in run/plots.py, whose helpers they
share)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from epiprune.run.plots import _epi_axis, _finish, _integer_epochs, _save

FAMILY_COLOURS = {"dense": "black", "init": "tab:gray", "tpf": "tab:brown", "fixed": "tab:green",
                  "earlybird": "tab:purple", "epi": "tab:red", "oracle": "tab:olive"}
FAMILY_NAMES = {"dense": "dense", "init": "prune at init", "tpf": "train-prune-fine-tune",
                "fixed": "fixed prune epoch", "earlybird": "Early-Bird", "epi": "EPI", "oracle": "oracle"}


def plot_accuracy_vs_cost(rows: list[dict], path: Path) -> None:
    """Final top-1 vs total training FLOPs, one point per method (error bars: spread over seeds)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels: dict[tuple[float, float], list[str]] = {}  # methods landing on one point share one label
    legend: set[str] = set()  # one legend entry per colour (method family)
    for r in rows:
        family = r["family"] if r["family"] in FAMILY_COLOURS else "other"
        ax.errorbar(r["train_flops"] / 1e12, r["top1_mean"], yerr=r["top1_std"] or None, fmt="o",
                    color=FAMILY_COLOURS.get(r["family"], "tab:blue"), capsize=3,
                    label=FAMILY_NAMES.get(family, family) if family not in legend else None)
        legend.add(family)
        labels.setdefault((round(r["train_flops"] / 1e12, 2), round(r["top1_mean"], 2)), []).append(r["method"])
    for (x, y), names in labels.items():
        ax.annotate(" = ".join(names), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("training cost (TFLOPs, forward + backward)")
    ax.set_ylabel("final validation top-1 (%)")
    ax.set_title("Accuracy vs. training cost")
    if legend:
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_grid(grid: list[tuple[int, float, float]], epi_epochs: list[int], path: Path) -> None:
    """Top-1 of fixed-epoch pruning for each prune epoch (the oracle scan; mean and std over seeds), with the
    epochs EPI chose marked (one per seed; a seed that never pruned has no mark)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    epochs, top1, std = zip(*grid, strict=True)
    ax.errorbar(epochs, top1, yerr=[s or 0 for s in std], fmt="o-", color="tab:green", capsize=3,
                label="prune at fixed epoch")
    chosen = [e for e in epi_epochs if e is not None]
    for i, epoch in enumerate(sorted(set(chosen))):
        label = f"EPI's epoch{'s' if len(chosen) > 1 else ''} ({', '.join(map(str, chosen))})" if i == 0 else None
        ax.axvline(epoch, color="tab:red", ls="--", label=label)
    _integer_epochs(ax)
    _finish(fig, ax, "prune epoch", "final validation top-1 (%)", "Oracle scan: accuracy vs. prune epoch", path)


def plot_epi_curve(metrics: list[dict], threshold: float, epi_epoch: int | None, path: Path) -> None:
    """EPI per epoch of a dense run (the indicator tracked over the whole schedule)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    points = [(m["epoch"], m["epi"]) for m in metrics if m.get("epi") is not None]
    if points:
        ax.plot(*zip(*points, strict=True), "o-", color="tab:blue", ms=6, clip_on=False, zorder=3,
                label="EPI (dense run)")
    ax.axhline(threshold, color="tab:blue", ls=":", label=f"threshold {threshold:g}")
    _epi_axis(ax, [e for _, e in points] + [threshold])
    _integer_epochs(ax)
    if epi_epoch is not None:
        ax.axvline(epi_epoch, color="tab:red", ls="--", label=f"EPI run pruned after epoch {epi_epoch}")
    _finish(fig, ax, "epoch", "EPI", "Early Pruning Indicator per epoch", path)


def plot_width_heatmap(metrics: list[dict], dense_widths: list[int], path: Path) -> None:
    """Fraction of channels each group keeps in the dominant sub-network, per epoch."""
    import numpy as np

    data = np.array([np.asarray(m["widths"], dtype=float) / np.asarray(dense_widths) for m in metrics]).T
    fig, ax = plt.subplots(figsize=(7, max(3, 0.18 * len(dense_widths) + 1.5)))
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest",
                   extent=(0.5, len(metrics) + 0.5, len(dense_widths) - 0.5, -0.5))
    ax.set_xlabel("epoch")
    _integer_epochs(ax)
    ax.set_ylabel("channel group (input to output)")
    ax.set_title("Dominant sub-network: kept fraction per layer")
    fig.colorbar(im, ax=ax, label="kept fraction")
    _save(fig, path)
