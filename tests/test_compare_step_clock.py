"""compare on the step clock (issue 20, item 4): `--epi-every` reaches every run, the oracle grid is fractional prune
points at probes (quadratically spaced over the first half of the schedule), each branched from the one dense
recorded run, and the table, the oracle and the reuse check handle the fractional names."""

from __future__ import annotations

import json

import pytest

from epiprune.cli import main
from epiprune.errors import EpipruneError
from epiprune.evidence.grid import epoch_list, first_probe_at, fixed_point, point_of, probe_grid, probes_before
from epiprune.evidence.runs import CompareConfig, family_of, finished_runs, method_of
from epiprune.evidence.table import aggregate, markdown_table, oracle_runs

from .helpers import assert_one_line_error, call_main


def fires_at(point: float, every: int, steps_per_epoch: int) -> int:
    """The probe step where `--prune-at point` prunes: the rule's comparison (policy.indicator.TriggerRule)."""
    step = every
    while step / steps_per_epoch < point:
        step += every
    return step


def test_the_default_grid_is_up_to_12_probes_before_the_fallback_denser_early():
    # 47 steps per epoch, a probe every 12 steps, fallback at 6 of 12 epochs: 23 probes (step 276) before it
    assert probes_before(6, 12, 47) == 23 and first_probe_at(6, 12, 47) == 288
    grid = probe_grid(12, 47, 6.0)
    steps = [fires_at(p, 12, 47) for p in grid]
    assert steps == [12 * i for i in (1, 2, 3, 4, 5, 6, 8, 11, 13, 16, 20, 23)]  # ceil(23 (k/12)^2), made distinct
    assert steps[5] <= steps[-1] / 3  # denser early: half the points in the first third
    assert grid[0] == 0.25 and grid[-1] == 5.87  # 12/47 = 0.255 and 276/47 = 5.872, rounded down to 2 decimals
    # fewer probes than 12: every probe; each point names its probe's time and prunes exactly there
    assert probe_grid(3, 6, 2.0) == [0.5, 1, 1.5, 2]
    assert probe_grid(2, 3, 2.0) == [0.66, 1.33, 2]


@pytest.mark.parametrize(("every", "steps_per_epoch"), [(2, 3), (7, 500), (3, 1000), (50, 47), (2, 997)])
def test_every_point_prunes_at_its_own_probe(every, steps_per_epoch):
    for i in range(1, 40):
        point = point_of(i * every, every, steps_per_epoch)
        assert fires_at(point, every, steps_per_epoch) == i * every
        assert i * every / steps_per_epoch - point < max(0.01, every / steps_per_epoch)


def test_fractional_method_names_are_known():
    assert family_of("fixed-2.66") == family_of("fixed-3") == "fixed" and family_of("fixed-2.") is None
    assert fixed_point("fixed-2.66") == 2.66 and fixed_point("fixed-x") is None
    assert epoch_list("0.5,1.25,2-3") == [0.5, 1.25, 2, 3]
    for bad in ("0", "1,1", "x", "3-1", "-1", "nan"):
        with pytest.raises(EpipruneError, match="bad --grid"):
            epoch_list(bad)
    step = {"epochs": 12, "epi_every": "12", "prune_at": 2.66, "indicator": "epi"}
    assert method_of(step).name == "fixed-2.66"
    assert method_of({**step, "epi_every": "epoch"}) is None  # a fraction is no epoch-clock grid point
    assert method_of({**step, "prune_at": None}).name == "epi-taylor"


# 96 training images in batches of 32: 3 steps per epoch; a probe every 2 steps; the fallback at 2 of 4 epochs
# (step 6): the grid is the probes at steps 2, 4 and 6 (0.66, 1.33 and 2 epochs)
STEP = ["--train-subset", "96", "--val-subset", "32", "--holdout", "32", "--data-seed", "3", "--epochs", "4",
        "--batch-size", "32", "--epi-window", "1", "--epi-every", "2", "--methods", "dense,fixed,epi"]


