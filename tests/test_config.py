"""TrainConfig is the one description of a run: every field is a `train` option and back, generated from the field
(issue 12), and `train --config FILE` reads the same fields with the command line on top."""

import argparse
import json
from dataclasses import asdict, fields

import pytest

from epiprune.cli import build_parser, main, train_config
from epiprune.errors import EpipruneError
from epiprune.run.config import TrainConfig, read_config_file

from .helpers import assert_one_line_error, call_main

# train options that are not run settings: where the settings come from, and how the command behaves
NOT_FIELDS = {"config", "resume", "force", "no_progress"}


def train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def config_of(argv):
    return train_config(build_parser().parse_args(["train", *argv]), ["train", *argv])


def test_every_config_field_is_a_train_option_and_every_option_a_field():
    options = {a.dest: a for a in train_parser()._actions if a.option_strings and a.dest != "help"}
    names = {f.name for f in fields(TrainConfig)}
    assert names - {"progress"} == set(options) - NOT_FIELDS, "a TrainConfig field without a train option, or back"
    for f in fields(TrainConfig):
        if f.name in options:
            action = options[f.name]
            flag = "--" + f.name.replace("_", "-")
            switch_on = f.default is True  # a switch that is on by default is offered with its --no- form
            assert action.option_strings == ([flag, "--no-" + flag[2:]] if switch_on else [flag])
            assert action.help == f.metadata["help"]
            if f.metadata["parse"] is None:  # text options (JSON, lists) show "(default: none)" in their help
                assert action.default == f.default, f.name
    assert options["no_progress"].default is False and TrainConfig().progress is True


def test_defaults_of_the_command_line_are_the_config_defaults():
    assert config_of([]) == TrainConfig()
    assert config_of(["--no-progress"]) == TrainConfig(progress=False)


def test_every_option_reaches_its_field():
    argv = ["--model-kwargs", '{"width": 4}', "--ignore-layers", "conv1, fc", "--keep-checkpoints", "1-2,5",
            "--epochs", "7", "--lr", "0.05", "--momentum", "0.8", "--record-scores", "--amp", "bf16",
            "--epi-threshold", "0.9", "--data-dir", "x", "--branch-from", "d", "--latency-noise-limit", "0.8"]
    cfg = config_of(argv)
    assert cfg.latency_noise_limit == 0.8 and cfg.latency_settings().noise_limit == 0.8  # what a table build meets
    assert cfg.model_kwargs == {"width": 4} and cfg.ignore_layers == ["conv1", "fc"]
    assert cfg.keep_checkpoints == [1, 2, 5] and cfg.epochs == 7 and cfg.lr == 0.05 and cfg.momentum == 0.8
    assert cfg.record_scores is True and cfg.amp == "bf16" and cfg.epi_threshold == 0.9
    assert cfg.data_dir == "x" and cfg.branch_from == "d"


def test_config_file_then_the_command_line_on_top(tmp_path):
    path = tmp_path / "config.json"
    TrainConfig(epochs=5, lr=0.02, keep_checkpoints=[1, 3], model_kwargs={"a": 1}, out="somewhere",
                progress=False).write(path)
    assert config_of(["--config", str(path)]) == TrainConfig(epochs=5, lr=0.02, keep_checkpoints=[1, 3],
                                                             model_kwargs={"a": 1}, out="somewhere", progress=False)
    cfg = config_of(["--config", str(path), "--epochs", "6", "--out", "there"])
    assert (cfg.epochs, cfg.out, cfg.lr, cfg.keep_checkpoints) == (6, "there", 0.02, [1, 3])
    # given explicitly, even at its default value, an option overrides the file
    assert config_of(["--config", str(path), "--lr", "0.1"]).lr == 0.1


