import subprocess
import sys

import numpy as np
import pytest
import torch

import epiprune
from epiprune.cli import main
from epiprune.trainer import TrainConfig, train

NO_EPIPRUNE = "import sys; sys.modules['epiprune'] = None\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(model="mobilenetv2_small", train_subset=128, val_subset=64, epochs=2, prune_at=1,
                      batch_size=64, out=str(out), progress=False)
    train(cfg, log=lambda _: None)
    return out


def reference_output(run_dir, x):
    with torch.no_grad():
        return epiprune.load_pruned(run_dir)(x).numpy()


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
    x = torch.randn(3, 1, 28, 28)
    got = outputs_without_epiprune(f"torch.jit.load({str(target)!r})", x, tmp_path)
    np.testing.assert_allclose(got, reference_output(run_dir, x), atol=1e-5)


def test_torch_export_program_runs_without_epiprune(run_dir, tmp_path):
    target = tmp_path / "m.pt2"
    assert main(["export", str(run_dir), "--format", "export", "--out", str(target)]) == 0
    x = torch.randn(4, 1, 28, 28)  # another batch size than the example used for export
    got = outputs_without_epiprune(f"torch.export.load({str(target)!r}).module()", x, tmp_path)
    np.testing.assert_allclose(got, reference_output(run_dir, x), atol=1e-5)


def test_onnx_export_matches(run_dir, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    target = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(target)]) == 0
    x = torch.randn(5, 1, 28, 28)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(got, reference_output(run_dir, x), atol=1e-4)


def test_safetensors_export_rebuilds_with_load_pruned(run_dir, tmp_path):
    target = tmp_path / "m.safetensors"
    assert main(["export", str(run_dir), "--format", "safetensors", "--out", str(target)]) == 0
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(epiprune.load_pruned(target)(x).numpy(), reference_output(run_dir, x), atol=1e-6)


def test_export_of_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert "no saved model" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["export", "onnx"])
def test_export_prints_nothing_but_its_result(run_dir, tmp_path, fmt):
    """No warning about our temp file's name (export), no 'torchvision is not installed' lines (onnx). In a
    subprocess: torch's own log handler writes to the real stderr, which pytest's capture does not see."""
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
    proc = subprocess.run([sys.executable, "-m", "epiprune", "export", str(run_dir), "--format", fmt, "--out",
                           str(tmp_path / f"m.{fmt}")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout.startswith("wrote "), proc.stderr
