"""Transformer surgery: attention heads and MLP neurons of Hugging Face style blocks, cut by our own in-block
surgery (no dependency graph), with the optimizer state of the surviving rows and columns carried.

DESIGN -- why not torch-pruning's dependency graph here (issue 21; measured 2026-11-30 by
benchmarks/transformer_graph.py, results/transformer_graph.json: 2-core machine under other jobs' load, one thread,
torch 2.13.0 CPU, torch-pruning 1.6.1, transformers 5.24.0; models from configs, hidden 64, intermediate 128,
4 heads, 1 layer; `DependencyGraph().build_dependency`, then `get_all_groups` over nn.Linear roots, head ignored):
  * ViTForImageClassification (28x28, patch 7): build 0.03-0.05 s, groups 0.01 s -- it works;
  * LlamaForCausalLM, 8 tokens, 4 key/value heads (plain multi-head) and 2 (grouped-query): build 0.03-0.05 s,
    then `get_all_groups` had not returned after 120 s in either case, in two runs (killed; issue 21 saw it spin in
    `_fix_dependency_graph_non_recursive` for 60 s; torch-pruning issues #527 and #519, open).
  * epiprune's TransformerGraph on the same three models: 0.01-0.04 s (one forward pass included).
A head's q/k/v rows and o columns, and an MLP neuron's gate/up rows and down column, live inside one block and
never touch the residual stream while the hidden width is kept, so the coupling a tracer would find is known in
advance: `find_blocks` reads it off the module structure (q_proj/k_proj/v_proj/o_proj with head_dim; gate_proj/
up_proj/down_proj or fc1/fc2), which costs nothing and cannot hang. Tested on Llama (multi-head and grouped-query)
and ViT of transformers 5.24; other models with these names (Mistral, Qwen2) share the layout but are not tested.
Torch-pruning stays for CNNs (surgery/graph.py).
The hidden (embedding) width, which does cross the residual stream, is not pruned here.

DESIGN -- other Hugging Face layouts (BERT, GPT-2, T5, ...) are refused, not supported (issue 21, item 3). A Hugging
Face model with an attention module that `find_blocks` does not cut gets one line naming that module
(`refuse_uncut_attention`); before, it fell through to torch-pruning's channel graph, which does not know heads.
BERT-style naming was weighed and left out: (1) no task of epiprune trains such a model -- `--data text` is causal
next-byte prediction, which a bidirectional encoder solves by looking at the next byte, and there is no sequence
classification data; (2) its units span sibling modules (attention.self.query/key/value with attention_head_size,
attention.output.dense; intermediate.dense with output.dense), and each encoder family (RoBERTa, ELECTRA, DeBERTa,
GPT-2's fused Conv1D c_attn, T5's q/k/v/o) names them differently: one layout each, with its own cost and
save_pretrained tests, for models nobody trains here. One refusal rule covers them all.

Units. A unit of an attention block is one key/value group: its k and v head, the `rep` query heads that read it
(rep = num_attention_heads / num_key_value_heads; 1 without grouped-query attention) and their o_proj columns.
Whole groups, not heads within groups: num_key_value_groups (= rep) stays what the module was built with, so
repeat_kv and every attention kernel work unchanged; the KV cache shrinks with the model; rotary embeddings are
untouched because head_dim is kept. (Heads within groups, every group keeping the same number, would fit the
selection's partitions like grouped convolutions, but never shrink k/v or the cache; not built.) A unit of an MLP is
one hidden neuron: a row of each input projection (gate and up, or fc1, with its bias) and a column of the output
projection (down, fc2).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from epiprune.surgery.cuts import ParameterCut, SurgeryError, _new_parameter, remap_optimizer_state

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLPS = (("gate_proj", "up_proj", "down_proj"), ("fc1", "fc2"))
HEAD_ATTRIBUTES = ("num_heads", "num_attention_heads")  # whichever a module has is set to its query heads
KV_ATTRIBUTES = ("num_key_value_heads", "num_kv_heads")


@dataclass
class Cut:
    """One linear layer's share of a unit: `per_unit` consecutive rows (dim 0, bias too) or columns (dim 1)."""

    parent: nn.Module
    attr: str
    dim: int
    per_unit: int

    @property
    def linear(self) -> nn.Linear:
        return getattr(self.parent, self.attr)


