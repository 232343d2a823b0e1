"""compare and report for a language model (issue 21's evidence): the comparison's metric comes from its runs' task
(evidence/metrics.py). Text is validation bits per byte, lower is better: the oracle takes the grid point with the
lowest, the table, the paired differences and the plots say so, compare.json names it; image tables are unchanged
(the committed comparisons regenerate byte for byte); image and text runs in one folder are refused in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

import epiprune.evidence.plots as plots
from epiprune.errors import EpipruneError
from epiprune.evidence.metrics import BITS_PER_BYTE, METRICS, TOP1, metric_of, run_task
from epiprune.evidence.table import aggregate, oracle_runs, paired_differences, tabulate

from .helpers import assert_one_line_error, call_main, run_cli

ROOT = Path(__file__).resolve().parents[1]


def text_run(method: str, family: str, bpb: float, seed: int = 0, point: float | None = None,
             cost: float = 100.0) -> dict:
    """A finished text run's summary as compare reads it. Its per-byte top-1 rises with bits per byte, so an oracle
    that ranked by top-1 (or took the highest bits per byte) would pick another grid point."""
    return {"method": method, "family": family, "seed": seed, "config": {"data": "text", "prune_at": point},
            "data": "text", "final_val_bits_per_byte": bpb, "final_val_perplexity": 2 ** bpb,
            "final_val_top1": bpb / 10, "train_flops_total": cost, "train_seconds": cost / 10,
            "prune_epoch": None if point is None else 0, "prune_step": None if point is None else int(point * 16),
            "epi_every": 2, "steps_per_epoch": 16, "final_flops": 5e6, "final_params": 2e5, "flops_ratio": 0.5}


def text_runs() -> list[dict]:
    """Two seeds: dense, a grid of three points (the best bits per byte at 0.25 for seed 0, 0.5 for seed 1) and
    EPI."""
    runs = []
    for seed, grid, epi in ((0, (5.70, 5.60, 5.65), 5.62), (1, (5.72, 5.69, 5.61), 5.66)):
        runs.append(text_run("dense", "dense", 5.55, seed))
        runs += [text_run(f"fixed-{p}", "fixed", bpb, seed, p, cost=60 + 10 * i)
                 for i, (p, bpb) in enumerate(zip((0.12, 0.25, 0.5), grid, strict=True))]
        runs.append(text_run("epi-taylor", "epi", epi, seed, 0.37, cost=70))
    return runs


def test_a_text_comparison_reports_bits_per_byte_and_its_oracle_takes_the_lowest():
    runs = text_runs()
    assert run_task(runs[0]) == "text" and metric_of(runs) is BITS_PER_BYTE is METRICS.get("text")
    assert [r["method"] for r in oracle_runs(runs)] == ["fixed-0.25", "fixed-0.5"]  # lowest per seed, not highest
    rows = {r["method"]: r for r in aggregate(runs)}
    assert "top1_mean" not in rows["dense"]
    assert rows["dense"]["bits_per_byte_mean"] == pytest.approx(5.55)
    assert rows["epi-taylor"]["bits_per_byte_std"] == pytest.approx(math.sqrt(2 * 0.02 ** 2))
    assert rows["epi-taylor"]["perplexity_mean"] == pytest.approx((2 ** 5.62 + 2 ** 5.66) / 2)
    oracle = rows["oracle (best per seed), grid from scratch"]
    assert oracle["bits_per_byte_mean"] == pytest.approx((5.60 + 5.61) / 2) and oracle["seeds"] == 2
    pairs = {p["method"]: p for p in paired_differences(runs)}
    assert pairs["oracle"]["diffs"] == pytest.approx([5.60 - 5.62, 5.61 - 5.66])  # negative: the oracle is better
    assert pairs["dense"]["mean"] == pytest.approx(5.55 - 5.64)


def test_the_text_table_names_its_metric_its_direction_and_the_split_it_chose_on():
    table = tabulate(text_runs()).table
    lines = table.splitlines()
    assert lines[0].startswith("| method | prune epoch | bits/byte (lower is better) | perplexity | FLOPs (M) |")
    assert lines[1] == "|---" * 10 + "|"
    assert "| epi-taylor | 0.31 | 5.640 ± 0.028 | 49.87 |" in table
    assert "| oracle (best per seed), grid from scratch | [0.25, 0.50] | 5.605 ± 0.007 | 48.67 |" in table
    assert "top-1" not in table and "points" not in table
    assert "on the validation split (also used to choose the oracle: no --holdout, so no test split)" in table
    assert "lower is better" in lines[lines.index("") + 1]
    assert "| mean difference vs epi-taylor (bits/byte; negative: better than it) |" in table
    assert "| oracle | 2 | -0.035 | [-0.050, -0.020] | -0.020 -0.050 |" in table


def test_mixed_image_and_text_runs_are_refused_in_one_line(tmp_path, capsys):
    image = {**text_runs()[0], "method": "dense", "seed": 1, "config": {"data": "builtin"}}
    with pytest.raises(EpipruneError, match=r"mix tasks: text \(dense seed 0\), image \(dense seed 1\)"):
        aggregate([text_runs()[0], image])
    for seed, run in enumerate((text_runs()[0], image)):  # a compare folder holding one of each
        folder = tmp_path / "cmp" / "runs" / "dense" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({**run, "config": {**run["config"], "epochs": 2}}))
    result = call_main(["report", tmp_path / "cmp"], capsys)
    assert_one_line_error(result, "the runs mix tasks: text (dense seed 0), image (dense seed 1)",
                          "accepted: one task per compare folder")
    assert not (tmp_path / "cmp" / "compare.md").exists()


@pytest.mark.parametrize("name", ["resnet20-flops0.3", "resnet20-flops0.5"])
def test_image_tables_are_unchanged(name):
    """The committed epi-study comparisons' compare.md and rows, regenerated from the runs their compare.json
    recorded: top-1 as before, byte for byte."""
    folder = ROOT / "benchmarks" / "results" / "epi-study" / name
    recorded = json.loads((folder / "compare.json").read_text())
    result = tabulate(recorded["runs"])
    assert result.metric is TOP1
    assert result.table == (folder / "compare.md").read_text()
    assert result.rows == recorded["rows"] and result.pairs == recorded["paired"]
    # the same runs without their held-out test split: the footnote the image path has always written for it
    validation_only = [{k: v for k, v in r.items() if k != "final_test_top1"} for r in recorded["runs"]]
    footnote = "\n\ntop-1: final accuracy on the validation split (also used to choose the oracle)\n\n"
    assert footnote in tabulate(validation_only).table


def test_plots_name_the_metric_on_their_axis(tmp_path, monkeypatch):
    seen = []  # (y label, title, y values drawn) of each plot
    monkeypatch.setattr(plots, "_save", lambda fig, path: seen.append(
        (fig.axes[0].get_ylabel(), fig.axes[0].get_title(), [y for ln in fig.axes[0].lines for y in ln.get_ydata()])))
    monkeypatch.setattr(plots, "_finish", lambda fig, ax, xlabel, ylabel, title, path: seen.append(
        (ylabel, title, [y for ln in ax.lines for y in ln.get_ydata()])))
    rows = [r for r in aggregate(text_runs()) if r["family"] != "oracle"]
    plots.plot_accuracy_vs_cost(rows, tmp_path / "a.png", BITS_PER_BYTE)
    plots.plot_grid([(0.12, 5.71, 0.01), (0.25, 5.65, 0.05)], [(0.37, "epi")], tmp_path / "g.png", BITS_PER_BYTE)
    plt.close("all")
    assert [label for label, _, _ in seen] == ["final validation bits per byte (lower is better)"] * 2
    assert [title for _, title, _ in seen] == ["Bits per byte vs. training cost",
                                               "Oracle scan: bits per byte vs. prune epoch"]
    for value in (5.55, 5.71):  # dense's and fixed-0.12's mean bits per byte are points of the cost plot
        assert any(y == pytest.approx(value) for y in seen[0][2]), value
    seen.clear()
    plots.plot_accuracy_vs_cost(rows, tmp_path / "a.png", BITS_PER_BYTE, on_test_split=True)
    plots.plot_grid([(0.12, 5.71, 0.01)], [], tmp_path / "g.png", TOP1, on_test_split=True)
    plt.close("all")
    assert [label for label, _, _ in seen] == ["final test bits per byte (lower is better)", "final test top-1 (%)"]


@pytest.mark.parametrize("held_out", [True, False])
def test_a_comparisons_plots_name_the_split_its_table_reports(tmp_path, monkeypatch, held_out):
    """With --holdout the table reports the test split, and so do the plots' values: their axis says "test"."""
    import epiprune.evidence.table as table

    labels = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: labels.append(fig.axes[0].get_ylabel()))
    monkeypatch.setattr(plots, "_finish", lambda fig, ax, xlabel, ylabel, title, path: labels.append(ylabel))
    runs = json.loads((ROOT / "benchmarks/results/epi-study/resnet20-flops0.5/compare.json").read_text())["runs"]
    runs = [r for r in runs if r["method"] != "dense"]  # no dense run folder here to draw the EPI curve from
    if not held_out:
        runs = [{k: v for k, v in r.items() if k != "final_test_top1"} for r in runs]
    table._plot_comparison(tmp_path, runs, tabulate(runs))
    plt.close("all")
    split = "test" if held_out else "validation"
    assert labels[:2] == [f"final {split} top-1 (%)"] * 2


