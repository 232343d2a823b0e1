"""EarlyPruningPolicy on a tiny Llama-style language model, in a training loop of the user's own (AdamW, the step
clock): the dominant sub-network of heads and neurons is selected under a FLOPs budget, EPI fires, the model is cut
mid-training with the optimizer state carried, and training and generation go on."""

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from epiprune.costs.budget import Budget  # noqa: E402
from epiprune.policy.early_pruning import EarlyPruningPolicy  # noqa: E402
from epiprune.surgery import TransformerGraph  # noqa: E402

from .test_transformer_surgery import T, llama  # noqa: E402

STEPS_PER_EPOCH, EPOCHS = 8, 6


def policy_for(model, data, **kwargs):
    return EarlyPruningPolicy(model, data[:1], Budget("flops", 0.5), epi_every=4, steps_per_epoch=STEPS_PER_EPOCH,
                              window=2, threshold="auto", max_dense_epochs=4, log=lambda _msg: None, progress=False,
                              **kwargs)


def test_policy_prunes_a_language_model_in_a_foreign_adamw_loop_on_the_step_clock():
    model = llama(kv=2).train()
    data = torch.randint(0, 256, (64, T), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    policy = policy_for(model, data)
    assert isinstance(policy.graph, TransformerGraph)
    assert policy.group_names == ["model.layers.0.self_attn", "model.layers.0.mlp", "model.layers.1.self_attn",
                                  "model.layers.1.mlp"]
    losses, pruned_at = [], None
    for step in range(EPOCHS * STEPS_PER_EPOCH):
        x = data[step * 8 % 64:][:8]
        loss = model(x, labels=x).loss
        loss.backward()
        if policy.step(optimizer=optimizer):
            pruned_at = step
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert policy.trigger == "epi" and pruned_at is not None and pruned_at < 4 * STEPS_PER_EPOCH  # before the fallback
    flops, params = policy.count()
    assert flops <= 0.5 * policy.dense_flops and params < policy.dense_params
    assert policy.widths() != policy.dense_widths
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    for p in model.parameters():
        assert optimizer.state[p]["exp_avg"].shape == p.shape
    assert np.isfinite(losses).all() and np.mean(losses[-8:]) < np.mean(losses[:8])  # it still learns
    assert model.generate(data[:1], max_new_tokens=3, do_sample=False).shape == (1, T + 3)

    # resuming: a fresh dense model and policy given the saved state are cut to the same widths
    other = llama(kv=2)
    resumed = policy_for(other, data)
    resumed.load_state_dict(policy.state_dict())
    assert resumed.widths() == policy.widths()
    assert [p.shape for p in other.parameters()] == [p.shape for p in model.parameters()]


def test_magnitude_importance_scores_each_unit_by_the_norm_of_its_weights():
    model = llama(kv=2, bias=True)
    data = torch.randint(0, 256, (2, T))
    policy = EarlyPruningPolicy(model, data[:1], Budget("params", 0.7), importance="magnitude",
                                log=lambda _msg: None, progress=False)
    scores = policy.current_scores()
    attn = model.model.layers[0].self_attn
    d = 16
    unit = 1  # key/value head 1, query heads 2 and 3
    parts = [attn.q_proj.weight[2 * d:4 * d], attn.q_proj.bias[2 * d:4 * d], attn.k_proj.weight[d:2 * d],
             attn.k_proj.bias[d:2 * d], attn.v_proj.weight[d:2 * d], attn.v_proj.bias[d:2 * d],
             attn.o_proj.weight[:, 2 * d:4 * d]]
    by_hand = torch.sqrt(sum(p.detach().double().pow(2).sum() for p in parts))
    assert scores[0][unit] == pytest.approx(by_hand.item(), rel=1e-12)
    mlp = model.model.layers[0].mlp
    neuron = 5
    parts = [mlp.gate_proj.weight[neuron], mlp.gate_proj.bias[neuron], mlp.up_proj.weight[neuron],
             mlp.up_proj.bias[neuron], mlp.down_proj.weight[:, neuron]]
    by_hand = torch.sqrt(sum(p.detach().double().pow(2).sum() for p in parts))
    assert scores[1][neuron] == pytest.approx(by_hand.item(), rel=1e-12)
    masks = policy.dominant_subnetwork()  # the params budget's selection, one call
    assert sum(m.sum() for m in masks) < sum(policy.dense_widths)