class ColumnTaylor:
    """First-order Taylor score per unit, read from the output projection's columns: a unit's contribution to the
    block output is z_u = W[:, cols(u)] a_u, linear in those columns, so sum over them of theta * dL/dtheta =
    sum over tokens of z_u . dL/dz_u, the loss change if the unit is removed (the channel rule of
    policy/importance.py, with the columns in place of a layer's output rows)."""

    def __init__(self, cut: Cut) -> None:
        self.cut = cut

    @property
    def weight(self) -> torch.Tensor:
        return self.cut.linear.weight

    def channel_taylor(self) -> torch.Tensor | None:
        weight = self.cut.linear.weight
        if weight.grad is None:
            return None
        prod = torch.linalg.vecdot(weight.detach().float().t(), weight.grad.detach().float().t())  # (in,)
        return prod.reshape(-1, self.cut.per_unit).sum(1)


@dataclass
class UnitGroup:
    """The units of one block (heads or neurons), kept or removed together with the rows and columns they own.
    Quacks like surgery.graph.ChannelGroup for the policy: name, root (the output projection), size, layers,
    blocks, partition, taylor_targets, bn_targets."""

    name: str
    kind: str  # "heads" (key/value groups) or "neurons"
    block: nn.Module
    size: int
    cuts: list[Cut]
    rep: int = 1  # query heads per unit (heads) or 1
    head_dim: int = 1  # (heads) or 1
    partition: None = None
    bn_targets: list = field(default_factory=list)
    layers: int = 1  # EPI counts a block's kept units like a conv's kept channels
    blocks: int = 1

    @property
    def root(self) -> nn.Linear:
        return self.cuts[-1].linear

    @property
    def taylor_targets(self) -> list[tuple[ColumnTaylor, list[int], list[int]]]:
        units = list(range(self.size))
        return [(ColumnTaylor(self.cuts[-1]), units, units)]


def _linears(module: nn.Module, names: Sequence[str]) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in names)


def find_blocks(model: nn.Module, ignored: Sequence[nn.Module] = ()) -> list[UnitGroup]:
    """Every attention block (q/k/v/o projections and an int head_dim) and MLP (gate/up/down or fc1/fc2) of `model`,
    in module order, as UnitGroups; blocks in `ignored` (or inside an ignored module) are left out."""
    skip = {id(m) for root in ignored for m in root.modules()}
    groups = []
    for name, module in model.named_modules():
        if id(module) in skip:
            continue
        if _linears(module, ATTENTION) and isinstance(getattr(module, "head_dim", None), int) \
                and not any(id(getattr(module, n)) in skip for n in ATTENTION):  # a cut layer ignored: the block
            d = module.head_dim
            q, k, v, o = (getattr(module, n) for n in ATTENTION)
            units, rep = k.out_features // d, q.out_features // k.out_features
            if k.out_features != units * d or v.out_features != k.out_features or q.out_features != units * rep * d \
                    or o.in_features != q.out_features:
                raise SurgeryError(f"attention {name!r} of {type(model).__name__}: q/k/v/o widths {q.out_features}/"
                                   f"{k.out_features}/{v.out_features}/{o.in_features} do not split into heads of "
                                   f"{d} (accepted: query heads a multiple of key/value heads; or pass "
                                   f"ignored_layers=[model.{name}])")
            cuts = [Cut(module, "q_proj", 0, rep * d), Cut(module, "k_proj", 0, d), Cut(module, "v_proj", 0, d),
                    Cut(module, "o_proj", 1, rep * d)]
            groups.append(UnitGroup(name, "heads", module, units, cuts, rep, d))
        for names in MLPS:
            if _linears(module, names) and not any(id(getattr(module, n)) in skip for n in names):
                layers = [getattr(module, n) for n in names]
                size = layers[-1].in_features
                if layers[-1].out_features != layers[0].in_features:
                    continue  # not a block on the residual stream (its output width differs from its input's)
                if any(x.out_features != size for x in layers[:-1]):
                    raise SurgeryError(f"MLP {name!r} of {type(model).__name__}: widths "
                                       f"{[x.out_features for x in layers[:-1]]} and {size} differ (or pass "
                                       f"ignored_layers=[model.{name}])")
                cuts = [Cut(module, n, 0, 1) for n in names[:-1]] + [Cut(module, names[-1], 1, 1)]
                groups.append(UnitGroup(name, "neurons", module, size, cuts))
                break
    return groups


