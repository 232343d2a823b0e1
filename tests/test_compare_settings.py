"""compare reuses a finished run only if it was made with every setting this comparison runs with (issue 22): the
reuse check compares every recorded TrainConfig field, extra_args included, except how a run was made."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from epiprune import EpipruneError
from epiprune.evidence.compare import run_one
from epiprune.evidence.runs import METHOD_FIELDS, NOT_COMPARED, SHARED_SETTINGS, CompareConfig, settings_mismatch
from epiprune.run.config import TrainConfig


def recorded(cfg: CompareConfig, seed: int = 0) -> dict:
    """The config a finished run of cfg records in its summary.json (the dense method's)."""
    return asdict(TrainConfig(**cfg.shared_settings(), seed=seed))


def other_value(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return [*value, "x"]
    if isinstance(value, dict):
        return {**value, "x": 1}
    return 3  # None


def test_a_run_made_with_the_same_settings_is_reused():
    cfg = CompareConfig(epochs=6, epi_window=2)
    assert settings_mismatch(cfg, "dense", 0, recorded(cfg)) is None
    assert settings_mismatch(cfg, "fixed-2", 0, {**recorded(cfg), "prune_at": 2}) is None  # its method's field


COMPARED = [f.name for f in fields(TrainConfig) if f.name not in NOT_COMPARED and f.name not in METHOD_FIELDS]


@pytest.mark.parametrize("name", COMPARED)
def test_every_recorded_setting_is_compared(name):
    cfg = CompareConfig(epochs=6, epi_window=2)
    made = recorded(cfg)
    made[name] = other_value(made[name])
    assert settings_mismatch(cfg, "epi-taylor", 0, made) == f"{name}={made[name]!r}, not {recorded(cfg)[name]!r}"


def test_dense_runs_serve_every_budget():
    cfg = CompareConfig(epochs=6, epi_window=2)
    assert settings_mismatch(cfg, "dense", 0, {**recorded(cfg), "budget": "flops:0.3"}) is None
    assert settings_mismatch(cfg, "epi-taylor", 0, {**recorded(cfg), "budget": "flops:0.3"}) is not None


def test_extra_args_are_compared_and_a_finished_run_made_without_them_is_refused(tmp_path):
    """The bug this guards: CompareConfig(extra_args=['--optimizer', 'adamw']) reused finished SGD runs."""
    sgd = CompareConfig(epochs=6, epi_window=2, out=str(tmp_path), families=["dense"])
    adamw = CompareConfig(epochs=6, epi_window=2, out=str(tmp_path), families=["dense"],
                          extra_args=["--optimizer", "adamw"])
    assert settings_mismatch(adamw, "dense", 0, recorded(sgd)) == "optimizer='sgd', not 'adamw'"
    folder = Path(adamw.run_dir("dense", 0))
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"config": recorded(sgd)}))
    with pytest.raises(EpipruneError, match=r"summary.json was made with optimizer='sgd', not 'adamw' \(accepted: "):
        run_one(adamw, adamw.methods()[0], 0, log=lambda _: None)


def test_compare_options_are_trainconfigs():
    """compare's shared settings are TrainConfig fields, and its command line offers them with TrainConfig's help."""
    from epiprune.cli import build_parser

    names = {f.name for f in fields(TrainConfig)}
    assert set(SHARED_SETTINGS) <= names and set(SHARED_SETTINGS) <= {f.name for f in fields(CompareConfig)}
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["compare"]
    helps = {a.dest: a.help for a in sub._actions}
    for f in fields(TrainConfig):
        if f.name in SHARED_SETTINGS:
            assert helps[f.name] == f.metadata["help"], f.name
    assert next(a.default for a in sub._actions if a.dest == "epochs") == CompareConfig.epochs == 12


def test_compares_noise_limit_reaches_every_run_and_is_not_compared(tmp_path, monkeypatch):
    """compare --latency-noise-limit: every run's table build meets it; a finished run is reused whatever limit it
    was made with (the limit decides whether a table build is kept, not what a run computes)."""
    import epiprune.evidence.compare as compare_module
    from epiprune.cli import main

    given = []
    monkeypatch.setattr(compare_module, "compare", lambda cfg: given.append(cfg))
    assert main(["compare", "--budget", "latency:0.5", "--latency-noise-limit", "0.9", "--out", str(tmp_path)]) == 0
    cfg = given[0]
    assert cfg.latency_noise_limit == 0.9
    for method in cfg.methods():
        assert cfg.run_config(method, 0).latency_settings().noise_limit == 0.9
    made = recorded(CompareConfig(epochs=6, epi_window=2))
    assert settings_mismatch(CompareConfig(epochs=6, epi_window=2, latency_noise_limit=0.9), "epi-taylor", 0,
                             made) is None


def test_compares_latency_target_and_batch_reach_every_run_and_are_compared(tmp_path, monkeypatch):
    """compare --latency-target / --latency-batch (missing before: a comparison under an inference-latency budget
    was impossible without extra_args): every run's table times that target and batch, and a finished run made
    for another target or batch is not reused (they change what the budget selects)."""
    import epiprune.evidence.compare as compare_module
    from epiprune.cli import main

    given = []
    monkeypatch.setattr(compare_module, "compare", lambda cfg: given.append(cfg))
    assert main(["compare", "--budget", "latency:0.5", "--latency-target", "infer", "--latency-batch", "8",
                 "--out", str(tmp_path)]) == 0
    cfg = given[0]
    assert (cfg.latency_target, cfg.latency_batch) == ("infer", 8)
    for method in cfg.methods():
        settings = cfg.run_config(method, 0).latency_settings()
        assert (settings.target, settings.batch_size) == ("infer", 8)
    made = recorded(CompareConfig(epochs=6, epi_window=2))
    assert settings_mismatch(CompareConfig(epochs=6, epi_window=2, latency_target="infer"), "epi-taylor", 0,
                             made) == "latency_target='train', not 'infer'"
    assert settings_mismatch(CompareConfig(epochs=6, epi_window=2, latency_batch=8), "epi-taylor", 0,
                             made) == "latency_batch=None, not 8"
