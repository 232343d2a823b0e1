"""`--holdout N` with `--data text`: N windows of the training bytes are the validation split that chooses, each
document's tail is the test split, evaluated once at the end (run/text.py's rule). The splits share no byte (checked
on the byte offsets), have the sizes asked for, leave the path without --holdout as it was (the windows of the code
before the option, by checksum), train and record test bits per byte, make compare's table report the test split,
and a holdout that does not fit is one line."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from epiprune.errors import EpipruneError
from epiprune.evidence.metrics import BITS_PER_BYTE
from epiprune.evidence.runs import CompareConfig
from epiprune.evidence.table import aggregate, oracle_runs, tabulate
from epiprune.run import text
from epiprune.run.config import TrainConfig
from epiprune.run.data import load_dataset
from epiprune.run.steps import split_data
from epiprune.run.text import load_text, proportional_shares, split_ranges

from .helpers import assert_one_line_error, call_main
from .test_compare_text import text_runs

# SHA256 of the built-in corpus's (train, validation) windows as the code before --holdout for text made them
# (commit 8eca324: split_documents, then windows), at --seq-len 128 (the default) and 37
BEFORE_HOLDOUT = {
    128: ((10083, 1120), "79f090c06c6046e97f7842999ff61e86c3b0494bbb05f6f39f3ba6789581f8e0",
          "8c9bb5c303e558f2d8985ad1b4bf26a84c2cfa34a1979fcc81c9c5675102987a"),
    37: ((34883, 3876), "8b1aa27504f006c9aae890b1f75ae4e7e20c82cc4c621aa0f972230f6349809f",
         "7381278a4e56862efc0e68e1aa20eb4185878b227acd4a8804eedc2cb300663d"),
}


def offsets(ranges: list[tuple[int, int]]) -> np.ndarray:
    """Every byte offset of [start, end) ranges, in order."""
    return np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else np.zeros(0, dtype=int)


def stream(windows: np.ndarray) -> np.ndarray:
    """The byte stream windows were cut from (each window's last byte is the next one's first)."""
    return np.concatenate([windows[:, :-1].ravel(), windows[-1:, -1]])


def text_cfg(**settings) -> TrainConfig:
    return TrainConfig(model="lm_tiny", data="text", **settings)


@pytest.mark.parametrize("lengths,held", [([100, 30], 0), ([100, 30], 20), ([1, 7, 1000, 3, 250], 301),
                                          ([50], 44), ([9, 0, 11], 5)])
def test_every_byte_is_in_exactly_one_split_and_each_documents_pieces_are_train_held_tail(lengths, held):
    ranges = split_ranges(lengths, held)
    seen = np.zeros(sum(lengths), dtype=int)
    for split in (ranges.train, ranges.held, ranges.tail):
        np.add.at(seen, offsets(split), 1)
    assert (seen == 1).all()  # disjoint, and nothing left out
    assert sum(b - a for a, b in ranges.held) == held
    start = 0
    for n in lengths:  # within a document: its training piece, then its held-out piece, then its tail
        inside = [[r for r in split if start <= r[0] < start + n] for split in (ranges.train, ranges.held,
                                                                                  ranges.tail)]
        cuts = [start] + [r[1] for pieces in inside for r in pieces]
        assert all(len(pieces) <= 1 for pieces in inside) and cuts == sorted(cuts)
        if inside[1]:
            assert inside[2] and inside[1][0][1] == inside[2][0][0]  # just before the document's tail
        start += n
    assert split_ranges(lengths, held) == ranges  # deterministic


def test_held_out_bytes_are_shared_in_proportion_to_the_training_parts():
    assert proportional_shares(10, [1, 1, 1]) == [4, 3, 3]  # remainders tie: the earlier document
    assert proportional_shares(10, [0, 3, 4]) == [0, 4, 6]  # 4.29 and 5.71: the larger remainder
    assert proportional_shares(0, [3, 4]) == [0, 0]
    lengths = [len(d) for d in text.builtin_documents()]
    parts = [b - a for a, b in split_ranges(lengths).train]
    held = 100 * 128 + 1
    shares = [b - a for a, b in split_ranges(lengths, held).held]
    assert len(shares) == len(lengths) == 34 and sum(shares) == held
    assert all(abs(s - held * p / sum(parts)) < 1 for s, p in zip(shares, parts, strict=True))


@pytest.mark.parametrize("seq_len,count", [(128, 100), (37, 1), (16, 5000)])
def test_holdout_windows_are_made_of_their_own_byte_ranges_and_have_the_sizes_asked(seq_len, count):
    data = load_text(None, seq_len)
    split, (test_windows,) = data.hold_out(count)
    ranges = split_ranges(data.lengths, count * seq_len + 1)
    assert split.val_windows.shape == (count, seq_len + 1)
    train_bytes = sum(b - a for a, b in ranges.train)
    assert split.train_windows.shape == ((train_bytes - 1) // seq_len, seq_len + 1)
    np.testing.assert_array_equal(test_windows, data.val_windows)  # the tails: the validation split without it
    # each split's windows are the corpus's bytes at its own offsets, and no offset is in two splits
    used = {}
    for name, windows, pieces in (("train", split.train_windows, ranges.train), ("held", split.val_windows,
                                                                                  ranges.held),
                                  ("test", test_windows, ranges.tail)):
        at = offsets(pieces)[:len(stream(windows))]  # windows leave a partial window's bytes unused at the end
        np.testing.assert_array_equal(stream(windows), data.corpus[at])
        used[name] = set(at.tolist())
    assert not used["train"] & used["held"] and not used["train"] & used["test"]
    assert not used["held"] & used["test"]
    assert len(used["held"]) == count * seq_len + 1  # every held-out byte is in a held-out window


@pytest.mark.parametrize("seq_len", [128, 37])
def test_without_holdout_the_windows_are_those_of_before(seq_len):
    (shapes, train_sha, val_sha) = BEFORE_HOLDOUT[seq_len]
    data = load_text(None, seq_len)
    assert (len(data.train_windows), len(data.val_windows)) == shapes
    assert hashlib.sha256(data.train_windows.tobytes()).hexdigest() == train_sha
    assert hashlib.sha256(data.val_windows.tobytes()).hexdigest() == val_sha
    split, test_split = split_data(data, text_cfg(seq_len=seq_len, train_subset=300, val_subset=40, seed=3))
    drawn = data.subset(300, 40, seed=3)  # what split_data drew before: the same windows in the same order
    assert test_split is None
    np.testing.assert_array_equal(split.train_windows, drawn.train_windows)
    np.testing.assert_array_equal(split.val_windows, drawn.val_windows)


def test_split_data_sizes_the_three_splits_with_train_and_val_subset():
    data = load_text(None, 64)
    split, (test_windows,) = split_data(data, text_cfg(seq_len=64, holdout=30, train_subset=200, val_subset=20,
                                                       data_seed=1))
    assert (len(split.train_windows), len(split.val_windows), len(test_windows)) == (200, 30, 20)
    held, (tails,) = data.hold_out(30)
    np.testing.assert_array_equal(split.val_windows, held.val_windows)  # all held-out windows: not subset
    assert {w.tobytes() for w in test_windows} <= {w.tobytes() for w in tails}
    assert {w.tobytes() for w in split.train_windows} <= {w.tobytes() for w in held.train_windows}


def test_compare_counts_the_steps_of_the_training_windows_left_after_the_holdout():
    """A text holdout takes N x seq_len + 1 bytes: at --seq-len 16 the built-in corpus's training bytes minus one
    divide by 16, so `windows - N` (the image count) would be one window too many. Images: their count less N."""
    cfg = CompareConfig(model="lm_tiny", data="text", seq_len=16, holdout=7, batch_size=1, epochs=1, epi_every="auto")
    split, _ = split_data(load_text(None, 16), text_cfg(seq_len=16, holdout=7))
    assert cfg.probe_clock()[1] == len(split.train_windows) == len(load_text(None, 16).train_windows) - 8
    images = CompareConfig(holdout=40, batch_size=1, epochs=1, epi_every="auto")
    assert images.probe_clock()[1] == len(load_dataset("builtin", None).train_labels) - 40


def test_a_holdout_that_does_not_fit_is_refused():
    data = load_text(None, 512)
    limit = len(data.hold_out(1)[0].train_windows)  # each held-out window leaves training
    with pytest.raises(EpipruneError, match=rf"^--holdout {limit + 1} does not fit {len(data.train_windows)} "
                       rf"training sequences of 512 bytes \(accepted: 1\.\.{limit}\)$"):
        data.hold_out(limit + 1)
    assert len(data.hold_out(limit)[0].train_windows) == 1
    with pytest.raises(EpipruneError, match=r"^--holdout 0 does not fit"):
        data.hold_out(0)
    with pytest.raises(EpipruneError, match=r"^--holdout 3 needs the text's documents"):
        data.subset(10, 10).hold_out(3)


@pytest.mark.parametrize("holdout,fragments", [
    ("100000", ["--holdout 100000 does not fit 2520 training sequences of 512 bytes", "(accepted: 1..2519)"]),
    ("-1", ["--holdout -1 is too small (accepted: an integer >= 0)"]),
])
def test_a_text_holdout_that_does_not_fit_is_one_line_and_writes_nothing(holdout, fragments, tmp_path, capsys):
    pytest.importorskip("transformers")  # lm_tiny's factory
    result = call_main(["train", "--model", "lm_tiny", "--data", "text", "--seq-len", "512", "--holdout", holdout,
                        "--epochs", "1", "--epi-every", "auto", "--no-progress", "--out", tmp_path / "run"], capsys)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "run").exists()


def test_a_text_run_with_holdout_records_test_bits_per_byte_once(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "lm"
    result = call_main(["train", "--model", "lm_tiny", "--data", "text", "--epochs", "2", "--budget", "flops:0.5",
                        "--prune-at", "1", "--train-subset", "16", "--val-subset", "8", "--batch-size", "8",
                        "--seq-len", "16", "--holdout", "6", "--no-progress", "--out", out], capsys)
    assert result.returncode == 0, result.stderr
    assert "16 train / 6 val sequences of 16 bytes" in result.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) == 2 and not any(k.startswith("test_") for k in rows[0])  # only at the last epoch
    last = rows[-1]
    assert last["test_bits_per_byte"] == pytest.approx(last["test_loss"] / math.log(2), rel=1e-12)
    assert last["test_perplexity"] == pytest.approx(math.exp(last["test_loss"]), rel=1e-12)
    assert 0 <= last["test_top1"] <= 1 and last["test_bits_per_byte"] != last["val_bits_per_byte"]
    assert summary["final_test_bits_per_byte"] == last["test_bits_per_byte"] < 8.0
    assert summary["final_test_perplexity"] == last["test_perplexity"]
    assert summary["final_val_bits_per_byte"] == last["val_bits_per_byte"] and summary["config"]["holdout"] == 6
    # the run's last lines name the test split too (compare reports it; the run said only validation)
    assert (f"final val {last['val_bits_per_byte']:.3f} bits/byte (perplexity {last['val_perplexity']:.2f}), "
            f"test {last['test_bits_per_byte']:.3f} bits/byte (perplexity {last['test_perplexity']:.2f})"
            ) in result.stdout
    # 8 test windows of 16 bytes (--val-subset) and 6 validation windows: a top-1 per byte is a count over 128, 96
    assert round(last["test_top1"] * 128, 6).is_integer() and round(last["val_top1"] * 96, 6).is_integer()


def with_test_split(run: dict, shift: float) -> dict:
    """A text run that held out a validation split: its test values are the validation ones plus `shift`."""
    bpb = run["final_val_bits_per_byte"] + shift
    return {**run, "final_test_bits_per_byte": bpb, "final_test_perplexity": 2 ** bpb}


def test_a_text_comparison_with_holdout_chooses_on_validation_and_reports_the_test_split():
    runs = [with_test_split(r, 0.5 if r["method"] == "fixed-0.25" else 0.1) for r in text_runs()]
    assert [r["method"] for r in oracle_runs(runs)] == ["fixed-0.25", "fixed-0.5"]  # chosen on validation
    rows = {r["method"]: r for r in aggregate(runs)}
    assert rows["dense"]["bits_per_byte_mean"] == pytest.approx(5.65)
    assert rows["dense"]["val_bits_per_byte_mean"] == pytest.approx(5.55)
    assert rows["dense"]["perplexity_mean"] == pytest.approx(2 ** 5.65)
    oracle = rows["oracle (best per seed), grid from scratch"]
    assert oracle["bits_per_byte_mean"] == pytest.approx((5.60 + 0.5 + 5.61 + 0.1) / 2)  # its test values
    result = tabulate(runs)
    assert ("bits/byte: final cross-entropy per byte / ln 2 on the test split (chosen on the held-out validation "
            "split), lower is better") in result.table
    assert "no --holdout" not in result.table
    described = BITS_PER_BYTE.describe(runs)
    assert described["summary_key"] == "final_test_bits_per_byte"
    assert described["oracle_chosen_on"] == "final_val_bits_per_byte"
    assert described["extras"] == {"perplexity_mean": "final_test_perplexity"}
    plain = tabulate(text_runs()).table  # the same runs without --holdout: on the split they were chosen on
    assert "on the validation split (also used to choose the oracle: no --holdout, so no test split)" in plain
    assert BITS_PER_BYTE.describe(text_runs())["extras"] == {"perplexity_mean": "final_val_perplexity"}
