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


def probe_points(metrics: list[dict], steps_per_epoch: int | None) -> list[dict]:
    """The run's probes from its metrics rows, each {'x': time in epochs, 'epi', 'noise', 'compared',
    'compared_with'}: one per epoch on the epoch clock, the rows' `probes` on the step clock."""
    if steps_per_epoch is None:
        return [{"x": m["epoch"], "epi": m.get("epi"), "noise": None, "compared": m.get("epi_compared", m.get("epi")),
                 "compared_with": m.get("threshold")} for m in metrics]
    return [{**p, "x": p["step"] / steps_per_epoch} for m in metrics for p in m.get("probes", [])]


def plot_epi(metrics: list[dict], path: Path, threshold: float | None, prune_epoch: int | None,
             trigger: str | None, steps_per_epoch: int | None = None, prune_step: int | None = None) -> None:
    """EPI at every probe (the smoothed value the rule compared, and each probe's own), the threshold it was
    compared with (fixed, or the auto threshold per probe), the step-clock noise floor, validation top-1 per
    epoch, and when the network was pruned. steps_per_epoch: the step clock's epoch length (None: epoch clock)."""
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(7, 4))
    probes = [p for p in probe_points(metrics, steps_per_epoch) if p["epi"] is not None or p["noise"] is not None]
    shown: list[float] = []
    marker = "o-" if steps_per_epoch is None else ".-"
    for key, style, color, label in (("epi", marker, "tab:blue", "EPI"),
                                     ("compared", "-", "navy", "EPI as compared (smoothed)"),
                                     ("noise", "x", "tab:gray", "noise floor (halves' similarity)"),
                                     ("compared_with", "--", "tab:green", "threshold as compared")):
        points = [(p["x"], p[key]) for p in probes if p.get(key) is not None]
        if not points or (key == "compared" and all(p["compared"] == p["epi"] for p in probes)):
            continue
        if key == "compared_with" and threshold is not None:
            continue  # a fixed threshold: the horizontal line below
        # big markers, unclipped: a run that prunes at the first probe EPI exists has one point
        ax.plot(*zip(*points, strict=True), style, color=color, ms=7 if style == "o-" else 5, clip_on=False,
                zorder=3, label=label)
        shown += [v for _, v in points]
    if threshold is not None:
        ax.axhline(threshold, color="tab:blue", ls=":", lw=1, label=f"threshold {threshold:g}")
        shown.append(threshold)
    _epi_axis(ax, shown)
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("EPI (structural similarity)", color="tab:blue")
    acc = ax.twinx()
    acc.plot(epochs, [100 * m["val_top1"] for m in metrics], "s-", color="tab:orange", label="val top-1")
    acc.set_ylabel("validation top-1 (%)", color="tab:orange")
    if prune_step is not None and steps_per_epoch:
        at = prune_step / steps_per_epoch
        ax.axvline(at, color="tab:red", ls="--", label=f"pruned ({trigger}) at step {prune_step} ({at:.2f} epochs)")
    elif prune_epoch is not None:
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