def test_compare_on_the_step_clock_branches_a_fractional_grid_and_picks_among_it(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *STEP, "--out", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    runs = {r["method"]: r for r in result["runs"]}
    assert list(runs) == ["dense", "fixed-0.66", "fixed-1.33", "fixed-2", "epi-taylor", "epi-magnitude"]
    dense = runs["dense"]["config"]
    assert dense["record_scores"] and dense["keep_checkpoints"] == [1, 2] and dense["epi_every"] == "2"
    for name, step in (("fixed-0.66", 2), ("fixed-1.33", 4), ("fixed-2", 6)):
        run = runs[name]
        assert run["branched_from"].endswith("dense/seed0") and run["prune_step"] == step, name
        assert run["config"]["prune_at"] == fixed_point(name) and run["trigger"] == "fixed"
        assert 0 < run["branch_train_flops"] < run["train_flops_total"]
    for name in ("epi-taylor", "epi-magnitude"):  # the EPI rows run on the step clock too, branched
        run = runs[name]
        assert run["epi_every"] == 2 and run["prune_step"] is not None and run["prune_step"] <= 6, name
        assert run["branched_from"].endswith("dense/seed0"), name
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["fixed-1.33"]["prune_epoch"] == pytest.approx(4 / 3)  # the probe's time, a fraction
    best = max((runs[n] for n in ("fixed-0.66", "fixed-1.33", "fixed-2")), key=lambda r: r["final_val_top1"])
    assert oracle_runs(result["runs"])[0]["method"] == best["method"]
    oracle = [r for r in result["rows"] if r["family"] == "oracle"]
    assert oracle[0]["method"] == f"oracle ({best['method']}), branched grid" and oracle[0]["grid_size"] == 3
    assert oracle[0]["train_flops"] < oracle[1]["train_flops"]  # the branched grid trains the dense steps once
    table = (out / "compare.md").read_text()
    assert "| fixed-1.33 | 1.33 |" in table and "| fixed-0.66 | 0.67 |" in table
    # the folder read again (epiprune report) keeps the grid's order; the table is the same
    assert [r["method"] for r in finished_runs(out)[0]] == list(runs)
    assert aggregate(finished_runs(out)[0]) == result["rows"]
    capsys.readouterr()
    # the same folder on another clock: the finished runs are not comparable, refused before any training
    result = call_main(["compare", *STEP[:-4], "--epi-every", "3", "--methods", "dense,fixed,epi", "--out", out],
                       capsys)
    assert_one_line_error(result, "dense/seed0/summary.json was made with epi_every='2', not '3'")


def test_the_step_clock_grid_is_checked_and_the_epoch_clock_is_as_before(tmp_path, capsys):
    cfg = CompareConfig(epochs=4, epi_window=1, train_subset=96, batch_size=32, epi_every="2", grid=[0.5, 4.5])
    with pytest.raises(EpipruneError, match=r"--grid points \[0.5, 4.5\] must lie in \(0, 4\)"):
        cfg.methods()
    epoch = CompareConfig(epochs=6, epi_window=2)
    names = [m.name for m in epoch.methods() if m.family == "fixed"]
    assert names == ["fixed-1", "fixed-2", "fixed-3"] and epoch.kept_epochs([1, 2, 3]) == [1, 2, 3, 6]
    tpf = next(m for m in epoch.methods() if m.family == "tpf")
    assert tpf.branches and tpf.overrides["prune_at"] == 6
    step = CompareConfig(epochs=6, epi_window=2, train_subset=96, batch_size=32, epi_every="2")
    assert not next(m for m in step.methods() if m.family == "tpf").branches  # trained from scratch, said so
    # the fallback at 2.5 epochs fires at the probe of step 8 (2.67 epochs): the dense run keeps epoch 3's checkpoints
    late = CompareConfig(epochs=5, epi_window=1, train_subset=96, batch_size=32, epi_every="4")
    assert late.max_dense == 2.5 and late.kept_epochs([]) == [1, 2, 3]
    result = call_main(["compare", "--grid", "1.5", "--out", tmp_path / "c"], capsys)  # the epoch clock: whole epochs
    assert_one_line_error(result, "bad --grid '1.5'")


def step_run(method: str, seed: int, step: int | None, val: float, flops: float) -> dict:
    """A finished step-clock run as compare reads it (3 steps per epoch, a probe every 2, dense cost 12 per step)."""
    family = "dense" if step is None else "fixed"
    return {"method": method, "family": family, "seed": seed, "prune_epoch": None if step is None else -(-step // 3),
            "prune_step": step, "steps_per_epoch": 3, "epi_every": 2, "trigger": None if step is None else "fixed",
            "final_val_top1": val, "final_flops": 6.0, "final_params": 1.0, "flops_ratio": 0.5,
            "train_flops_total": flops, "train_seconds": 1.0,
            **({} if step is None else {"branch_train_flops": flops - 12 * (step - 1)})}


def test_the_oracle_and_the_table_name_fractional_grid_points():
    """The oracle picks among the grid's fractional points per seed and says which; the prune points are the
    probes' times, and the branched grid trains the dense steps once (up to the last grid point's)."""
    runs = [step_run("dense", 0, None, 0.80, 144.0)]
    for name, step, val in (("fixed-0.66", 2, 0.70), ("fixed-1.33", 4, 0.90), ("fixed-2", 6, 0.75)):
        runs.append(step_run(name, 0, step, val, 12 * step + 6 * (12 - step)))
    rows = {r["method"]: r for r in aggregate(runs)}
    assert "oracle (fixed-1.33), branched grid" in rows and rows["fixed-0.66"]["prune_epoch"] == pytest.approx(2 / 3)
    oracle = rows["oracle (fixed-1.33), branched grid"]
    assert oracle["prune_epoch"] == pytest.approx(4 / 3) and oracle["grid_size"] == 3
    # branched: the 5 dense steps before the last point's probe once, then each branch from its own probe step on
    branched = 12 * 5 + sum(r["branch_train_flops"] for r in runs[1:])
    assert oracle["train_flops"] == pytest.approx(branched)
    assert "| fixed-0.66 | 0.67 |" in markdown_table(list(rows.values()))


def test_a_compare_folder_lists_the_grid_by_prune_point_not_by_name(tmp_path):
    """fixed-10.5 sorts before fixed-2 as a name; compare and report list the grid by its prune point."""
    for name, point in (("fixed-10.5", 10.5), ("fixed-2", 2), ("fixed-0.66", 0.66), ("dense", None)):
        folder = tmp_path / "runs" / name / "seed0"
        folder.mkdir(parents=True)
        config = {"epochs": 24, "epi_every": "2", "prune_at": point,
                  "indicator": "none" if point is None else "epi"}
        (folder / "summary.json").write_text(json.dumps({"seed": 0, "prune_epoch": None, "config": config}))
    runs, unfinished = finished_runs(tmp_path)
    assert [r["method"] for r in runs] == ["dense", "fixed-0.66", "fixed-2", "fixed-10.5"] and not unfinished
    assert [r["family"] for r in runs] == ["dense", "fixed", "fixed", "fixed"]