LM = ["--model", "lm_tiny", "--data", "text", "--epochs", "1", "--epi-every", "auto", "--budget", "flops:0.5",
      "--train-subset", "32", "--val-subset", "8", "--batch-size", "4", "--seq-len", "16", "--methods",
      "dense,fixed,epi", "--grid", "0.25,0.5"]


def test_cli_run_compare_of_lm_tiny_reports_bits_per_byte(tmp_path, capsys):
    """A real `epiprune compare` of lm_tiny on the built-in text (five runs of eight steps, each a process that
    imports transformers: about 40 s of one core), then `report` of its folder and of its dense run (in this
    process)."""
    pytest.importorskip("transformers")
    out = tmp_path / "lm"
    result = run_cli("compare", *LM, "--out", out)
    assert result.returncode == 0, result.stderr
    recorded = json.loads((out / "compare.json").read_text())
    assert recorded["metric"]["better"] == "lower" and recorded["metric"]["summary_key"] == "final_val_bits_per_byte"
    runs = {r["method"]: r for r in recorded["runs"]}
    assert list(runs) == ["dense", "fixed-0.25", "fixed-0.5", "epi-taylor", "epi-magnitude"]
    best = min(("fixed-0.25", "fixed-0.5"), key=lambda m: runs[m]["final_val_bits_per_byte"])
    oracle = [r for r in recorded["rows"] if r["family"] == "oracle"]
    assert oracle[0]["method"] == f"oracle ({best}), branched grid"
    assert oracle[0]["bits_per_byte_mean"] == runs[best]["final_val_bits_per_byte"] < 8.0
    table = (out / "compare.md").read_text()
    assert "| bits/byte (lower is better) | perplexity |" in table and "top-1" not in table
    assert table in result.stdout
    (out / "compare.md").unlink()
    report = call_main(["report", out], capsys)
    assert report.returncode == 0, report.stderr
    assert (out / "compare.md").read_text() == table
    single = call_main(["report", out / "runs" / "dense" / "seed0"], capsys)
    assert single.returncode == 0, single.stderr
    assert "val bits/byte" in single.stdout and "val top-1" not in single.stdout
    assert f"{runs['dense']['final_val_bits_per_byte']:13.3f}" in single.stdout
