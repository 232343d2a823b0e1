import json

import numpy as np
import pytest

from epiprune.cli import main
from epiprune.errors import EpipruneError
from epiprune.evidence.runs import CompareConfig
from epiprune.evidence.table import aggregate
from epiprune.policy.indicator import earlybird_stability, mask_distance
from epiprune.run.config import TrainConfig
from epiprune.run.steps import lr_schedule

from .helpers import assert_one_line_error, call_main

TINY = ["--train-subset", "64", "--val-subset", "32", "--epochs", "4", "--epi-window", "1", "--batch-size", "64",
        "--grid", "1,2"]


def test_compare_end_to_end_then_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *TINY, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    result = json.loads((out / "compare.json").read_text())
    methods = [r["method"] for r in result["rows"]]
    assert methods[:2] == ["dense", "dense-plain"] and {
        "init-random", "init-magnitude", "init-taylor", "tpf-ft1", "fixed-1", "fixed-2", "earlybird",
        "earlybird-budget", "epi-taylor", "epi-magnitude"} <= set(methods)
    oracle = [r for r in result["rows"] if r["family"] == "oracle"]
    assert len(oracle) == 2 and oracle[0]["grid_size"] == 2
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["dense"]["prune_epoch"] is None and rows["dense"]["flops_ratio"] == 1.0
    assert rows["init-random"]["prune_epoch"] == 0 and rows["tpf-ft1"]["prune_epoch"] == 4
    assert rows["fixed-2"]["prune_epoch"] == 2
    for r in result["rows"]:
        if r["family"] not in ("dense", "plain"):
            assert 0.48 <= r["flops_ratio"] <= 0.51
    # the grid from scratch costs the sum of its runs; branched, the dense epochs up to 2 are trained once
    runs = {r["method"]: r for r in result["runs"]}
    assert oracle[1]["method"].endswith("grid from scratch") and oracle[0]["method"].endswith("branched grid")
    assert oracle[1]["train_flops"] == pytest.approx(rows["fixed-1"]["train_flops"] + rows["fixed-2"]["train_flops"])
    shared = runs["fixed-2"]["train_flops_total"] - runs["fixed-2"]["branch_train_flops"]
    assert oracle[0]["train_flops"] == pytest.approx(shared + runs["fixed-1"]["branch_train_flops"]
                                                     + runs["fixed-2"]["branch_train_flops"])
    assert oracle[0]["train_flops"] < oracle[1]["train_flops"]
    for name in ("fixed-1", "fixed-2", "tpf-ft1", "epi-taylor", "epi-magnitude", "earlybird-budget"):
        assert runs[name]["branched_from"].endswith("dense/seed0"), name
    for name in ("init-taylor", "earlybird", "dense-plain"):
        assert "branched_from" not in runs[name], name
    assert runs["earlybird"]["config"]["bn_l1"] == 1e-4 and runs["earlybird"]["importance"] == "bn"
    for name, run in runs.items():  # every run is `train --config` of the file in its folder
        written = json.loads((out / "runs" / name / "seed0" / "config.json").read_text())
        assert written == run["config"], name
    # each method's difference to EPI, per seed, with its interval
    pairs = {p["method"]: p for p in result["paired"]}
    assert pairs["fixed-1"]["diffs"] == [pytest.approx(rows["fixed-1"]["top1_mean"] - rows["epi-taylor"]["top1_mean"])]
    assert rows["tpf-ft1"]["train_flops_vs_dense"] > 1.0 > rows["epi-taylor"]["train_flops_vs_dense"]
    for name in ("compare.md", "accuracy_vs_cost.png", "accuracy_vs_prune_epoch.png", "epi_curve.png",
                 "widths_heatmap.png"):
        assert (out / name).stat().st_size > 0
    dense_metrics = (out / "runs" / "dense" / "seed0" / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["pruned"] is False for line in dense_metrics)
    assert "run dense" in first
    assert "  dense seed 0: epoch   4/4  loss" in first  # progress inside each run, not only between runs
    # second call: everything is reused, nothing retrained
    assert main(["compare", *TINY, "--out", str(out)]) == 0
    second = capsys.readouterr().out
    assert "run " not in second and second.count("skip ") == len(methods) - 2
    assert json.loads((out / "compare.json").read_text())["rows"] == result["rows"]
    check_report_rebuilds_the_comparison_without_training(out, result, capsys)


