"""The quality metric of a comparison, as registered objects (METRICS, one per task of run/tasks.py): what compare's
table, its oracle, its paired differences, its plots and `epiprune report` read from a run's summary, in which unit,
and which direction is better. Image classification reports top-1 accuracy (%), higher is better; next-byte
prediction (`--data text`) reports bits per byte, lower is better, and perplexity per byte beside it. Either is
reported on the held-out test split when the runs have one (--holdout), else on the validation split.

A comparison's metric is its runs' task (`metric_of`); runs of two tasks in one folder are refused. Reads run
summaries only (plain dicts): no training code is imported."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from epiprune.errors import EpipruneError
from epiprune.registry import Registry

TEXT_DATA = "text"  # TrainConfig's --data value of the text task (the rule TrainConfig._validate_text checks with)


def split_key(run: Mapping[str, Any], test_key: str | None, val_key: str) -> str:
    """The summary field a table reads for a run: `test_key` when the run recorded its held-out test split, else
    `val_key`."""
    return test_key if test_key is not None and test_key in run else val_key


@dataclass(frozen=True)
class Extra:
    """A further column of a metric's table: the mean over seeds of a summary value (e.g. perplexity per byte)."""

    header: str  # the table's column header
    summary_key: str  # the summary.json field it averages (validation split)
    row_key: str  # the field of an aggregated row (compare.json) that holds the mean
    decimals: int
    test_key: str | None = None  # the summary.json field on the held-out test split, when the run has one

    def reported(self, run: Mapping[str, Any]) -> float:
        """The value a table averages for a run: on its test split when it has one (as Metric.reported)."""
        return run[split_key(run, self.test_key, self.summary_key)]


