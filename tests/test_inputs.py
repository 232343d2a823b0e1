"""Bad input gets one line and exit 2 (never a traceback), and a run folder is never silently replaced (issue 14)."""

import hashlib
import json
import os
import stat

import numpy as np
import pytest

import epiprune.run.trainer as trainer
from epiprune.cli import main
from epiprune.run.folder import ASIDE, recover

from .helpers import assert_one_line_error, call_main

# a tiny image folder: 2 classes x 10 images of 16x16, so a run takes about a second
TINY = ["--data", "imagefolder", "--image-size", "16", "--epochs", "3", "--epi-window", "1", "--batch-size", "8",
        "--no-progress"]


def make_image_folder(root, classes=("cat", "dog"), per_class=10):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((16, 16, 3)) * 100 + 120 * c).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


def snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("args,needle", [
    (["--train-subset", "0"], "--train-subset 0 is too small"),
    (["--train-subset", "-5"], "--train-subset -5 is too small"),
    (["--val-subset", "0"], "--val-subset 0 is too small"),
    (["--weight-decay", "-1"], "--weight-decay -1.0 is not a number >= 0"),
    (["--weight-decay", "nan"], "--weight-decay nan"),
    (["--data-dir", "/tmp"], "--data-dir /tmp is given but --data is builtin"),
    (["--epochs", "0"], "--epochs 0 is too small"),
    (["--epochs", "-3"], "--epochs -3 is too small"),
    (["--seed", "-1"], "--seed -1 is outside"),
    (["--init-batches", "0"], "--init-batches 0 is too small"),
    (["--min-dense-epochs", "-1"], "--min-dense-epochs -1 is too small (accepted: an integer >= 0)"),
    (["--dist-timeout", "0"], "--dist-timeout 0.0 is not a positive number"),
    (["--epi-smooth", "0"], "--epi-smooth 0 is too small (accepted: an integer >= 1; 1 is none)"),
    (["--epi-peak", "-1"], "--epi-peak -1 is too small (accepted: an integer >= 0; 0 turns it off)"),
    (["--earlybird-queue", "0"], "--earlybird-queue 0 is too small (accepted: an integer >= 1)"),
    (["--holdout", "-1"], "--holdout -1 is too small (accepted: an integer >= 0)"),
    (["--probe-every", "-1"], "--probe-every -1 is too small (accepted: an integer >= 0)"),
])
def test_bad_train_input_names_its_option_and_leaves_no_folder(tmp_path, capsys, args, needle):
    out = tmp_path / "new" / "run"
    result = call_main(["train", "--out", str(out), *args], capsys)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("args,needle", [
    (["--prune-at", "2", "--indicator", "none"], "--prune-at 2 with --indicator none never prunes"),
    (["--optimizer", "adamw", "--momentum", "0.5"], "--momentum 0.5 is SGD's and AdamW does not use it"),
    (["--optimizer", "adamw", "--momentum", "0.9"], "--momentum 0.9 is SGD's"),  # the default, given explicitly
])
def test_contradicting_train_options_are_refused(tmp_path, capsys, args, needle):
    """Issue 23: each of these was accepted and silently did something else than it said."""
    out = tmp_path / "new" / "run"
    small = ["--train-subset", "64", "--val-subset", "32", "--epochs", "3", "--epi-window", "1", "--no-progress"]
    assert_one_line_error(call_main(["train", "--out", str(out), *small, *args], capsys), needle)
    assert not (tmp_path / "new").exists()


def test_contradicting_settings_in_a_config_file_are_refused(tmp_path, capsys):
    from epiprune.errors import EpipruneError
    from epiprune.run.config import TrainConfig

    with pytest.raises(EpipruneError, match="AdamW does not use it"):
        TrainConfig(optimizer="adamw", momentum=0.0).validate()
    (tmp_path / "c.json").write_text(json.dumps({"indicator": "none", "prune_at": 1}))
    assert_one_line_error(call_main(["train", "--config", tmp_path / "c.json", "--out", tmp_path / "o", "--epochs", "3",
                                     "--train-subset", "64", "--val-subset", "32", "--no-progress"], capsys),
                          "never prunes")
    TrainConfig(optimizer="adamw").validate()  # AdamW alone, and --prune-at with the default indicator, are fine
    TrainConfig(prune_at=1).validate()


