"""Hypothesis-generated command lines for train, compare, export, report and predict (issue 14): every one exits
with 0 or 2 (bad input: one line `error: ...`), none raises, and no file of an existing run changes.

Small and fast: train always gets a tiny image folder, few images and few epochs first (the fuzzed options come
after and may override them, but only with values from small pools); compare is stopped after its validation.
Paths are placeholders ({run}: a finished run, {images}: the image folder, {fresh}: a new name, {file}: a plain
file), filled in per example. The @example lines pin inputs that once crashed or did damage.
"""

import hashlib
import itertools

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import epiprune.evidence.compare
from epiprune.cli import main

from .test_inputs import make_image_folder

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
INTS = st.sampled_from(["1", "2", "3", "0", "-1", "-3", "x", "", "1.5"])  # small: a valid run stays short
FLOATS = st.sampled_from(["0.05", "1e-4", "0", "-1", "nan", "inf", "1e9", "x", ""])
PATHS = st.sampled_from(["{run}", "{fresh}", "{file}", "{images}", "{file}/below", "", "{run}/summary.json"])
TRAIN = ["train", "--data", "imagefolder", "--data-dir", "{images}", "--image-size", "16", "--train-subset", "8",
         "--val-subset", "4", "--epochs", "3", "--epi-window", "1", "--batch-size", "8", "--init-batches", "1",
         "--no-progress", "--out", "{fresh}"]


def option_lists(pool, max_size=4):
    """Up to max_size (option, value) pairs from pool (value None: a switch), flattened into an argument list."""
    pair = st.sampled_from(sorted(pool)).flatmap(lambda k: pool[k].map(lambda v: [k] if v is None else [k, v]))
    return st.lists(pair, max_size=max_size).map(lambda ps: [token for p in ps for token in p])


TRAIN_OPTIONS = option_lists({
    "--model": st.sampled_from(["resnet20", "resnet99", ""]),
    "--data": st.sampled_from(["imagefolder", "builtin", "cifar10", "nope"]), "--data-dir": PATHS, "--out": PATHS,
    "--resume": PATHS, "--epochs": INTS, "--train-subset": INTS, "--val-subset": INTS, "--batch-size": INTS,
    "--epi-window": INTS, "--prune-at": INTS, "--min-dense-epochs": INTS, "--max-dense-epochs": INTS,
    "--image-size": st.sampled_from(["8", "16", "0", "-1", "x"]), "--lr": FLOATS, "--weight-decay": FLOATS,
    "--warmup-epochs": FLOATS, "--epi-threshold": FLOATS, "--dist-timeout": FLOATS,
    "--budget": st.sampled_from(["flops:0.5", "params:0.4", "flops:0", "flops:1.5", "watts:0.5", "x", ""]),
    "--importance": st.sampled_from(["taylor", "random", "psychic"]),
    "--indicator": st.sampled_from(["epi", "none", "earlybird", "x"]), "--channel-multiple": INTS,
    "--finetune-epochs": INTS, "--init-batches": INTS, "--seed": st.sampled_from(["0", "-1", "4294967296", "x"]),
    "--device": st.sampled_from(["cpu", "gpu"]), "--no-progress": st.none(), "--clip-grad-norm": FLOATS,
    "--latency-noise-limit": FLOATS, "--latency-batch": INTS,
    "--latency-target": st.sampled_from(["train", "infer", "x"])})
COMPARE_OPTIONS = option_lists({
    "--model": st.sampled_from(["resnet20", "x"]), "--data": st.sampled_from(["builtin", "cifar10", "x"]),
    "--data-dir": PATHS, "--out": PATHS, "--epochs": INTS, "--train-subset": INTS, "--val-subset": INTS,
    "--batch-size": INTS, "--epi-window": INTS, "--lr": FLOATS, "--warmup-epochs": FLOATS,
    "--budget": st.sampled_from(["flops:0.5", "flops:2", "x"]),
    "--grid": st.sampled_from(["1,2", "1-3", "3-1", "0", "x", "1,1", "-2", ""]),
    "--seeds": st.sampled_from(["0", "0,1", "5-1", "0,0", "x", ""]),
    "--methods": st.sampled_from(["dense", "dense,epi", "lottery", ""]), "--jobs": INTS, "--finetune-epochs": INTS,
    "--latency-noise-limit": FLOATS, "--latency-batch": INTS, "--latency-target": st.sampled_from(["infer", "x"]),
    "--force": st.none()})