def check_report_rebuilds_the_comparison_without_training(out, result, capsys):
    """`epiprune report` on the finished compare folder above (part of the same test: it reuses its runs)."""
    (out / "accuracy_vs_cost.png").unlink()
    assert main(["report", str(out)]) == 0
    assert "run " not in capsys.readouterr().out
    assert json.loads((out / "compare.json").read_text())["rows"] == result["rows"]  # same table, same order
    assert (out / "accuracy_vs_cost.png").stat().st_size > 0
    # a grid still running: runs without a summary are left out and named, the oracle is over what finished
    (out / "runs" / "fixed-2" / "seed0" / "summary.json").unlink()
    assert main(["report", str(out)]) == 0
    assert "not finished (left out of the table): fixed-2 seed0 (epochs done: 4)" in capsys.readouterr().out
    rows = {r["method"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    assert "fixed-2" not in rows and rows["oracle (fixed-1), branched grid"]["grid_size"] == 1
    # one train run, finished or not (then the settings come from its checkpoint)
    run = out / "runs" / "epi-taylor" / "seed0"
    (run / "epi.png").unlink()
    assert main(["report", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.split()[0].isdigit() for line in lines if line.strip()) == 4 and (run / "epi.png").is_file()
    (run / "summary.json").unlink()
    assert main(["report", str(run)]) == 0 and (run / "epi.png").is_file()
    # anything else: one line naming the folder
    assert_one_line_error(call_main(["report", out / "runs"], capsys), "holds neither an `epiprune compare` output")


def test_unknown_method_family_is_an_error(tmp_path, capsys):
    assert_one_line_error(call_main(["compare", "--methods", "dense,lottery", "--out", tmp_path], capsys),
                          "unknown methods ['lottery']")


def test_bad_grid_is_an_error(tmp_path, capsys):
    assert_one_line_error(call_main(["compare", "--grid", "1-x", "--out", tmp_path], capsys), "bad --grid")
    with pytest.raises(EpipruneError, match="grid epochs"):
        CompareConfig(epochs=4, grid=[5]).methods()


def test_aggregate_mean_spread_and_oracle():
    def run(method, family, seed_top1, epoch, cost, seed=0):
        return {"method": method, "family": family, "final_val_top1": seed_top1, "train_flops_total": cost,
                "train_seconds": cost / 10, "prune_epoch": epoch, "final_flops": 5.0, "final_params": 2.0,
                "flops_ratio": 0.5, "seed": seed}

    runs = [run("dense", "dense", 0.9, None, 100), run("dense", "dense", 0.8, None, 100, seed=1),
            run("fixed-1", "fixed", 0.7, 1, 60), run("fixed-2", "fixed", 0.75, 2, 70)]
    rows = {r["method"]: r for r in aggregate(runs)}
    assert rows["dense"]["top1_mean"] == pytest.approx(85.0) and rows["dense"]["top1_std"] == pytest.approx(7.0711,
                                                                                                           1e-4)
    oracle = rows["oracle (fixed-2), grid from scratch"]
    assert oracle["prune_epoch"] == 2 and oracle["train_flops"] == 130 and oracle["train_flops_vs_dense"] == 1.3
    # runs without branch records were trained from scratch: no branched row claims a cost nobody paid
    assert "oracle (fixed-2), branched grid" not in rows


def test_earlybird_distance_by_hand():
    a, b, c = np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool), np.array([1, 0, 0, 0], bool)
    assert mask_distance(a, b) == 0.25 and mask_distance(b, c) == 0.0
    assert earlybird_stability([a, b], 2) is None
    assert earlybird_stability([a, b, c], 2) == 0.75  # max of the last two distances is 0.25
    assert earlybird_stability([a, b, c], 1) == 1.0


def test_train_prune_finetune_schedule():
    cfg = TrainConfig(epochs=4, finetune_epochs=2, prune_at=4)
    cfg.validate()
    f = lr_schedule(cfg, 10)
    assert f(0) == 1.0 and f(20) == pytest.approx(0.5) and f(40) == pytest.approx(0.1) and f(60) == pytest.approx(0)
    assert cfg.total_epochs == 6


def test_methods_on_one_point_share_one_label(tmp_path, monkeypatch):
    import matplotlib.axes

    from epiprune.evidence.plots import plot_accuracy_vs_cost

    texts = []
    original = matplotlib.axes.Axes.annotate
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate",
                        lambda self, text, *a, **k: texts.append(text) or original(self, text, *a, **k))
    row = {"train_flops": 4.79e12, "top1_mean": 88.02, "top1_std": 0.0, "family": "fixed"}
    rows = [{**row, "method": "fixed-5"}, {**row, "method": "epi-taylor", "family": "epi"},
            {**row, "method": "dense", "family": "dense", "train_flops": 6.8e12}]
    plot_accuracy_vs_cost(rows, tmp_path / "p.png")
    assert sorted(texts) == ["dense", "fixed-5 = epi-taylor"] and (tmp_path / "p.png").is_file()


def test_warmup_ramps_the_lr_then_follows_the_cosine():
    cfg = TrainConfig(epochs=4, warmup_epochs=1, indicator="none")
    cfg.validate()
    f = lr_schedule(cfg, 10)
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5 * 0.5 * (1 + np.cos(np.pi * 4 / 40)))
    assert f(20) == pytest.approx(0.5) and f(9) == pytest.approx(0.5 * (1 + np.cos(np.pi * 9 / 40)))


def test_bad_warmup_is_an_error(tmp_path, capsys):
    assert_one_line_error(call_main(["train", "--epochs", "3", "--warmup-epochs", "3", "--out", tmp_path], capsys),
                          "warm-up epochs 3.0 is outside [0, 3)")