def test_compare_into_a_train_runs_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    before = snapshot(run)
    small = ["--train-subset", "64", "--val-subset", "32", "--epochs", "3", "--epi-window", "1", "--methods", "dense"]
    assert_one_line_error(call_main(["compare", "--out", run, *small], capsys),
                          f"--out {run} holds an `epiprune train` run")
    assert snapshot(run) == before


def test_late_failure_removes_the_folders_it_created(tmp_path, capsys):
    """The budget is checked only once the model is built: the folder made before that is removed again."""
    out = tmp_path / "new" / "run"
    result = call_main(["train", "--budget", "flops:0.0001", "--train-subset", "64", "--val-subset", "32",
                        "--out", str(out)], capsys)
    assert_one_line_error(result, "cannot be met")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("args,needle", [
    (["--jobs", "0"], "--jobs 0 is too small"),
    (["--seeds", "5-1"], "bad --seeds '5-1': 5-1 is an empty range"),
    (["--seeds", "0,0"], "bad --seeds '0,0'"),
    (["--grid", "9-3"], "bad --grid '9-3': 9-3 is an empty range"),
    (["--epochs", "1"], "--epochs 1 is too small for --epi-window 3"),
    (["--train-subset", "0"], "--train-subset 0 is too small"),
    (["--data", "cifar10", "--data-dir", "/nonexistent/cifar"], "data folder not found: /nonexistent/cifar"),
    (["--finetune-epochs", "0"], "--finetune-epochs 0 is too small"),
    (["--grid", "0"], "--grid epochs [0] must lie in 1..11"),
])
def test_bad_compare_input_is_refused_before_any_folder_or_run(tmp_path, capsys, args, needle):
    out = tmp_path / "cmp"
    result = call_main(["compare", "--out", str(out), *args], capsys)
    assert_one_line_error(result, needle)
    assert not out.exists()


def test_resume_refuses_options_it_would_ignore(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"untouched")
    result = call_main(["train", "--resume", str(run), "--epochs", "30", "--budget", "flops:0.2", "--out", "x"], capsys)
    assert_one_line_error(result, "--epochs, --budget, --out cannot be changed with --resume")
    assert (run / "checkpoint.pt").read_bytes() == b"untouched" and not (tmp_path / "x").exists()


def test_empty_checkpoint_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    result = call_main(["train", "--resume", str(tmp_path), "--no-progress"], capsys)
    assert_one_line_error(result, "corrupt or unsafe checkpoint")
    assert (tmp_path / "checkpoint.pt").read_bytes() == b""


def write_run(folder, last_line='{"epoch": 3, "train_lo'):
    folder.mkdir()
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_top1": 0.1 * e, "epi": None if e == 1 else 0.9, "flops": 1e6,
             "pruned": e > 1} for e in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + last_line)
    (folder / "summary.json").write_text(json.dumps({"epi_threshold": 0.944, "prune_epoch": 2, "trigger": "epi"}))


