import json
import signal
import subprocess
import sys
import time

import pytest

import epiprune
from epiprune.errors import EpipruneError
from epiprune.run.trainer import TrainConfig, train

from .helpers import assert_one_line_error, call_main, run_cli

# on the CPU: the test demands bit-identical metrics, which cuDNN's nondeterministic kernels rule out on a GPU
ARGS = ["--device", "cpu", "--train-subset", "512", "--val-subset", "128", "--epochs", "5", "--epi-window", "1",
        "--min-dense-epochs", "2", "--max-dense-epochs", "2", "--batch-size", "64", "--no-progress"]
VOLATILE = {"epoch_seconds"}


def train_cmd(*extra):
    return [sys.executable, "-m", "epiprune", "train", *ARGS, *extra]


def metrics(folder):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    proc = run_cli("train", *ARGS, "--out", out, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("kill_after", [1, 3])  # before and after the prune event (end of epoch 2)
def test_killed_run_resumes_to_identical_result(tmp_path, uninterrupted, kill_after):
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd("--out", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        path = out / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = run_cli("train", "--resume", out, "--no-progress", timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    assert metrics(out) == metrics(uninterrupted)
    a = json.loads((out / "summary.json").read_text())
    b = json.loads((uninterrupted / "summary.json").read_text())
    assert a["final_widths"] == b["final_widths"] and a["prune_epoch"] == b["prune_epoch"] == 2
    assert a["final_val_top1"] == b["final_val_top1"]


def test_corrupt_checkpoint_is_reported_and_left_alone(tmp_path, uninterrupted, capsys):
    out = tmp_path / "run"
    out.mkdir()
    data = (uninterrupted / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    assert_one_line_error(call_main(["train", "--resume", out, "--no-progress"], capsys),
                          starts="corrupt or unsafe checkpoint")
    assert (out / "checkpoint.pt").read_bytes() == data[: len(data) // 3]


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "epiprune-checkpoint/1", "model": Evil()}, f)
    with pytest.raises(EpipruneError, match="corrupt or unsafe"):
        epiprune.load_checkpoint(path)


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    import torch

    import epiprune.run.trainer as trainer

    calls = {"n": 0}
    real = trainer.cross_entropy

    def sometimes_nan(logits, labels):
        calls["n"] += 1
        loss = real(logits, labels)
        return loss * float("nan") if calls["n"] > 6 else loss  # 4 batches per epoch: NaN in epoch 2

    monkeypatch.setattr(trainer, "cross_entropy", sometimes_nan)
    cfg = TrainConfig(train_subset=256, val_subset=64, epochs=3, epi_window=1, batch_size=64, out=str(tmp_path),
                      progress=False)
    with pytest.raises(trainer.TrainingError, match="loss became nan in epoch 2"):
        train(cfg, log=lambda _: None)
    state = epiprune.load_checkpoint(tmp_path / "checkpoint.pt")
    assert len(state["extra"]["metrics"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert_one_line_error(call_main(["train", "--resume", tmp_path], capsys), "no checkpoint at")


def _copy_with_config(source, target, edit, fmt=None):
    """A copy of the run in `source` whose checkpoint's recorded settings are edited (and format, if given)."""
    import shutil

    import torch

    shutil.copytree(source, target)
    state = torch.load(target / "checkpoint.pt", weights_only=True)
    edit(state["extra"]["config"])
    if fmt is not None:
        state["format"] = fmt
    torch.save(state, target / "checkpoint.pt")
    return (target / "checkpoint.pt").read_bytes()


def test_resume_of_a_run_with_an_unknown_setting_is_one_line_and_keeps_the_checkpoint(tmp_path, uninterrupted,
                                                                                        capsys):
    """Was a TypeError traceback from TrainConfig(**config) (issue 23)."""
    out = tmp_path / "run"
    before = _copy_with_config(uninterrupted, out, lambda config: config.update(future_setting=1))
    assert_one_line_error(call_main(["train", "--resume", out, "--no-progress"], capsys),
                          "records settings this epiprune does not know: future_setting",
                          "(accepted: resume it with the epiprune version that made it)")
    assert (out / "checkpoint.pt").read_bytes() == before


def test_resume_of_a_run_missing_a_setting_says_which_default_it_takes(tmp_path, uninterrupted, capsys):
    out = tmp_path / "run"
    _copy_with_config(uninterrupted, out, lambda config: config.pop("epi_smooth"))
    (out / "summary.json").unlink()  # killed after its last checkpoint: resuming writes the summary
    result = call_main(["train", "--resume", out, "--no-progress"], capsys)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:")]
    assert notes == [f"note: the run in {out} records no epi_smooth: resumed with today's defaults (epi_smooth=2)"]


def test_a_checkpoint_of_another_format_version_is_named_as_such(tmp_path, uninterrupted, capsys):
    out = tmp_path / "run"
    _copy_with_config(uninterrupted, out, lambda config: None, fmt="epiprune-checkpoint/2")
    assert_one_line_error(call_main(["train", "--resume", out, "--no-progress"], capsys),
                          "is an epiprune checkpoint of format epiprune-checkpoint/2, which this version does not read")
