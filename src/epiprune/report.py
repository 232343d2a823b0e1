"""Plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_epi(metrics: list[dict], path: Path, threshold: float, prune_epoch: int | None,
             trigger: str | None) -> None:
    """EPI and validation top-1 per epoch, the threshold, and the epoch the network was pruned."""
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(7, 4))
    epi_points = [(m["epoch"], m["epi"]) for m in metrics if m.get("epi") is not None]
    if epi_points:
        ax.plot(*zip(*epi_points, strict=True), "o-", color="tab:blue", label="EPI")
    ax.axhline(threshold, color="tab:blue", ls=":", lw=1, label=f"threshold {threshold:g}")
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
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
