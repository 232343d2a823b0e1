"""Bring your own model (issue 11): `--model package.module:factory`, `--model-kwargs`, `--ignore-layers`, and
`load_pruned(folder, model=...)`, which never imports a module named in a saved file."""

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch

import epiprune
from epiprune.cli import main
from epiprune.errors import EpipruneError
from epiprune.models.user import factory_arguments
from epiprune.run.checkpoint import load_checkpoint
from epiprune.run.trainer import TrainConfig

from . import byo_factories
from .helpers import assert_one_line_error, call_main, run_cli

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "MODELS.md").read_text()
TINY = ["--train-subset", "32", "--val-subset", "16", "--batch-size", "16", "--epochs", "3", "--epi-window", "1",
        "--no-progress"]
FACTORY = "tests.byo_factories:tiny"


def section(title):
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:end if end != -1 else None]


def code_blocks(text, language):
    return [textwrap_dedent(b) for b in re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)]


def textwrap_dedent(block):
    import textwrap

    return textwrap.dedent(block)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 3-epoch run of tests.byo_factories:tiny (width 6) with conv1 never pruned."""
    out = tmp_path_factory.mktemp("byo") / "run"
    code = main(["train", "--model", FACTORY, "--model-kwargs", '{"width": 6}', "--ignore-layers", "conv1", *TINY,
                 "--out", str(out)])
    assert code == 0
    return out


# ---- the documented example, run as the documentation shows it ----------------------------------------------

def test_documented_example_trains_prunes_and_loads_without_pickle(tmp_path):
    """docs/MODELS.md's module is examples/my_models.py verbatim; its command (made tiny) trains and prunes it,
    and its load_pruned line rebuilds the pruned network from a dense one the caller builds."""
    text = section("Bring your own model")
    module = code_blocks(text, "python")[0]
    assert module == (REPO / "examples" / "my_models.py").read_text()
    (tmp_path / "my_models.py").write_text(module)
    command = next(b for b in code_blocks(text, "bash") if "epiprune train" in b)
    argv = shlex.split(command)
    assert argv[:2] == ["epiprune", "train"]
    tiny = ["--train-subset", "64", "--val-subset", "32", "--batch-size", "32", "--epochs", "3", "--epi-window",
            "1", "--no-progress"]
    proc = run_cli(*argv[1:], *tiny, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "runs" / "mine"
    spec = json.loads((out / "architecture.json").read_text())
    assert spec["model"] == "my_models:small_cnn" and spec["model_kwargs"] == {"width": 8}
    assert spec["ignore_layers"] == ["stem"] and spec["kept"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["model_kwargs"] == {"width": 8} and summary["prune_epoch"] == 2

    load = next(b for b in code_blocks(text, "python") if "load_pruned(\"runs/mine\"" in b)
    namespace: dict = {}
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(tmp_path)
            exec(compile(load, "docs/MODELS.md", "exec"), namespace)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_models", None)
    model = namespace["model"]
    assert sum(p.numel() for p in model.parameters()) == summary["final_params"] < summary["dense_params"]
    assert model.stem[0].out_channels == 8  # ignored: never pruned
    assert model.block2[0].out_channels < 16  # pruned
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert model(x).shape == (3, 10)


def test_documented_training_loop_runs(tmp_path, monkeypatch):
    """The "In your own training loop" snippet, on random data: it prunes, saves and loads back."""
    text = section("Bring your own model")
    snippet = next(b for b in code_blocks(text, "python") if "EarlyPruningPolicy(" in b)
    shutil.copy(REPO / "examples" / "my_models.py", tmp_path / "my_models.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    g = torch.Generator().manual_seed(0)
    loader = [(torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    namespace = {"loader": loader}
    try:
        exec(compile(snippet, "docs/MODELS.md", "exec"), namespace)
    finally:
        sys.modules.pop("my_models", None)
    policy, model, restored = namespace["policy"], namespace["model"], namespace["restored"]
    assert policy.pruned and model.stem[0].out_channels == 8
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x))


# ---- the factory call ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("factory,kwargs,expected", [
    (byo_factories.tiny, {"width": 2}, {"width": 2, "num_classes": 7, "in_channels": 1}),
    (byo_factories.tiny_any, {}, {"num_classes": 7, "in_channels": 1}),
    (byo_factories.tiny_fixed, {}, {}),
    (byo_factories.five_classes, {}, {"in_channels": 1}),
    (byo_factories.Tiny, {"num_classes": 3}, {"num_classes": 3, "in_channels": 1}),  # the user's value wins
])
def test_factory_gets_num_classes_and_in_channels_when_it_takes_them(factory, kwargs, expected):
    assert factory_arguments(factory, "x:y", kwargs, 1, 7) == expected


def test_run_records_the_factory_and_honours_ignored_layers(run):
    spec = json.loads((run / "architecture.json").read_text())
    assert spec["model"] == FACTORY and spec["model_kwargs"] == {"width": 6} and spec["ignore_layers"] == ["conv1"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == FACTORY and summary["config"]["ignore_layers"] == ["conv1"]
    model = epiprune.load_pruned(run, model=byo_factories.tiny(10, 1, width=6))
    assert model.conv1.out_channels == 6 and model.conv2.out_channels < 12
    assert sum(p.numel() for p in model.parameters()) == summary["final_params"]


def test_load_pruned_with_a_wrong_dense_model_is_one_clear_error(run):
    with pytest.raises(EpipruneError, match=r"size mismatch .* with model_kwargs \{\"width\": 6\} for 1-channel"):
        epiprune.load_pruned(run, model=byo_factories.tiny(10, 1, width=8))
    with pytest.raises(EpipruneError, match="is a dict, not a torch.nn.Module"):
        epiprune.load_pruned(run, model={"conv1": 1})


# ---- a saved file never makes epiprune import a module ----------------------------------------------------

@pytest.fixture
def planted(run, tmp_path, monkeypatch):
    """A copy of `run` whose files name the module `planted_mod`, which leaves a file behind if imported."""
    folder = tmp_path / "planted"
    shutil.copytree(run, folder)
    marker = tmp_path / "IMPORTED"
    (tmp_path / "planted_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                             "from tests.byo_factories import tiny as make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    spec = json.loads((folder / "architecture.json").read_text())
    (folder / "architecture.json").write_text(json.dumps({**spec, "model": "planted_mod:make"}))
    state = load_checkpoint(folder / "checkpoint.pt")
    state["extra"]["config"]["model"] = "planted_mod:make"
    torch.save(state, folder / "checkpoint.pt")
    yield folder, marker
    sys.modules.pop("planted_mod", None)


def test_loading_a_saved_user_model_never_imports_its_module(planted, capsys):
    folder, marker = planted
    with pytest.raises(EpipruneError, match=r"does not import .* load_pruned\(path, model="):
        epiprune.load_pruned(folder)
    result = call_main(["export", str(folder)], capsys)
    assert_one_line_error(result, "--model planted_mod:make")
    from PIL import Image

    Image.new("L", (28, 28)).save(folder.parent / "image.png")
    result = call_main(["predict", str(folder), str(folder.parent / "image.png")], capsys)
    assert_one_line_error(result, "does not import from a saved file")
    (folder / "summary.json").unlink()  # an unfinished run: resumable
    result = call_main(["train", "--resume", str(folder), "--no-progress"], capsys)
    assert_one_line_error(result, f"--resume {folder} --model planted_mod:make")
    assert not marker.exists() and "planted_mod" not in sys.modules


def test_export_and_resume_import_the_factory_the_user_names(planted, capsys):
    folder, marker = planted
    target = folder.parent / "exported.safetensors"
    assert main(["export", str(folder), "--model", "planted_mod:make", "--format", "safetensors", "--out",
                 str(target)]) == 0
    assert marker.exists()  # named on the command line: imported
    loaded = epiprune.load_pruned(target, model=byo_factories.tiny(10, 1, width=6))  # kwargs recorded in the run
    reference = epiprune.load_pruned(folder, model=byo_factories.tiny(10, 1, width=6))
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x))
    (folder / "summary.json").unlink()
    assert main(["train", "--resume", str(folder), "--model", "planted_mod:make", "--no-progress"]) == 0
    assert json.loads((folder / "summary.json").read_text())["model"] == "planted_mod:make"


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--model", "no_such_module_xyz:make"], "cannot import module 'no_such_module_xyz' of --model"),
    (["--model", "tests.byo_factories:missing"], "module 'tests.byo_factories' has no attribute 'missing'"),
    (["--model", "tests.byo_factories:NOT_CALLABLE"], "names an object of type int, which is not callable"),
    (["--model", "tests.byo_factories:"], "bad model import path 'tests.byo_factories:'"),
    (["--model", "tests.byo_factories:returns_dict"], "returned a dict, not a torch.nn.Module"),
    (["--model", FACTORY, "--model-kwargs", "{width: 3}"], "--model-kwargs '{width: 3}' is not JSON"),
    (["--model", FACTORY, "--model-kwargs", "[3]"], "is a JSON list, not an object"),
    (["--model", FACTORY, "--model-kwargs", '{"depth": 3}'], "does not accept --model-kwargs {\"depth\": 3}"),
    (["--model", "tests.byo_factories:raises"], "failed: ValueError: width 4 is not supported"),
    (["--model", "tests.byo_factories:five_classes"], "to shape (2, 5), not (2, 10)"),
    (["--model", "tests.byo_factories:tiny_fixed"], "fails on a batch of shape (2, 1, 28, 28)"),
    (["--model", "tests.byo_factories:tuple_out"], "returns a tuple for a batch of shape (2, 1, 28, 28)"),
    (["--model", FACTORY, "--ignore-layers", "conv1,conv9"], "--ignore-layers names 'conv9', which is no layer"),
    (["--ignore-layers", "classifier,"], "--ignore-layers 'classifier,' has an empty name"),
    (["--ignore-layers", "layers.99"], "--ignore-layers names 'layers.99'"),
    (["--model-kwargs", '{"width": 3}'], "--model-kwargs is given but resnet20 is a registry model"),
])
def test_bad_user_model_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, needle):
    out = tmp_path / "new" / "run"
    result = call_main(["train", *args, *TINY, "--out", str(out)], capsys)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "new").exists()


def test_bad_user_model_in_an_existing_folder_leaves_it_as_it_was(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = call_main(["train", "--model", "tests.byo_factories:five_classes", *TINY, "--out", str(out)], capsys)
    assert_one_line_error(result, "not (2, 10)")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("args,needle", [
    (["--model", "no_such_module_xyz:make"], "cannot import module 'no_such_module_xyz'"),
    (["--model", "tests.byo_factories:five_classes"], "to shape (2, 5), not (2, 10)"),
    (["--model", FACTORY, "--ignore-layers", "conv9"], "--ignore-layers names 'conv9'"),
    (["--model", FACTORY, "--model-kwargs", "3"], "is a JSON int, not an object"),
])
def test_bad_user_model_for_compare_is_refused_before_any_run(tmp_path, capsys, args, needle):
    out = tmp_path / "cmp"
    result = call_main(["compare", *args, "--epochs", "3", "--epi-window", "1", "--out", str(out)], capsys)
    assert_one_line_error(result, needle)
    assert not out.exists()


@pytest.mark.parametrize("kwargs,needle", [({"width": torch.nn.ReLU}, "is not JSON data"),
                                            ({"width": float("nan")}, "is not JSON data"),
                                            ([("width", 3)], "is not a dict")])
def test_model_kwargs_of_the_api_must_be_json_data(kwargs, needle):
    """They are written into the run's files and its checkpoint (read back with weights_only=True)."""
    with pytest.raises(EpipruneError, match=needle):
        TrainConfig(model=FACTORY, model_kwargs=kwargs).validate()