@dataclass(frozen=True)
class Metric:
    """How a comparison scores a run. `scale` turns the summary's value into the reported unit (top-1 is recorded
    as a fraction and reported in %); `test_key` is the held-out test split's field (None: the task has no such
    split, so the oracle is chosen on the split it is reported on)."""

    name: str  # in words: "top-1", "bits per byte"
    unit: str  # the reported unit: "%", "bits/byte"
    column: str  # the table's column header
    row_key: str  # stem of an aggregated row's fields: <row_key>_mean, <row_key>_std, val_<row_key>_mean
    val_key: str  # summary.json: the final value on the validation split (the oracle is chosen on it)
    test_key: str | None  # summary.json: the final value on the held-out test split, when the run has one
    scale: float  # reported value = summary value * scale
    higher_is_better: bool
    decimals: int  # digits after the point in the tables
    difference_unit: str  # the paired differences' header: what a difference is counted in, and its direction
    note: str  # the table's footnote, "{split}" replaced by where the value was measured
    same_split: str  # "{split}" when the oracle is chosen on the split the table reports
    axis_label: str  # the plots' metric axis, "{split}" where the split goes (axis())
    title: str  # the plots' titles start with it
    epoch_key: str  # metrics.jsonl: the epoch row's validation value (`epiprune report` of a train folder)
    epoch_header: str  # that column's header in `epiprune report`'s per-epoch table
    suffix: str = ""  # written after a value in that table ("%")
    extras: tuple[Extra, ...] = ()

    @property
    def better(self) -> str:
        """The direction in one word: "higher" or "lower" (is better)."""
        return "higher" if self.higher_is_better else "lower"

    def reported(self, run: Mapping[str, Any]) -> float:
        """The value a table reports for a run: on its held-out test split when it has one, else on validation."""
        return self.scale * run[split_key(run, self.test_key, self.val_key)]

    def validation(self, run: Mapping[str, Any]) -> float:
        """The final value on the validation split (what the oracle is chosen on)."""
        return self.scale * run[self.val_key]

    def is_better(self, value: float, than: float) -> bool:
        """Whether `value` is strictly better than `than` in this metric's direction."""
        return value > than if self.higher_is_better else value < than

    def on_test_split(self, runs: Iterable[Mapping[str, Any]]) -> bool:
        """Whether the table reports a held-out test split (any run recorded one)."""
        return self.test_key is not None and any(self.test_key in r for r in runs)

    def footnote(self, runs: Iterable[Mapping[str, Any]]) -> str:
        """The line under the table: what the column is and on which split, the oracle chosen on which."""
        split = "test split (chosen on the held-out validation split)" if self.on_test_split(runs) else \
            self.same_split
        return self.note.format(split=split)

    def axis(self, on_test_split: bool = False) -> str:
        """The plots' metric axis, naming the split its values are on (the one the tables report)."""
        return self.axis_label.format(split="test" if on_test_split else "validation")

    def cell(self, value: float, spread: float | None = None) -> str:
        """A table cell: the value, and ± spread when given."""
        text = f"{value:.{self.decimals}f}"
        return text if spread is None else f"{text} ± {spread:.{self.decimals}f}"

    def epoch_cell(self, row: Mapping[str, Any]) -> str:
        """An epoch row's validation value, as wide as epoch_header (the suffix included)."""
        width = len(self.epoch_header) - len(self.suffix)
        return f"{self.scale * row[self.epoch_key]:{width}.{self.decimals}f}{self.suffix}"

    def describe(self, runs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """compare.json's "metric": what the rows' <row_key>_* fields and the paired differences hold."""
        runs = list(runs)
        return {"name": self.name, "unit": self.unit, "better": self.better, "row_key": self.row_key,
                "summary_key": self.test_key if self.on_test_split(runs) else self.val_key,
                "oracle_chosen_on": self.val_key, "scale": self.scale,
                "extras": {e.row_key: e.test_key if self.on_test_split(runs) and e.test_key else e.summary_key
                           for e in self.extras}}


TOP1 = Metric(
    name="top-1", unit="%", column="top-1 (%)", row_key="top1", val_key="final_val_top1",
    test_key="final_test_top1", scale=100.0, higher_is_better=True, decimals=2, difference_unit="points",
    note="top-1: final accuracy on the {split}", same_split="validation split (also used to choose the oracle)",
    axis_label="final {split} top-1 (%)", title="Accuracy", epoch_key="val_top1", epoch_header="val top-1",
    suffix="%")
BITS_PER_BYTE = Metric(
    name="bits per byte", unit="bits/byte", column="bits/byte (lower is better)", row_key="bits_per_byte",
    val_key="final_val_bits_per_byte", test_key="final_test_bits_per_byte", scale=1.0, higher_is_better=False,
    decimals=3,
    difference_unit="bits/byte; negative: better than it",
    note="bits/byte: final cross-entropy per byte / ln 2 on the {split}, lower is better; perplexity: per byte, "
         "exp of that cross-entropy (mean over seeds)",
    same_split="validation split (also used to choose the oracle: no --holdout, so no test split)",
    axis_label="final {split} bits per byte (lower is better)", title="Bits per byte",
    epoch_key="val_bits_per_byte", epoch_header="val bits/byte",
    extras=(Extra("perplexity", "final_val_perplexity", "perplexity_mean", 2, "final_test_perplexity"),))

METRICS: Registry[Metric] = Registry("metric")  # keyed by the task name (run/tasks.py's TASKS)
METRICS.register("image", TOP1)
METRICS.register("text", BITS_PER_BYTE)


def run_task(run: Mapping[str, Any]) -> str:
    """The task a run trained, from its recorded settings: `--data text` is next-byte prediction ("text"), every
    other dataset image classification ("image")."""
    config = run.get("config") if isinstance(run.get("config"), Mapping) else {}
    return "text" if config.get("data", run.get("data")) == TEXT_DATA else "image"


def metric_of(runs: Iterable[Mapping[str, Any]]) -> Metric:
    """The metric of a comparison: its runs' task's (top-1 when there is no run). Runs of several tasks are one
    EpipruneError line naming a run of each: their numbers share no scale."""
    first: dict[str, Mapping[str, Any]] = {}
    for run in runs:
        first.setdefault(run_task(run), run)
    if len(first) > 1:
        named = ", ".join(f"{task} ({r.get('method', '?')} seed {r.get('seed', '?')})" for task, r in first.items())
        raise EpipruneError(f"the runs mix tasks: {named}; their metrics cannot share one table (accepted: one task "
                            "per compare folder; give the other runs another --out)")
    return METRICS.get(next(iter(first), "image"))