def test_report_leaves_out_a_truncated_last_line(tmp_path, capsys):
    write_run(tmp_path / "run")
    assert main(["report", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "left out the incomplete last line 3" in out and (tmp_path / "run" / "epi.png").is_file()


def test_report_on_a_corrupt_file_is_a_one_line_error(tmp_path, capsys):
    write_run(tmp_path / "run", last_line="")
    (tmp_path / "run" / "metrics.jsonl").write_text("garbage\n" + (tmp_path / "run" / "metrics.jsonl").read_text())
    result = call_main(["report", str(tmp_path / "run")], capsys)
    assert_one_line_error(result, "line 1 is not a metrics row")
    write_run(tmp_path / "run2", last_line="")
    (tmp_path / "run2" / "summary.json").write_text("{trunc")
    result = call_main(["report", str(tmp_path / "run2")], capsys)
    assert_one_line_error(result, "summary.json is not readable JSON")


def test_one_class_image_folder_trains_with_a_warning(tmp_path, capsys):
    data = make_image_folder(tmp_path / "one", classes=("cat",))
    assert main(["train", *TINY, "--data-dir", str(data), "--out", str(tmp_path / "run")]) == 0
    assert "warning: imagefolder has 1 class" in capsys.readouterr().err


@pytest.fixture
def finished_run(tmp_path, images, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--data-dir", str(images), "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def test_a_finished_run_is_not_replaced_without_force(finished_run, images, capsys):
    before = snapshot(finished_run)
    result = call_main(["train", *TINY, "--data-dir", images, "--budget", "flops:0.3", "--out", finished_run], capsys)
    refusal = f"output folder {finished_run} already holds a run (accepted: --resume {finished_run}"
    assert_one_line_error(result, refusal)
    assert snapshot(finished_run) == before


def test_force_keeps_the_old_run_until_the_new_one_has_a_checkpoint(finished_run, images, capsys, monkeypatch):
    before = snapshot(finished_run)
    args = ["train", *TINY, "--data-dir", str(images), "--out", str(finished_run), "--force"]
    # bad input found late (after the old files were moved aside): they are put back
    result = call_main([*args, "--budget", "flops:0.0001"], capsys)
    assert_one_line_error(result, "cannot be met")
    assert snapshot(finished_run) == before and not (finished_run / ASIDE).exists()
    # Ctrl-C during the first epoch: nothing of the new run is saved, the old run is intact, and the message
    # does not promise a checkpoint
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(trainer, "evaluate", interrupt)
        assert main([*args, "--budget", "flops:0.3"]) == 130
    err = capsys.readouterr().err
    assert "nothing of this run was saved" in err and "--resume" not in err
    assert snapshot(finished_run) == before and not (finished_run / ASIDE).exists()
    # a run that gets its checkpoint replaces the old one
    assert main([*args, "--budget", "flops:0.3"]) == 0
    after = snapshot(finished_run)
    assert after.keys() == before.keys() and after["summary.json"] != before["summary.json"]
    assert json.loads((finished_run / "summary.json").read_text())["budget"] == "flops:0.3"
    assert not (finished_run / ASIDE).exists()


def test_old_run_comes_back_after_a_hard_kill_while_replacing(finished_run, images, capsys):
    """SIGKILL between moving the old files aside and the new run's first checkpoint: the next command on the
    folder puts them back (simulated by moving them aside by hand)."""
    before = snapshot(finished_run)
    aside = finished_run / ASIDE
    aside.mkdir()
    for name in before:
        os.replace(finished_run / name, aside / name)
    result = call_main(["train", *TINY, "--data-dir", str(images), "--out", str(finished_run)], capsys)
    assert_one_line_error(result, "already holds a run")
    assert snapshot(finished_run) == before and not aside.exists()
    assert recover(finished_run) is False


def test_outputs_are_readable_like_the_plots(finished_run):
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in finished_run.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_compare_interrupt_names_no_resume_flag(tmp_path, capsys, monkeypatch):
    import epiprune.evidence.compare

    def interrupt(cfg, log=print):
        raise KeyboardInterrupt

    monkeypatch.setattr(epiprune.evidence.compare, "compare", interrupt)
    err = assert_one_line_error(call_main(["compare", "--out", tmp_path / "cmp"], capsys), "run the same command again",
                                code=130)
    assert "--resume" not in err


def test_report_on_a_compare_folder_with_a_damaged_summary(tmp_path, capsys):
    run = tmp_path / "cmp" / "runs" / "dense" / "seed0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text('{"model": "resn')  # cut off while being copied, say
    result = call_main(["report", str(tmp_path / "cmp")], capsys)
    assert_one_line_error(result, "no finished run under")


def test_a_file_system_refusal_is_one_line_not_a_traceback(finished_run, capsys):
    """/proc takes no new files, even from root: the export's temp file cannot be made there."""
    result = call_main(["export", finished_run, "--out", "/proc/model.pt"], capsys)
    assert_one_line_error(result, code=1, starts="No such file or directory (/proc/")
