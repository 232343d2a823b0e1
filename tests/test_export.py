import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

import epiprune
from epiprune.cli import main
from epiprune.io.export import LOAD_SUFFIX, SUFFIX
from epiprune.run.trainer import TrainConfig, train

from .helpers import assert_one_line_error, call_main, run_cli

NO_EPIPRUNE = "import sys; sys.modules['epiprune'] = None\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    # resnet20: after 4 steps mobilenetv2_small's output hardly depends on its input (differences ~1e-4), which
    # let an export without the input standardisation pass these comparisons
    cfg = TrainConfig(model="resnet20", train_subset=128, val_subset=64, epochs=2, prune_at=1,
                      batch_size=64, out=str(out), progress=False)
    train(cfg, log=lambda _: None)
    model, x = epiprune.load_pruned(out, raw_inputs=False), torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert (model(x) - model(2 * x)).abs().max() > 1e-2, "the comparisons below need an input-dependent model"
    return out


def reference_output(run_dir, x):
    """What the trained network gives for raw [0, 1] images x: standardised with the stored mean and std first."""
    prep = epiprune.load_preprocessing(run_dir)
    mean, std = torch.tensor(prep.mean).view(1, -1, 1, 1), torch.tensor(prep.std).view(1, -1, 1, 1)
    with torch.no_grad():
        return epiprune.load_pruned(run_dir, raw_inputs=False)((x - mean) / std).numpy()


def outputs_without_epiprune(load_expression: str, x: torch.Tensor, tmp_path) -> np.ndarray:
    """Run `model = <load_expression>; model(x)` in a fresh interpreter in which epiprune cannot be imported."""
    torch.save(x, tmp_path / "x.pt")
    script = NO_EPIPRUNE + (f"import torch\nm = {load_expression}\nx = torch.load({str(tmp_path / 'x.pt')!r})\n"
                            f"torch.save(m(x).detach(), {str(tmp_path / 'y.pt')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    return torch.load(tmp_path / "y.pt").numpy()


def test_torchscript_export_runs_without_epiprune(run_dir, tmp_path):
    target = tmp_path / "m.pt"
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(target)]) == 0
    x = torch.rand(3, 1, 28, 28)
    got = outputs_without_epiprune(f"torch.jit.load({str(target)!r})", x, tmp_path)
    np.testing.assert_allclose(got, reference_output(run_dir, x), atol=1e-5)


def test_torch_export_program_runs_without_epiprune(run_dir, tmp_path):
    target = tmp_path / "m.pt2"
    assert main(["export", str(run_dir), "--format", "export", "--out", str(target)]) == 0
    x = torch.rand(4, 1, 28, 28)  # another batch size than the example used for export
    got = outputs_without_epiprune(f"torch.export.load({str(target)!r}).module()", x, tmp_path)
    np.testing.assert_allclose(got, reference_output(run_dir, x), atol=1e-5)


def test_onnx_export_matches(run_dir, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    target = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(target)]) == 0
    x = torch.rand(5, 1, 28, 28)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(got, reference_output(run_dir, x), atol=1e-4)


def test_safetensors_export_rebuilds_with_load_pruned(run_dir, tmp_path):
    target = tmp_path / "m.safetensors"
    assert main(["export", str(run_dir), "--format", "safetensors", "--out", str(target)]) == 0
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(epiprune.load_pruned(target, raw_inputs=True)(x).numpy(),
                                   reference_output(run_dir, x), atol=1e-5)


def test_export_of_missing_run_is_a_clear_error(tmp_path, capsys):
    assert_one_line_error(call_main(["export", tmp_path / "nope"], capsys), "no saved model")


@pytest.mark.parametrize("fmt", ["export", "onnx"])
def test_export_prints_nothing_but_its_result(run_dir, tmp_path, fmt):
    """No warning about our temp file's name (export), no 'torchvision is not installed' lines (onnx). In a
    subprocess: torch's own log handler writes to the real stderr, which pytest's capture does not see."""
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
    proc = run_cli("export", run_dir, "--format", fmt, "--out", tmp_path / f"m{SUFFIX[fmt]}", timeout=300)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout.startswith("wrote "), proc.stderr


