"""A run's own plot, epi.png (EPI per epoch, the threshold and the prune epoch), and the figure helpers that
compare's plots (evidence/plots.py) share. matplotlib with the Agg backend: no display needed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _epi_axis(ax: plt.Axes, values: list[float]) -> None:
    """EPI is a similarity in [0, 1]: the axis spans the data (and the threshold) and never goes above 1."""
    low = min(values, default=0.0)
    ax.set_ylim(max(0.0, low - 0.05 * max(1.0 - low, 0.2)), 1.0)


def _integer_epochs(ax: plt.Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_epi(metrics: list[dict], path: Path, threshold: float, prune_epoch: int | None,
             trigger: str | None) -> None:
    """EPI and validation top-1 per epoch, the threshold, and the epoch the network was pruned."""
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(7, 4))
    epi_points = [(m["epoch"], m["epi"]) for m in metrics if m.get("epi") is not None]
    if epi_points:  # a big marker, unclipped: a run that prunes at the first epoch EPI exists has one point
        ax.plot(*zip(*epi_points, strict=True), "o-", color="tab:blue", ms=7, clip_on=False, zorder=3, label="EPI")
    ax.axhline(threshold, color="tab:blue", ls=":", lw=1, label=f"threshold {threshold:g}")
    _epi_axis(ax, [e for _, e in epi_points] + [threshold])
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("EPI (structural similarity)", color="tab:blue")
    acc = ax.twinx()
    acc.plot(epochs, [100 * m["val_top1"] for m in metrics], "s-", color="tab:orange", label="val top-1")
    acc.set_ylabel("validation top-1 (%)", color="tab:orange")
    if prune_epoch is not None:
        ax.axvline(prune_epoch, color="tab:red", ls="--", label=f"pruned ({trigger}) after epoch {prune_epoch}")
    lines = ax.get_legend_handles_labels()
    lines2 = acc.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize=8)
    ax.set_title("Early Pruning Indicator and accuracy")
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    tmp = Path(path).with_suffix(".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _finish(fig: plt.Figure, ax: plt.Axes, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