EXPORT = st.tuples(st.just("export"), st.sampled_from(["{run}", "{run}", "{fresh}", "{file}", "{images}", ""]),
                   option_lists({"--format": st.sampled_from(["torchscript", "safetensors", "export", "pdf"]),
                                 "--out": st.sampled_from(["{fresh}.pt", "{fresh}/m.pt2", "{images}", "{file}/below",
                                                           "{run}/summary.json", ""])})).map(
    lambda t: [t[0], t[1], *t[2]])
REPORT = st.tuples(st.just("report"), PATHS).map(list)
PREDICT = st.tuples(st.just("predict"), st.sampled_from(["{run}", "{run}", "{fresh}", "{file}", "{images}", ""]),
                    st.lists(st.sampled_from(["{images}/cat/0.png", "{file}", "nope.png", ""]), min_size=1,
                             max_size=2), option_lists({"--top": INTS})).map(lambda t: [t[0], t[1], *t[2], *t[3]])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished tiny run, an image folder, a plain file; fresh names come from a counter."""
    root = tmp_path_factory.mktemp("fuzz")
    images = make_image_folder(root / "images")
    run = root / "run"
    assert main(["train", "--data", "imagefolder", "--data-dir", str(images), "--image-size", "16", "--epochs", "3",
                 "--epi-window", "1", "--batch-size", "8", "--no-progress", "--out", str(run)]) == 0
    (root / "a_file").write_text("not a folder")
    return {"root": root, "run": run, "images": images, "counter": itertools.count()}


def snapshot(folder):
    """Hashes of the files a run wrote: not its plots (report redraws epi.png on purpose) nor exports (export
    writes model_export.* next to them, again on purpose)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix != ".png" and not p.name.startswith("model_export.")}


def run_and_check(argv, world, capsys, monkeypatch):
    monkeypatch.chdir(world["root"])  # an empty --out or --data-dir must not reach the repository
    fresh = str(world["root"] / f"new{next(world['counter'])}")
    names = {"{run}": str(world["run"]), "{images}": str(world["images"]), "{file}": str(world["root"] / "a_file"),
             "{fresh}": fresh}
    for key, value in names.items():
        argv = [a.replace(key, value) for a in argv]
    before = snapshot(world["run"])
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    event(f"{argv[0]} exit {code}")  # pytest --hypothesis-show-statistics: how many examples got how far
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], (argv, err)
    assert "Traceback" not in err, (argv, err)
    assert snapshot(world["run"]) == before, argv


@given(options=TRAIN_OPTIONS)
@example(options=["--train-subset", "0"])  # ZeroDivisionError in the trainer
@example(options=["--out", "{run}", "--budget", "flops:0.3"])  # replaced a finished run
@example(options=["--resume", "{run}"])  # rewrote a finished run's outputs
@example(options=["--out", ""])  # wrote into the current folder
@SETTINGS
def test_train_command_lines(world, capsys, monkeypatch, options):
    run_and_check(TRAIN + options, world, capsys, monkeypatch)


@given(options=COMPARE_OPTIONS)
@example(options=["--jobs", "0"])  # ZeroDivisionError
@example(options=["--out", "{file}"])  # FileExistsError making the folder
@SETTINGS
def test_compare_command_lines(world, capsys, monkeypatch, options):
    monkeypatch.setattr(epiprune.evidence.compare, "compare", lambda cfg, log=print: cfg.validate())  # no training
    run_and_check(["compare", *options], world, capsys, monkeypatch)


@given(argv=st.one_of(EXPORT, REPORT, PREDICT))
@example(argv=["export", "{run}", "--out", "{images}"])  # IsADirectoryError
@example(argv=["export", "{run}", "--out", "{run}/summary.json"])  # replaced the run's summary
@example(argv=["export", "{run}", "--out", "{file}/below"])  # NotADirectoryError
@SETTINGS
def test_export_report_predict_command_lines(world, capsys, monkeypatch, argv):
    run_and_check(argv, world, capsys, monkeypatch)
