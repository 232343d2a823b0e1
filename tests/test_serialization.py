import numpy as np
import pytest
import torch

from epiprune.errors import EpipruneError
from epiprune.io.serialization import architecture_spec, load_pruned, save_pruned
from epiprune.models import build_model
from epiprune.surgery import PrunableGraph

from .helpers import random_keep


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2_small"])
def test_pruned_model_round_trip(tmp_path, name):
    model = build_model(name, 1, 10)
    graph = PrunableGraph(model, torch.zeros(1, 1, 28, 28))
    masks = random_keep(graph, 0.5, seed=3)
    graph.prune(masks)
    kept = {n: np.flatnonzero(m).tolist() for n, m in zip(graph.names, masks, strict=True)}
    save_pruned(model, architecture_spec(name, 1, 10, (28, 28), kept), tmp_path)
    loaded = load_pruned(tmp_path)
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_corrupt_weights_give_clear_error(tmp_path):
    model = build_model("resnet20", 1, 10)
    save_pruned(model, architecture_spec("resnet20", 1, 10, (28, 28), None), tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EpipruneError, match="corrupt"):
        load_pruned(tmp_path)


def test_missing_model_gives_clear_error(tmp_path):
    with pytest.raises(EpipruneError, match="no saved model"):
        load_pruned(tmp_path)
