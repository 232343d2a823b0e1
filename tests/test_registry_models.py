"""The registry's ResNeXt and ConvNeXt (issue 11): their blocks as published, 1- or 3-channel input, and a tiny
`epiprune train` run each (pruning ResNeXt's grouped convolutions needs branch issue11-core)."""

import json

import pytest
import torch
from torch import nn

import epiprune
from epiprune.cli import main
from epiprune.models import MODELS, build_model
from epiprune.models.convnext import ConvNeXtBlock, LayerNorm2d, LayerScale
from epiprune.models.resnext import Bottleneck

NEW = ["resnext20_4x8d", "convnext_mini"]
TINY = ["--train-subset", "32", "--val-subset", "16", "--batch-size", "16", "--epochs", "3", "--epi-window", "1",
        "--no-progress"]


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_new_models_map_images_to_logits(name, in_channels, size):
    assert name in MODELS
    model = build_model(name, in_channels, 7)
    out = model(torch.rand(2, in_channels, size, size))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resnext_has_grouped_bottlenecks():
    model = build_model("resnext20_4x8d", 1, 10)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 6  # 3 stages x 2 blocks: 9 * 2 + 2 = 20 layers
    assert [(b.conv2.groups, b.conv2.in_channels, b.conv3.out_channels) for b in blocks[::2]] == \
        [(4, 32, 64), (4, 64, 128), (4, 128, 256)]
    assert [b.conv2.stride for b in blocks] == [(1, 1), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]


def test_convnext_blocks_are_depthwise_7x7_layernorm_mlp_with_layer_scale():
    model = build_model("convnext_mini", 3, 10)
    blocks = [m for m in model.modules() if isinstance(m, ConvNeXtBlock)]
    assert len(blocks) == 6
    for b in blocks:
        dim = b.dwconv.in_channels
        assert b.dwconv.kernel_size == (7, 7) and b.dwconv.groups == dim == b.dwconv.out_channels
        assert isinstance(b.norm, nn.LayerNorm) and b.norm.normalized_shape == (dim,)
        assert (b.pwconv1.in_features, b.pwconv1.out_features, b.pwconv2.out_features) == (dim, 4 * dim, dim)
        assert isinstance(b.act, nn.GELU) and isinstance(b.scale, LayerScale)
        torch.testing.assert_close(b.scale.gamma.detach(), torch.full((dim,), 1e-6))
    # channels-first LayerNorm normalises each pixel's channel vector
    norm = LayerNorm2d(4, elementwise_affine=False)
    y = norm(torch.randn(2, 4, 3, 3))
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 3, 3), atol=1e-5, rtol=0)
    # a block starts as (almost) the identity: layer scale 1e-6
    x = torch.randn(1, 32, 8, 8)
    torch.testing.assert_close(blocks[0](x), x, atol=1e-4, rtol=0)


def run_and_load(name, tmp_path, *extra):
    out = tmp_path / name
    assert main(["train", "--model", name, *TINY, *extra, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prune_epoch"] is not None and summary["final_flops"] < summary["dense_flops"]
    model = epiprune.load_pruned(out)
    assert sum(p.numel() for p in model.parameters()) == summary["final_params"]
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_convnext_trains_prunes_and_loads_through_the_cli(tmp_path):
    run_and_load("convnext_mini", tmp_path)


def test_resnext_trains_prunes_and_loads_through_the_cli(tmp_path):
    run_and_load("resnext20_4x8d", tmp_path)


def test_resnext_trains_with_its_grouped_convs_kept_whole(tmp_path):
    """What main can do today: --ignore-layers keeps every bottleneck's conv1 (which feeds the grouped conv) and
    grouped conv2 whole; the residual stream (stem, conv3, shortcuts) is pruned."""
    ignored = ",".join(f"layers.{i}.conv{j}" for i in range(6) for j in (1, 2))
    run_and_load("resnext20_4x8d", tmp_path, "--ignore-layers", ignored)
    model = epiprune.load_pruned(tmp_path / "resnext20_4x8d")
    assert [b.conv2.out_channels for b in model.layers] == [32, 32, 64, 64, 128, 128]
    assert model.layers[0].conv3.out_channels < 64
