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
    report.plot_grid([(1, 80.0, 0.0), (2, 81.0, 0.0)], [(2, "epi")], tmp_path / "g.png")
    assert all(float(t).is_integer() for t in visible_epoch_ticks(kept["ax"]))


def compare_families():
    from epiprune.evidence.runs import CompareConfig

    return sorted({m.family for m in CompareConfig(epochs=6, epi_window=1).methods()})


def test_accuracy_vs_cost_legend_colours_are_the_points_colours(figures, tmp_path):
    """Issue 23: the legend's colour for dense differed from its point (dense-plain was drawn blue and named
    'other'). Every family compare runs has its own legend entry, in its points' colour."""
    from matplotlib.colors import to_hex

    families = compare_families()
    rows = [{"method": f"{f}-{i}", "family": f, "train_flops": (1 + k + i / 10) * 1e12, "top1_mean": 80.0 + k,
             "top1_std": 0.5 * i} for k, f in enumerate(families) for i in range(2)]
    report.plot_accuracy_vs_cost(rows, tmp_path / "a.png")
    ax = figures[0].axes[0]
    legend = ax.get_legend()
    names = [t.get_text() for t in legend.get_texts()]
    assert "other" not in names and len(names) == len(families)

    def look(line):
        face = line.get_markerfacecolor()
        return (line.get_marker(), to_hex(line.get_markeredgecolor()), face if face == "none" else to_hex(face))

    points = {}
    for container, row in zip(ax.containers, rows, strict=True):
        points.setdefault(report.FAMILY_NAMES[row["family"]], set()).add(look(container.lines[0]))
    for name, handle in zip(names, legend.legend_handles, strict=True):
        assert points[name] == {look(handle)}, name
    # dense-plain lands on dense's point: a ring under it, dense on top, both visible
    by_family = {row["family"]: c.lines[0] for c, row in zip(ax.containers, rows, strict=True)}
    assert by_family["plain"].get_markerfacecolor() == "none"
    assert by_family["plain"].get_markersize() > by_family["dense"].get_markersize()
    assert by_family["dense"].get_zorder() > by_family["plain"].get_zorder()


def test_accuracy_vs_cost_labels_of_nearby_points_do_not_overlap(figures, tmp_path):
    """Issue 23: init-random's and init-magnitude's labels were drawn over each other."""
    rows = [{"method": m, "family": "init", "train_flops": x * 1e12, "top1_mean": y, "top1_std": 0.0}
            for m, x, y in (("init-random", 2.0, 80.0), ("init-magnitude", 2.02, 80.3), ("init-taylor", 2.04, 80.1))]
    rows.append({"method": "dense", "family": "dense", "train_flops": 6e12, "top1_mean": 90.0, "top1_std": 0.0})
    report.plot_accuracy_vs_cost(rows, tmp_path / "a.png")
    fig = figures[0]
    fig.canvas.draw()
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t) for t in fig.axes[0].texts]  # the text alone, not its line to the point
    assert len(boxes) == 4
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)


def test_widths_heatmap_names_each_group_by_its_layer(figures, tmp_path):
    """Issue 23: its y axis showed group indices without layer names."""
    metrics = [{"epoch": e, "widths": [8 - e, 16 - e]} for e in (1, 2, 3)]
    report.plot_width_heatmap(metrics, [8, 16], tmp_path / "h.png", ["conv1", "layers.0.conv1"])
    labels = [t.get_text() for t in figures[0].axes[0].get_yticklabels()]
    assert labels == ["conv1 (8)", "layers.0.conv1 (16)"]


def test_heatmap_group_names_come_from_a_pruned_runs_architecture(tmp_path):
    import json

    from epiprune.evidence.table import group_names

    dense, pruned = tmp_path / "dense", tmp_path / "pruned"
    dense.mkdir()
    pruned.mkdir()
    (dense / "architecture.json").write_text(json.dumps({"kept": None}))
    (pruned / "architecture.json").write_text(json.dumps({"kept": {"conv1": [0, 1], "layers.0.conv1": [2]}}))
    runs = [{"run_dir": str(dense)}, {"run_dir": str(tmp_path / "gone")}, {"run_dir": str(pruned)}]
    assert group_names(runs, 2) == ["conv1", "layers.0.conv1"]
    assert group_names(runs, 3) is None


def test_epi_epoch_says_when_it_was_the_fallback(figures, tmp_path, monkeypatch):
    """Issue 23: "EPI's epoch (4)" did not say that EPI never fired and the fallback pruned."""
    assert report.epi_choice_label([(4, "fallback")]) == "EPI's epoch (4 by fallback)"
    assert report.epi_choice_label([(3, "epi"), (4, "fallback"), (None, None)]) == "EPI's epochs (3, 4 by fallback)"
    assert report.epi_choice_label([(None, None)]) is None
    # the step clock's fractional epochs, two decimals; every seed at one point said once (it overflowed the plot)
    assert report.epi_choice_label([(36 / 71, "fallback")] * 3) == "EPI's epochs (0.51 by fallback, all 3 seeds)"
    assert report.epi_choice_label([(15 / 71, "epi"), (0.5, "fallback")]) == "EPI's epochs (0.21, 0.50 by fallback)"
    metrics = [{"epoch": e, "epi": 0.5} for e in range(1, 6)]
    report.plot_epi_curve(metrics, 0.944, 4, tmp_path / "c.png", trigger="fallback")
    labels = figures[0].axes[0].get_legend_handles_labels()[1]
    assert "EPI run pruned after epoch 4 (fallback: EPI stayed below the threshold)" in labels
    kept = {}
    monkeypatch.setattr(report, "_finish", lambda fig, ax, *a: kept.setdefault("ax", ax) and figures.append(fig))
    report.plot_grid([(3, 80.0, 0.0), (4, 81.0, 0.0)], [(4, "fallback")], tmp_path / "g.png")
    assert "EPI's epoch (4 by fallback)" in kept["ax"].get_legend_handles_labels()[1]
