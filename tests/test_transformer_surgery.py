"""Heads and MLP neurons of Hugging Face transformers (issue 21's foundation): surgery equals masking, GQA groups
cut consistently, module attributes and config follow, generate and save_pretrained/from_pretrained round trips,
optimizer state carried, exact FLOPs/params cost models, Taylor per unit. Tiny models built from configs."""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from epiprune.costs.counting import counting_cost_models  # noqa: E402
from epiprune.io.pretrained import save_pretrained  # noqa: E402
from epiprune.policy.importance import TaylorAccumulator  # noqa: E402
from epiprune.surgery import TransformerGraph, make_graph  # noqa: E402

T = 8  # tokens


def llama(kv: int = 2, layers: int = 2, attn: str = "sdpa", bias: bool = False):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=48, num_attention_heads=4,
                                      num_key_value_heads=kv, num_hidden_layers=layers, vocab_size=256,
                                      attention_bias=bias, mlp_bias=bias, attn_implementation=attn)
    return transformers.LlamaForCausalLM(config).eval()


def vit(attn: str = "sdpa"):
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=64, intermediate_size=48, num_attention_heads=4, num_hidden_layers=2,
                                    image_size=28, patch_size=7, num_channels=1, num_labels=10,
                                    attn_implementation=attn)
    return transformers.ViTForImageClassification(config).eval()


def tokens(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (batch, T), generator=torch.Generator().manual_seed(1))


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))


CASES = {"llama-gqa": (lambda: llama(kv=2, bias=True), tokens), "llama-mha": (lambda: llama(kv=4), tokens),
         "vit": (vit, pixels)}