def test_export_model_kwargs_without_model_is_refused(run, capsys):
    result = call_main(["export", str(run), "--model-kwargs", '{"width": 6}'], capsys)
    assert_one_line_error(result, "--model-kwargs is given without --model")


def test_compare_passes_the_factory_kwargs_and_ignored_layers_to_every_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # where its runs (subprocesses) find the module tests.byo_factories
    out = tmp_path / "cmp"
    code = main(["compare", "--model", FACTORY, "--model-kwargs", '{"width": 6}', "--ignore-layers", "conv1",
                 "--methods", "dense,fixed", "--grid", "1", "--epochs", "3", "--epi-window", "1",
                 "--train-subset", "32", "--val-subset", "16", "--batch-size", "16", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    for method in ("dense", "fixed-1"):
        folder = out / "runs" / method / "seed0"
        config = json.loads((folder / "summary.json").read_text())["config"]
        assert (config["model"], config["model_kwargs"], config["ignore_layers"]) == (FACTORY, {"width": 6},
                                                                                        ["conv1"])
    pruned = epiprune.load_pruned(out / "runs" / "fixed-1" / "seed0", model=byo_factories.tiny(10, 1, width=6))
    assert pruned.conv1.out_channels == 6 and pruned.conv2.out_channels < 12
    # an unfinished run is resumed: the factory is named again on the run's command line
    (out / "runs" / "dense" / "seed0" / "summary.json").unlink()
    assert main(["compare", "--model", FACTORY, "--model-kwargs", '{"width": 6}', "--ignore-layers", "conv1",
                 "--methods", "dense", "--epochs", "3", "--epi-window", "1", "--train-subset", "32",
                 "--val-subset", "16", "--batch-size", "16", "--out", str(out)]) == 0, capsys.readouterr().err
    assert "resume dense seed 0" in capsys.readouterr().out
    assert (out / "runs" / "dense" / "seed0" / "summary.json").is_file()
    # the finished runs are reused only with the same kwargs
    result = call_main(["compare", "--model", FACTORY, "--model-kwargs", '{"width": 5}', "--ignore-layers", "conv1",
                        "--methods", "dense", "--epochs", "3", "--epi-window", "1", "--train-subset", "32",
                        "--val-subset", "16", "--batch-size", "16", "--out", out], capsys)
    assert_one_line_error(result, "model_kwargs={'width': 6}, not {'width': 5}")


def test_predict_of_a_run_of_your_own_network_takes_its_factory(run, tmp_path, capsys):
    """Issue 23: predict took no --model, so such a run had to be exported to ONNX first."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("L", (28, 28), color=40 * i).save(images / f"{i}.png")
    assert_one_line_error(call_main(["predict", run, images], capsys), "does not import from a saved file",
                          f"`epiprune predict` with --model {FACTORY}")
    assert main(["predict", str(run), str(images), "--model", FACTORY, "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(images / f"{i}.png") for i in range(3)]
    assert main(["predict", str(run / "model.safetensors"), str(images), "--model", FACTORY, "--top", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == lines
    exported = tmp_path / "m.pt"
    assert main(["export", str(run), "--model", FACTORY, "--out", str(exported)]) == 0
    capsys.readouterr()
    assert_one_line_error(call_main(["predict", exported, images, "--model", FACTORY], capsys),
                          "--model is for a run of your own network")