def test_run_stores_the_training_preprocessing_and_class_names(run_dir):
    """The mean and std training standardised with (of the training subset, pixels in [0, 1]), and the names."""
    from epiprune.run.data import load_builtin

    data = load_builtin().subset(128, 64, seed=0)
    pixels = data.train_images.astype(np.float64) / 255
    prep = epiprune.load_preprocessing(run_dir)
    np.testing.assert_allclose(prep.mean, [pixels.mean()], rtol=1e-5)
    np.testing.assert_allclose(prep.std, [pixels.std(ddof=1)], rtol=1e-4)
    assert prep.in_channels == 1 and prep.input_size == [28, 28]
    assert prep.class_names[:2] == ["T-shirt/top", "Trouser"] and len(prep.class_names) == 10


def test_predict_prints_the_same_top_classes_from_the_run_and_every_export(run_dir, tmp_path, capsys):
    from PIL import Image

    from epiprune.run.data import load_builtin

    images = []
    for i, pixels in enumerate(load_builtin().val_images[:2]):
        images.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(pixels[..., 0]).save(images[-1])
    x = torch.cat([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255)[None, None] for p in images])
    expected = torch.softmax(torch.from_numpy(reference_output(run_dir, x)), 1).topk(2, 1)
    assert main(["predict", str(run_dir), *images, "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = epiprune.load_preprocessing(run_dir).class_names
    for image, line, probs, idx in zip(images, lines, expected.values, expected.indices, strict=True):
        assert line.startswith(f"{image}: {names[int(idx[0])]} ")
        assert f"{100 * float(probs[0]):.1f}%" in line
    fmts = ["torchscript", "export", "safetensors"] + (["onnx"] if importlib.util.find_spec("onnxruntime") and
                                                       importlib.util.find_spec("onnxscript") else [])
    for fmt in fmts:
        target = tmp_path / f"m{SUFFIX[fmt]}"
        assert main(["export", str(run_dir), "--format", fmt, "--out", str(target)]) == 0
        capsys.readouterr()
        assert main(["predict", str(target), *images, "--top", "2"]) == 0
        assert capsys.readouterr().out.splitlines() == lines, fmt


@pytest.mark.parametrize("make,needle", [
    (lambda d: d / "missing.png", "image not found"),
    (lambda d: (d / "bad.png").write_text("not an image") and d / "bad.png", "unreadable image"),
])
def test_predict_bad_image_is_a_one_line_error(run_dir, tmp_path, capsys, make, needle):
    assert_one_line_error(call_main(["predict", run_dir, make(tmp_path)], capsys), needle)


def test_predict_bad_model_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "m.pt2").write_bytes(b"junk")
    (tmp_path / "x.png").write_bytes(b"")
    for model, needle in ((tmp_path / "m.pt2", "cannot read"), (tmp_path / "nope", "model not found"),
                          (tmp_path / "x.png", "unknown model file")):
        assert_one_line_error(call_main(["predict", model, tmp_path / "x.png"], capsys), needle)


def test_export_refuses_to_replace_an_existing_file_unless_force(run_dir, tmp_path, capsys):
    """Issue 23: `export --out` onto an existing file (a PNG) replaced it; now one line, exit 2, file untouched."""
    target = tmp_path / "picture.pt"
    target.write_bytes(b"a png, say")
    result = call_main(["export", run_dir, "--format", "torchscript", "--out", target], capsys)
    assert_one_line_error(result, f"--out {target} exists", "--force")
    assert target.read_bytes() == b"a png, say"
    default = run_dir / f"model_export{SUFFIX['export']}"  # the default target is no exception
    default.write_bytes(b"an older export")
    try:
        assert_one_line_error(call_main(["export", run_dir, "--format", "export"], capsys), "exists", "--force")
        assert default.read_bytes() == b"an older export"
    finally:
        default.unlink()
    assert call_main(["export", run_dir, "--format", "torchscript", "--out", target, "--force"], capsys).returncode == 0
    assert target.read_bytes() != b"a png, say"


@pytest.mark.parametrize("fmt,name", [("onnx", "model.png"), ("torchscript", "model.onnx"), ("export", "model.pt"),
                                      ("safetensors", "model"), ("torchscript", "model.pt2")])
def test_export_refuses_a_suffix_that_is_not_its_formats(run_dir, tmp_path, capsys, fmt, name):
    result = call_main(["export", run_dir, "--format", fmt, "--out", tmp_path / name, "--force"], capsys)
    assert_one_line_error(result, f"does not end in {LOAD_SUFFIX[fmt]}", f"--format {fmt}")
    assert not (tmp_path / name).exists()


def test_predict_takes_a_runs_model_safetensors_and_a_folder_of_images(run_dir, tmp_path, capsys):
    """Issue 23: predict refused a run's model.safetensors and took no folder of images."""
    from PIL import Image

    from epiprune.run.data import load_builtin

    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    for i, pixels in enumerate(load_builtin().val_images[:3]):
        Image.fromarray(pixels[..., 0]).save(folder / ("more" if i == 2 else ".") / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    files = [folder / "img0.png", folder / "img1.png", folder / "more" / "img2.png"]
    assert main(["predict", str(run_dir), *map(str, files)]) == 0
    expected = capsys.readouterr().out.splitlines()
    assert main(["predict", str(run_dir / "model.safetensors"), str(folder)]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    (tmp_path / "empty").mkdir()
    assert_one_line_error(call_main(["predict", run_dir, tmp_path / "empty"], capsys), "no image files in")


def test_predict_of_a_checkpoint_says_what_it_is_and_what_to_pass(run_dir, tmp_path, capsys):
    """Issue 23: `predict runs/x/checkpoint.pt` said the file was corrupted."""
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "x.png")
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, run / "checkpoint.pt")
    assert_one_line_error(call_main(["predict", run / "checkpoint.pt", tmp_path / "x.png"], capsys),
                          "is the training checkpoint of a run", f"the run folder {run}", "model.safetensors")
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    result = call_main(["predict", tmp_path / "weights.pt", tmp_path / "x.png"], capsys)
    assert_one_line_error(result, "is a torch.save file (pickled tensors), not a TorchScript archive")
    assert "corrupt" not in result.stderr


def test_load_pruned_takes_raw_images_by_default(run_dir):
    """Issue 23: load_pruned returned the bare network, which fed raw [0, 1] images silently scored 31% instead
    of 94%. Now the default is the network behind the run's standardisation: raw images give exactly the
    predictions the bare network gives on standardised ones."""
    from epiprune.run.data import load_builtin

    data = load_builtin()
    raw = torch.from_numpy(data.val_images[:256].astype(np.float32) / 255).permute(0, 3, 1, 2)
    model = epiprune.load_pruned(run_dir)
    assert isinstance(model, epiprune.RawInputModel) and not model.training
    with torch.no_grad():
        np.testing.assert_allclose(model(raw).numpy(), reference_output(run_dir, raw), atol=1e-5)
    bare = epiprune.load_pruned(run_dir, raw_inputs=False)
    assert not isinstance(bare, epiprune.RawInputModel) and type(model.network) is type(bare)
    assert model.layers is model.network.layers  # the network's attributes, as before
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in bare.parameters())


def test_preprocessing_record_is_dict_like_and_images_become_tensors_publicly(run_dir, tmp_path):
    from PIL import Image

    prep = epiprune.load_preprocessing(run_dir)
    assert isinstance(prep, epiprune.Preprocessing) and prep == epiprune.load_pruned(run_dir).preprocessing
    assert prep["mean"] == prep.mean and dict(prep) == prep.to_dict() and "class_names" in prep
    assert list(prep) == ["mean", "std", "in_channels", "input_size", "class_names"] and len(prep) == 5
    with pytest.raises(KeyError):
        prep["nope"]
    pixels = (np.arange(40 * 30) % 256).astype(np.uint8).reshape(30, 40)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    x = epiprune.image_to_tensor(tmp_path / "x.png", prep)
    assert x.shape == (1, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1
    expected = np.asarray(Image.fromarray(pixels).resize((28, 28), Image.BILINEAR), dtype=np.float32) / 255
    np.testing.assert_allclose(x[0, 0].numpy(), expected)
    torch.testing.assert_close(epiprune.image_to_tensor(Image.open(tmp_path / "x.png"), prep), x)