def uneven_keep(graph: TransformerGraph) -> list[np.ndarray]:
    """Per block a non-contiguous set of units, and blocks of one kind keep different numbers."""
    keep = []
    for i, g in enumerate(graph.groups):
        units = np.arange(g.size)
        if g.size > 2:
            keep.append(units[(units + i) % (3 + i // 2) != 0])
        else:
            keep.append(units[1:] if i // 2 % 2 == 0 else units)
    assert len({len(k) for k in keep[::2]}) > 1 and len({len(k) for k in keep[1::2]}) > 1
    return keep


@torch.no_grad()
def zero_dropped(graph: TransformerGraph, keep: list[np.ndarray]) -> None:
    """Zero every weight (and bias) of the units that `keep` drops: the dense model with those units masked."""
    for g, kept in zip(graph.groups, keep, strict=True):
        dropped = np.setdiff1d(np.arange(g.size), kept)
        for cut in g.cuts:
            idx = torch.as_tensor((dropped[:, None] * cut.per_unit + np.arange(cut.per_unit)).reshape(-1))
            cut.linear.weight.index_fill_(cut.dim, idx, 0.0)
            if cut.dim == 0 and cut.linear.bias is not None:
                cut.linear.bias.index_fill_(0, idx, 0.0)


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize("case", CASES)
def test_pruned_model_equals_dense_model_with_pruned_units_zeroed(case):
    build, data = CASES[case]
    model, masked = build(), build()
    x = data()
    graph = TransformerGraph(model, x[:1])
    keep = uneven_keep(graph)
    zero_dropped(TransformerGraph(masked, x[:1]), keep)
    dense_params = sum(p.numel() for p in model.parameters())
    graph.prune(keep)
    torch.testing.assert_close(logits(model, x), logits(masked, x), rtol=0, atol=1e-5)
    assert graph.widths() == [len(k) for k in keep]
    assert sum(p.numel() for p in model.parameters()) < dense_params
    for g in graph.groups:  # shapes shrink and the module's own counts follow
        if g.kind == "heads":
            q, k, o = g.block.q_proj, g.block.k_proj, g.block.o_proj
            assert q.weight.shape[0] == q.out_features == g.size * g.rep * g.head_dim == o.in_features
            assert k.weight.shape[0] == g.size * g.head_dim
            if hasattr(g.block, "num_attention_heads"):
                assert g.block.num_attention_heads == g.size * g.rep
            if hasattr(g.block, "num_key_value_groups"):
                assert g.block.num_key_value_groups == g.rep
        else:
            assert g.cuts[-1].linear.in_features == g.size == g.cuts[0].linear.weight.shape[0]


def test_grouped_query_attention_cuts_whole_key_value_groups():
    model = llama(kv=2)
    attn = model.model.layers[0].self_attn
    q, k, v, o = (getattr(attn, n).weight.detach().clone() for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    graph = TransformerGraph(model, tokens(1))
    assert graph.widths()[0] == 2 and graph.groups[0].rep == 2  # 4 query heads over 2 key/value heads
    graph.prune([np.array([1]), np.arange(48), np.arange(2), np.arange(48)])
    d = 16  # head_dim; unit 1 = key/value head 1 and query heads 2 and 3
    torch.testing.assert_close(attn.q_proj.weight, q[2 * d:4 * d], rtol=0, atol=0)
    torch.testing.assert_close(attn.k_proj.weight, k[d:2 * d], rtol=0, atol=0)
    torch.testing.assert_close(attn.v_proj.weight, v[d:2 * d], rtol=0, atol=0)
    torch.testing.assert_close(attn.o_proj.weight, o[:, 2 * d:4 * d], rtol=0, atol=0)
    assert attn.num_key_value_groups == 2 and attn.head_dim == d  # rotary and repeat_kv untouched
    assert model.config.head_dim == d


def test_generate_and_save_pretrained_round_trip_without_epiprune(tmp_path):
    model = llama(kv=2)
    x = tokens(1)
    graph = TransformerGraph(model, x)
    graph.prune(uneven_keep(graph))  # blocks of different widths
    out = model.generate(x, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, T + 4)
    widths = save_pretrained(model, tmp_path / "uneven")
    assert widths["model.layers.0.self_attn"] == {"heads": 2, "kv_heads": 1}
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "uneven").eval()  # the stock class
    torch.testing.assert_close(logits(loaded, tokens()), logits(model, tokens()), rtol=0, atol=1e-6)
    assert torch.equal(loaded.generate(x, max_new_tokens=4, do_sample=False), out)

    graph.prune([np.arange(1), np.arange(16), np.arange(1), np.arange(16)])  # every block the same width: no padding
    save_pretrained(model, tmp_path / "even")
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "even").eval()
    assert loaded.config.intermediate_size == 16 and loaded.config.num_key_value_heads == 1
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    assert torch.equal(logits(loaded, tokens()), logits(model, tokens()))


def test_vit_save_pretrained_round_trip(tmp_path):
    model = vit()
    graph = TransformerGraph(model, pixels(1))
    graph.prune([np.array([0, 3]), np.arange(0, 48, 2), np.array([0, 3]), np.arange(0, 48, 2)])
    save_pretrained(model, tmp_path)
    loaded = transformers.ViTForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.vit.layers[0].attention.num_attention_heads == 2
    assert torch.equal(logits(loaded, pixels()), logits(model, pixels()))


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_optimizer_state_of_surviving_rows_and_columns_is_carried(opt):
    model = llama(kv=2)
    make = {"adamw": lambda p: torch.optim.AdamW(p, lr=1e-3), "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)}
    optimizer = make[opt](model.parameters())
    x = tokens()
    for _ in range(2):
        model(x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    keys = ["exp_avg", "exp_avg_sq"] if opt == "adamw" else ["momentum_buffer"]
    before = {n: {k: optimizer.state[getattr(m, n).weight][k].clone() for k in keys}
              for m, n in ((attn, "q_proj"), (attn, "o_proj"), (mlp, "up_proj"), (mlp, "down_proj"))}
    graph = TransformerGraph(model, x[:1])
    keep_units, keep_neurons = np.array([1]), np.array([0, 5, 7, 40])
    graph.prune([keep_units, keep_neurons, np.arange(2), np.arange(48)], optimizer)
    rows = torch.arange(32, 64)  # key/value group 1: query heads 2 and 3 (head_dim 16)
    neurons = torch.as_tensor(keep_neurons)
    for k in keys:
        torch.testing.assert_close(optimizer.state[attn.q_proj.weight][k], before["q_proj"][k][rows], rtol=0, atol=0)
        torch.testing.assert_close(optimizer.state[attn.o_proj.weight][k], before["o_proj"][k][:, rows], rtol=0,
                                   atol=0)
        torch.testing.assert_close(optimizer.state[mlp.up_proj.weight][k], before["up_proj"][k][neurons], rtol=0,
                                   atol=0)
        torch.testing.assert_close(optimizer.state[mlp.down_proj.weight][k], before["down_proj"][k][:, neurons],
                                   rtol=0, atol=0)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    model(x, labels=x).loss.backward()
    optimizer.step()  # the optimizer steps the new tensors with their carried state


def test_an_adamw_step_after_surgery_equals_the_dense_step_with_the_units_masked():
    import copy

    model = llama(kv=2, bias=True).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x = tokens(4)
    for _ in range(2):
        model(x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    masked = copy.deepcopy(model)
    masked_optimizer = torch.optim.AdamW(masked.parameters(), lr=1e-2, weight_decay=0.1)
    masked_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # state_dict() shares the tensors
    graph = TransformerGraph(model, x[:1])
    keep = uneven_keep(graph)
    graph.prune(keep, optimizer)
    zero_dropped(TransformerGraph(masked, x[:1]), keep)
    for m, opt in ((model, optimizer), (masked, masked_optimizer)):
        m(x, labels=x).loss.backward()
        opt.step()
    TransformerGraph(masked, x[:1]).prune(keep)  # the masked model's surviving slices, to compare
    for (name, p), q in zip(model.named_parameters(), masked.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("case", ["llama-gqa", "vit"])
def test_flops_and_params_cost_models_equal_independent_counts(case):
    build, data = {"llama-gqa": (lambda: llama(kv=2, attn="eager", bias=True), tokens),
                   "vit": (lambda: vit(attn="eager"), pixels)}[case]
    model = build()
    x = data(1)
    graph = TransformerGraph(model, x)
    models = counting_cost_models(graph)
    keep = uneven_keep(graph)
    graph.prune(keep)
    widths = np.asarray([len(k) for k in keep])
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        model(x)  # eager attention: every product is a matmul that torch counts on its own
    assert models["flops"](widths) == counter.get_total_flops()
    assert models["params"](widths) == sum(p.numel() for p in model.parameters())
    assert graph.count() == (counter.get_total_flops(), sum(p.numel() for p in model.parameters()))


def test_dense_flops_follow_the_hand_formula():
    model = llama(kv=2, layers=1)  # sdpa: the CPU attention kernel counted too
    flops, _ = TransformerGraph(model, tokens(1)).count()
    h, d, heads, kv, n, vocab = 64, 16, 4, 2, 48, 256
    attention = 2 * T * h * (heads * d + 2 * kv * d) + 2 * T * heads * d * h + 2 * 2 * T * T * d * heads
    assert flops == attention + 3 * 2 * T * h * n + 2 * T * h * vocab


def test_taylor_per_unit_is_weight_times_gradient_of_the_output_columns():
    model = llama(kv=2)
    x = tokens()
    graph = make_graph(model, x[:1])
    assert isinstance(graph, TransformerGraph)
    taylor = TaylorAccumulator(graph)
    model(x, labels=x).loss.backward()
    taylor.step()
    scores = taylor.scores()
    o = model.model.layers[0].self_attn.o_proj.weight
    by_hand = (o * o.grad).sum(0).reshape(2, 32).sum(1).abs().double()
    np.testing.assert_allclose(scores[0], by_hand.detach().numpy(), rtol=1e-6)
    down = model.model.layers[0].mlp.down_proj.weight
    np.testing.assert_allclose(scores[1], (down * down.grad).sum(0).abs().double().detach().numpy(), rtol=1e-6)
    # the same as activation x gradient of each neuron's input to down_proj, summed over tokens
    acts = {}
    handle = model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda _m, args, _out: acts.setdefault("a", args[0]).retain_grad())
    model.zero_grad()
    model(x, labels=x).loss.backward()
    handle.remove()
    a = acts["a"]
    np.testing.assert_allclose(scores[1], (a * a.grad).sum((0, 1)).abs().double().detach().numpy(), rtol=1e-4,
                               atol=1e-9)


def test_make_graph_picks_heads_for_a_hugging_face_transformer_and_channels_for_a_cnn_with_fc1_fc2():
    from epiprune.surgery import PrunableGraph

    from .zoo import ConvNeXtNet, example_inputs

    assert isinstance(make_graph(vit(), pixels(1)), TransformerGraph)
    assert isinstance(make_graph(ConvNeXtNet(), example_inputs()), PrunableGraph)  # its block has fc1 and fc2


def test_bad_inputs_are_refused_in_one_line():
    from epiprune.surgery import SurgeryError

    model = llama(kv=2)
    for bad, match in ((tokens(2), r"not one sample \(accepted: a tensor \(1, T\)"),
                       ([1, 2], r"example_inputs list is not one sample")):
        with pytest.raises(SurgeryError, match=match) as err:
            TransformerGraph(model, bad)
        assert "\n" not in str(err.value)
    graph = TransformerGraph(model, tokens(1))
    for keep, match in (([np.arange(2)] * 3, r"^3 keep lists for 4 unit groups$"),
                        ([np.zeros(2, bool), np.arange(48), np.arange(2), np.arange(48)],
                         r"^cannot remove every unit of model.layers.0.self_attn \(keep at least one\)$"),
                        ([np.array([2]), np.arange(48), np.arange(2), np.arange(48)],
                         r"^keep index out of range for model.layers.0.self_attn \(0..1\)$")):
        with pytest.raises(SurgeryError, match=match):
            graph.prune(keep)
    assert graph.widths() == [2, 48, 2, 48]  # nothing was cut by a refused prune
    with pytest.raises(SurgeryError, match=r"has no attention block .* to prune$"):
        TransformerGraph(torch.nn.Sequential(torch.nn.Linear(4, 4)), torch.zeros(1, 4))