@pytest.mark.parametrize("content,message", [
    ('{"epochz": 3}', "unknown settings ['epochz']"),
    ('{"epochs": "3"}', "epochs = '3' is not of type"),
    ('{"keep_checkpoints": [1, "2"]}', "keep_checkpoints"),
    ('{"record_scores": 1}', "record_scores = 1"),
    ("[1]", "is not a JSON object"),
    ("{", "is not JSON"),
])
def test_bad_config_file_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(EpipruneError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_config_file(path)
    assert_one_line_error(call_main(["train", "--config", path, "--out", tmp_path / "run"], capsys), message)


@pytest.mark.parametrize("bad,shown", [(0, "0"), (-1, "-1"), (float("nan"), "nan")])
def test_a_bad_noise_limit_in_a_config_file_is_one_line_naming_the_option(tmp_path, capsys, bad, shown):
    """A config file (or TrainConfig in Python) skips the option's parsing: validate checks the value."""
    with pytest.raises(EpipruneError, match=rf"^--latency-noise-limit {shown} is not a number > 0 \(accepted: "):
        TrainConfig(latency_noise_limit=bad).validate()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"latency_noise_limit": bad}))
    assert_one_line_error(call_main(["train", "--config", path, "--out", tmp_path / "run"], capsys),
                          f"--latency-noise-limit {shown} is not a number > 0 (accepted: ")


def test_config_file_accepts_what_write_wrote(tmp_path):
    cfg = TrainConfig(epi_threshold=0.9, warmup_epochs=1, ignore_layers=["fc"], keep_checkpoints=None)
    cfg.write(tmp_path / "c.json")
    assert TrainConfig.from_file(tmp_path / "c.json") == cfg
    assert json.loads((tmp_path / "c.json").read_text()) == asdict(cfg)
    data = asdict(cfg)
    data["lr"] = 1  # an int where a float is expected is fine in JSON
    (tmp_path / "c.json").write_text(json.dumps(data))
    assert TrainConfig.from_file(tmp_path / "c.json").lr == 1


def test_train_config_of_a_compare_written_file_is_the_same_run_as_its_command_line(tmp_path, capsys):
    from epiprune.evidence.runs import CompareConfig

    cmp = CompareConfig(train_subset=64, val_subset=32, epochs=2, batch_size=64, families=["fixed"], grid=[1],
                        branch=False, out=str(tmp_path / "cmp"))
    method = cmp.methods()[0]
    config = tmp_path / "config.json"
    cmp.run_config(method, seed=0).write(config)
    assert main(["train", "--config", str(config)]) == 0
    argv = ["--train-subset", "64", "--val-subset", "32", "--epochs", "2", "--batch-size", "64", "--prune-at", "1",
            "--epi-window", "3", "--max-dense-epochs", "1", "--seed", "0", "--no-progress"]
    assert main(["train", *argv, "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    from_file, from_cli = tmp_path / "cmp" / "runs" / "fixed-1" / "seed0", tmp_path / "cli"

    def rows(folder):
        return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"}
                for line in (folder / "metrics.jsonl").read_text().splitlines()]

    def settings(folder):
        return {k: v for k, v in json.loads((folder / "summary.json").read_text())["config"].items() if k != "out"}

    assert len(rows(from_file)) == 2 and rows(from_file) == rows(from_cli)
    # the typed records are the files' keys exactly
    from epiprune.run.records import EpochRow, RunSummary

    for record, written in [(RunSummary, json.loads((from_file / "summary.json").read_text()))] + [
            (EpochRow, json.loads(line)) for line in (from_file / "metrics.jsonl").read_text().splitlines()]:
        assert record.__required_keys__ <= set(written) <= record.__required_keys__ | record.__optional_keys__
    assert settings(from_file) == settings(from_cli)
    assert (from_file / "model.safetensors").read_bytes() == (from_cli / "model.safetensors").read_bytes()


def test_the_method_of_a_run_is_read_from_its_settings():
    from epiprune.evidence.runs import CompareConfig, method_of

    cmp = CompareConfig(epochs=8, grid=[1, 2, 3, 4], finetune_epochs=3)
    methods = cmp.methods()
    assert len(methods) == 14
    for m in methods:
        found = method_of(asdict(cmp.run_config(m, seed=1)))
        assert (found.name, found.family) == (m.name, m.family)
    assert method_of({"epochs": 8, "indicator": "epi", "importance": "random"}) is None  # no recipe made it
    assert method_of({"epochs": 12}).name == "epi-taylor"  # fields a summary lacks are TrainConfig's defaults


def test_field_types_are_cached_but_handed_out_as_copies():
    """The hints are computed once per class (typing.get_type_hints compiles every annotation: ~0.2 s per command
    line when asked per option); a caller changing its copy does not change what the next caller gets."""
    from epiprune.run.config import TrainConfig

    hints = TrainConfig.field_types()
    assert hints["epochs"] is int and hints is not TrainConfig.field_types()
    hints["epochs"] = str
    assert TrainConfig.field_types()["epochs"] is int