def refuse_uncut_attention(model: nn.Module, groups: Sequence[UnitGroup], ignored: Sequence[nn.Module] = ()
                           ) -> None:
    """SurgeryError naming the first module of `model` whose class name says "Attention" (and that holds
    parameters) when no heads group of `groups` cuts it, lies inside it or inside one, and `ignored` does not cover
    all its parameters: pruning the rest would leave it dense without saying so (see the module note)."""
    covered = {id(m) for g in groups if g.kind == "heads" for m in g.block.modules()}
    skip = {id(m) for root in ignored for m in root.modules()}
    for name, module in model.named_modules():
        if "Attention" not in type(module).__name__ or id(module) in covered:
            continue
        inner = list(module.modules())
        owners = [m for m in inner if next(m.parameters(recurse=False), None) is not None]
        if not owners or all(id(m) in skip for m in owners) or any(id(m) in covered for m in inner):
            continue
        partly = any(g.kind == "heads" for g in groups)
        leave = f"; or leave it unpruned: ignored_layers=[model.{name}], --ignore-layers {name}" if partly else ""
        raise SurgeryError(f"cannot prune {name} ({type(module).__name__}) of {type(model).__name__}: epiprune "
                           "prunes the attention heads and MLP neurons of Llama/Mistral/Qwen2-style blocks "
                           "(q_proj/k_proj/v_proj/o_proj with head_dim; gate_proj/up_proj/down_proj) and of ViT "
                           "(q/k/v/o_proj; fc1/fc2) (accepted: such a model, e.g. LlamaForCausalLM, "
                           "MistralForCausalLM, Qwen2ForCausalLM or ViTForImageClassification built from a config"
                           f"{leave})")


def _unit_index(keep: np.ndarray, per_unit: int) -> torch.Tensor:
    return torch.as_tensor((keep[:, None] * per_unit + np.arange(per_unit)).reshape(-1), dtype=torch.long)


def cut_units(group: UnitGroup, keep: np.ndarray) -> list[ParameterCut]:
    """Keep units `keep` (sorted indices) of `group`: every cut layer loses the other units' rows or columns,
    its in/out_features and the block's head counts follow; returns the parameters replaced."""
    cuts = []
    for cut in group.cuts:
        linear, index = cut.linear, _unit_index(keep, cut.per_unit)
        params = [("weight", linear.weight)] + ([("bias", linear.bias)] if cut.dim == 0 and linear.bias is not None
                                                else [])
        for attr, old in params:
            new = _new_parameter(old, index, cut.dim)
            setattr(linear, attr, new)
            cuts.append(ParameterCut(old, new, index, cut.dim))
        if cut.dim == 0:
            linear.out_features = len(index)
        else:
            linear.in_features = len(index)
    group.size = len(keep)
    if group.kind == "heads":
        for attr in HEAD_ATTRIBUTES:
            if isinstance(getattr(group.block, attr, None), int):
                setattr(group.block, attr, group.size * group.rep)
        for attr in KV_ATTRIBUTES:
            if isinstance(getattr(group.block, attr, None), int):
                setattr(group.block, attr, group.size)
    elif isinstance(getattr(group.block, "intermediate_size", None), int):
        group.block.intermediate_size = group.size
    return cuts