def test_reusing_a_run_made_with_other_settings_is_an_error(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--train-subset", "64", "--val-subset", "32", "--epochs", "4", "--batch-size", "64",
            "--epi-window", "1", "--methods", "dense", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    assert_one_line_error(call_main([*args, "--warmup-epochs", "1"], capsys), "made with warmup_epochs=0.0, not 1.0",
                          "--force")
    assert main([*args, "--warmup-epochs", "1", "--force"]) == 0
    made_with = json.loads((out / "runs" / "dense" / "seed0" / "summary.json").read_text())["config"]
    assert made_with["warmup_epochs"] == 1.0


def test_grid_plot_marks_the_epi_epoch_of_every_seed(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    import epiprune.evidence.plots as report

    seen = {}

    def keep_axes(fig, ax, *args):
        seen["labels"] = ax.get_legend_handles_labels()[1]
        seen["marks"] = sorted({float(line.get_xdata()[0]) for line in ax.lines if line.get_linestyle() == "--"})
        plt.close(fig)

    monkeypatch.setattr(report, "_finish", keep_axes)
    report.plot_grid([(1, 80.0, 1.0), (2, 81.0, 0.5)], [(5, "epi"), (4, "epi"), (4, "epi"), (None, None)],
                     tmp_path / "grid.png")
    assert seen["marks"] == [4.0, 5.0]
    assert "EPI's epochs (5, 4, 4)" in seen["labels"]


def test_the_table_covers_every_finished_run_of_the_folder_made_with_the_same_settings(tmp_path, capsys):
    """A second call with other methods or seeds (e.g. a study run in stages) writes compare.md from every finished
    run in the folder, not only its own; a run made with other settings stays out and is named."""
    out = tmp_path / "cmp"
    tiny = ["--train-subset", "64", "--val-subset", "32", "--epochs", "3", "--epi-window", "1", "--batch-size", "64",
            "--out", str(out)]
    assert main(["compare", *tiny, "--methods", "dense,fixed", "--grid", "1,2"]) == 0
    summary = out / "runs" / "fixed-2" / "seed0" / "summary.json"
    made = json.loads(summary.read_text())
    summary.write_text(json.dumps({**made, "config": {**made["config"], "lr": 0.05}}))
    capsys.readouterr()
    assert main(["compare", *tiny, "--methods", "dense", "--seeds", "0,1"]) == 0
    logged = capsys.readouterr().out
    result = json.loads((out / "compare.json").read_text())
    assert sorted((r["method"], r["seed"]) for r in result["runs"]) == [("dense", 0), ("dense", 1), ("fixed-1", 0)]
    assert [r["method"] for r in result["rows"]][:2] == ["dense", "fixed-1"]
    assert "not in the table: fixed-2 seed 0 (made with lr=0.05, not 0.1)" in logged
    assert "| fixed-1 |" in (out / "compare.md").read_text()


def test_latency_budget_runs_the_first_job_alone_so_the_table_is_built_once(monkeypatch, tmp_path):
    """With --jobs 2 and a latency budget, parallel first runs would each measure the table (and disturb each
    other's timings): the first run goes alone, the rest in parallel reuse its table."""
    import threading
    import time

    from epiprune.evidence import compare as compare_module

    active, overlaps, order = [0], [], []
    lock = threading.Lock()

    def fake_run_one(cfg, method, seed, log=print):
        with lock:
            active[0] += 1
            overlaps.append(active[0])
            order.append(method.name)
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return {"method": method.name, "seed": seed}

    monkeypatch.setattr(compare_module, "run_one", fake_run_one)
    monkeypatch.setattr(compare_module, "write_comparison", lambda out, runs, config, log: runs)
    cfg = CompareConfig(budget="latency:0.5", jobs=2, families=["fixed"], grid=[1, 2, 3],
                                       epochs=6, out=str(tmp_path))
    runs = compare_module.compare(cfg, log=lambda _: None)
    assert order[0] == "fixed-1" and overlaps[0] == 1 and len(runs) == 3
    assert max(overlaps[1:]) == 2  # the others still run in parallel


def test_compare_holds_out_validation_shares_the_data_subset_and_can_train_from_scratch(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--train-subset", "64", "--val-subset", "32", "--epochs", "3", "--epi-window", "1",
                 "--batch-size", "64", "--grid", "1", "--methods", "dense,fixed", "--seeds", "0,1", "--holdout", "40",
                 "--data-seed", "5", "--no-branch", "--out", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    runs = result["runs"]
    assert all("final_test_top1" in r and "branched_from" not in r for r in runs)
    assert all(r["config"]["data_seed"] == 5 and r["config"]["holdout"] == 40 for r in runs)
    assert "top-1: final accuracy on the test split (chosen on the held-out validation split)" in \
        (out / "compare.md").read_text()
    oracle = [r for r in result["rows"] if r["family"] == "oracle"]
    # nothing branched: the only cost is the grid from scratch (no branched row claiming a saving nobody made)
    assert [r["method"].split(", ")[1] for r in oracle] == ["grid from scratch"]
