"""Plots read right (issue 14): EPI axis inside [0, 1], one EPI point visible, a legend for every colour, integer
epoch ticks."""

import matplotlib.pyplot as plt
import pytest

import epiprune.evidence.plots as report
import epiprune.run.plots as run_plots


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions would save, kept open for inspection."""
    kept = []
    for module in (report, run_plots):  # compare's plots save through their own name and through run.plots' _finish
        monkeypatch.setattr(module, "_save", lambda fig, path: kept.append(fig))
    yield kept
    for fig in kept:
        plt.close(fig)


def short_run(epi_at_2=0.97):
    return [{"epoch": e, "epi": epi_at_2 if e == 2 else None, "val_top1": 0.5 + 0.1 * e, "widths": [4, 6]}
            for e in (1, 2, 3)]


def visible_epoch_ticks(ax):
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


def test_epi_plot_of_a_run_that_prunes_at_the_first_epi(figures, tmp_path):
    run_plots.plot_epi(short_run(), tmp_path / "epi.png", 0.944, 2, "epi")
    ax = figures[0].axes[0]
    low, high = ax.get_ylim()
    assert 0 <= low < 0.944 and high == 1.0
    (epi_line,) = [line for line in ax.lines if line.get_label() == "EPI"]
    assert list(epi_line.get_xdata()) == [2] and epi_line.get_marker() == "o" and epi_line.get_markersize() >= 6
    assert not epi_line.get_clip_on()  # a point at EPI 1.0 sits on the axis edge, drawn whole
    ticks = visible_epoch_ticks(ax)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_epi_curve_axis_stays_within_0_1(figures, tmp_path):
    metrics = [{"epoch": e, "epi": min(1.0, 0.9 + 0.03 * e)} for e in range(1, 5)]
    report.plot_epi_curve(metrics, 0.944, 3, tmp_path / "c.png")
    ax = figures[0].axes[0]
    assert ax.get_ylim()[1] == 1.0 and ax.get_ylim()[0] >= 0
    assert all(float(t).is_integer() for t in visible_epoch_ticks(ax))


def test_accuracy_vs_cost_has_a_legend_entry_per_colour(figures, tmp_path):
    row = {"top1_std": 0.0}
    rows = [{**row, "method": "dense", "family": "dense", "train_flops": 6e12, "top1_mean": 90.0},
            {**row, "method": "fixed-1", "family": "fixed", "train_flops": 4e12, "top1_mean": 88.0},
            {**row, "method": "fixed-2", "family": "fixed", "train_flops": 4.5e12, "top1_mean": 88.5},
            {**row, "method": "epi-taylor", "family": "epi", "train_flops": 4.2e12, "top1_mean": 88.3}]
    report.plot_accuracy_vs_cost(rows, tmp_path / "a.png")
    legend = figures[0].axes[0].get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["dense", "fixed prune epoch", "EPI"]


def test_grid_plot_has_integer_epoch_ticks(figures, tmp_path, monkeypatch):
    kept = {}
    monkeypatch.setattr(report, "_finish", lambda fig, ax, *a: kept.setdefault("ax", ax) and figures.append(fig))
    report.plot_grid([(1, 80.0, 0.0), (2, 81.0, 0.0)], [2], tmp_path / "g.png")
    assert all(float(t).is_integer() for t in visible_epoch_ticks(kept["ax"]))