def _cpu_sdpa_flops(query: tuple, key: tuple, value: tuple, *_args: object, out_shape: object = None,
                    **_kwargs: object) -> int:
    return sdpa_flop_count(query, key, value)


# torch 2.13's FlopCounterMode counts the flash attention kernels of CUDA but not the CPU one that
# F.scaled_dot_product_attention runs here: counted with the same formula (QK^T and AV, grouped-query included)
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def _call(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    out = model(inputs)
    return getattr(out, "logits", out)


def first_inputs(model: nn.Module, inputs: torch.Tensor, modules: Sequence[nn.Module]) -> dict[int, tuple[tuple, dict]]:
    """{index in `modules`: (args, kwargs) of that module's first call} in one eval-mode, no-grad forward pass of
    `model` on `inputs` (the model's mode restored, the hooks removed). A module never called has no entry."""
    seen: dict[int, tuple[tuple, dict]] = {}

    def hook(index: int):  # noqa: ANN202
        def record(_module: nn.Module, args: tuple, kwargs: dict) -> None:  # returning a value would replace them
            seen.setdefault(index, (args, kwargs))
        return record

    handles = [m.register_forward_pre_hook(hook(i), with_kwargs=True) for i, m in enumerate(modules)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            _call(model, inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


class TransformerGraph:
    """The prunable units of a transformer (heads and MLP neurons per block), with the interface the policy uses of
    surgery.graph.PrunableGraph: groups, names, widths(), partitions(), count(), self_check(), prune(keep, optimizer).

    example_inputs: one sample, (1, T) token ids or (1, C, H, W) pixels; FLOPs are per sample at that size and are
    counted as torch.utils.flop_counter counts them (2 x multiply-accumulates of matrix products, attention's
    score and value products included, over the full T x T even where a causal mask discards half; elementwise ops
    and bias adds are not counted)."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, ignored_layers: Sequence[nn.Module] = ()
                 ) -> None:
        if not torch.is_tensor(example_inputs) or example_inputs.shape[0] != 1:
            shape = tuple(example_inputs.shape) if torch.is_tensor(example_inputs) else type(example_inputs).__name__
            raise SurgeryError(f"example_inputs {shape} is not one sample (accepted: a tensor (1, T) of token ids or "
                               "(1, C, H, W) of pixels)")
        self.model, self.example_inputs, self.model_name = model, example_inputs, type(model).__name__
        self.ignored = list(ignored_layers)
        self.groups = find_blocks(model, ignored_layers)
        if not self.groups:
            raise SurgeryError(f"{self.model_name} has no attention block (q_proj/k_proj/v_proj/o_proj with head_dim) "
                               "or MLP (gate_proj/up_proj/down_proj or fc1/fc2) to prune")
        self.tokens = self._tokens()

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def widths(self) -> list[int]:
        return [g.size for g in self.groups]

    def partitions(self) -> list[None]:
        return [None] * len(self.groups)

    def _tokens(self) -> dict[str, int]:
        """Tokens each block sees per sample (its input's second-to-last dimension), from one forward pass."""
        seen = first_inputs(self.model, self.example_inputs, [g.cuts[0].linear for g in self.groups])
        return {g.name: int(seen[i][0][0].shape[-2]) for i, g in enumerate(self.groups) if i in seen}

    def count(self) -> tuple[int, int]:
        """(FLOPs per sample of example_inputs' size, by torch's FlopCounterMode; parameters, shared ones once)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
                _call(self.model, self.example_inputs)
        finally:
            self.model.train(was_training)
        return int(counter.get_total_flops()), sum(p.numel() for p in self.model.parameters())

    def magnitude_scores(self) -> list[np.ndarray]:
        """L2 norm of each unit's weights (rows and columns of every cut layer, biases included)."""
        result = []
        for g in self.groups:
            total = torch.zeros(g.size, dtype=torch.float64)
            for cut in g.cuts:
                tensors = [cut.linear.weight] + ([cut.linear.bias] if cut.dim == 0 and cut.linear.bias is not None
                                                 else [])
                for t in tensors:
                    sq = t.detach().double().pow(2)
                    sq = sq.sum(1) if cut.dim == 0 and sq.ndim == 2 else sq.sum(0) if cut.dim == 1 else sq
                    total += sq.reshape(g.size, cut.per_unit).sum(1).cpu()
            result.append(total.sqrt().numpy())
        return result

    def prune(self, keep: Sequence[Sequence[int] | np.ndarray], optimizer: torch.optim.Optimizer | None = None
              ) -> None:
        """Remove units. keep[g]: indices or a boolean mask of group g's units to keep (at least one). Gradients
        and the optimizer's per-parameter state (momentum, Adam moments) are cut with the weights."""
        if len(keep) != len(self.groups):
            raise SurgeryError(f"{len(keep)} keep lists for {len(self.groups)} unit groups")
        plans = []
        for g, kept in zip(self.groups, keep, strict=True):
            idx = np.flatnonzero(kept) if np.asarray(kept).dtype == bool else np.unique(np.asarray(kept, np.int64))
            if len(idx) == 0:
                raise SurgeryError(f"cannot remove every unit of {g.name} (keep at least one)")
            if idx.min() < 0 or idx.max() >= g.size:
                raise SurgeryError(f"keep index out of range for {g.name} (0..{g.size - 1})")
            plans.append((g, idx))
        cuts: list[ParameterCut] = []
        for g, idx in plans:
            if len(idx) < g.size:
                cuts += cut_units(g, idx)
        if optimizer is not None:
            remap_optimizer_state(optimizer, cuts)
        describe_config(self.model, self.groups)

    def self_check(self) -> None:
        """Prune a copy by one unit per group (where it has two) and run it; SurgeryError if that fails."""
        clone = copy.deepcopy(self.model)
        graph = TransformerGraph.__new__(TransformerGraph)
        graph.model, graph.groups = clone, find_blocks(clone, [])
        names = set(self.names)
        graph.groups = [g for g in graph.groups if g.name in names]
        graph.prune([np.arange(max(1, g.size - 1)) for g in graph.groups])
        try:
            with torch.no_grad():
                _call(clone.eval(), self.example_inputs)
        except Exception as e:  # any failure of the pruned copy: name the model, keep one line
            raise SurgeryError(f"{self.model_name} does not run after removing one unit per block: {e}") from None


def block_widths(groups: Sequence[UnitGroup]) -> dict[str, dict[str, int]]:
    """{block name: {'heads': query heads, 'kv_heads': key/value heads} or {'neurons': n}}."""
    return {g.name: ({"heads": g.size * g.rep, "kv_heads": g.size} if g.kind == "heads" else {"neurons": g.size})
            for g in groups}


def describe_config(model: nn.Module, groups: Sequence[UnitGroup]) -> None:
    """Make model.config describe the pruned shapes: head_dim written out (it no longer follows from hidden_size /
    num_attention_heads); num_attention_heads, num_key_value_heads and intermediate_size set to the widest block
    (exact when every block keeps the same width, which a per-layer selection rarely does: io.pretrained pads the
    narrower blocks for save_pretrained); the per-block widths in config.epiprune_widths."""
    config = getattr(model, "config", None)
    if config is None:
        return
    heads = [g for g in groups if g.kind == "heads"]
    neurons = [g for g in groups if g.kind == "neurons"]
    if heads:
        config.head_dim = heads[0].head_dim
        if hasattr(config, "num_key_value_heads"):
            config.num_key_value_heads = max(g.size for g in heads)
        config.num_attention_heads = max(g.size * g.rep for g in heads)
    if neurons:
        config.intermediate_size = max(g.size for g in neurons)
    config.epiprune_widths = block_widths(groups)
