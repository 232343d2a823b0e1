"""Latency tables: which layers of a model are timed (TimedLayer, timed_layers), on which channel grids, timing one
layer at one grid point, and the table as a keyed JSON artefact (LatencyTable, table_key, default_table_path).

A table's key records the device, torch version, threads, dtype, memory format, batch size, input size, target and
the model's layer layout (architecture_digest); costs.latency_build reuses a file whose key matches. Layer
signatures, keys and the file format are what stored tables are matched by: they must not change.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from epiprune.costs.layer_kinds import LAYER_KINDS, Build, kind_of
from epiprune.costs.timing import LatencySettings, device_name, median_ms
from epiprune.costs.transformer import unit_params
from epiprune.costs.unit_kinds import block_calls
from epiprune.errors import EpipruneError
from epiprune.files import atomic_write_text
from epiprune.numerics import autocast, in_memory_format
from epiprune.surgery import PrunableGraph, TransformerGraph

FORMAT = "epiprune-latency-table/1"
NARROW = 16  # axes up to this many channels are timed at every count
# CPU (oneDNN) and GPU kernels pad channels to blocks of 8 or 16, so a layer's time is a staircase in its channel
# count. On an axis whose grid points are at most BLOCK apart (and wide ones sit on multiples of BLOCK), a width
# costs what the next grid point at or above it costs: exact on the staircase, where linear interpolation between
# block edges under-predicted odd widths by 5-20% on this CPU. Wider gaps are interpolated linearly.
BLOCK = 8


class LatencyTableError(EpipruneError):
    """A latency table file that cannot be used (corrupt, foreign, measured elsewhere)."""


@dataclass
class TimedLayer:
    """One layer whose time the table holds, and how the groups' widths set its channel counts.

    kind: a registered layer kind's name (costs.layer_kinds: 'conv', 'dwconv', 'linear', 'bn'). in_group /
    out_group: the channel group that sets the input / output channels, -1 for a fixed dimension. dense_in /
    dense_out: the layer's channels in the dense model; in_size / out_size: the dense widths of those groups (a
    flatten can make dense_in a multiple of in_size)."""

    name: str
    kind: str
    signature: str
    in_group: int
    out_group: int
    dense_in: int
    dense_out: int
    in_size: int
    out_size: int
    build: Build = field(repr=False)
    input_shape: tuple[int, ...] = ()  # one sample's input (C, H, W) or (C,), dense
    input_grad: bool = True  # training needs the input's gradient (not for the layer fed by the data)

    @property
    def single_axis(self) -> bool:
        """Whether the layer's table has one axis (its output channels, = its input channels); see LayerKind."""
        return LAYER_KINDS.get(self.kind).single_axis


def grid(dense: int, points: int) -> list[int]:
    """Channel counts at which a layer with `dense` channels on an axis is timed: every count for narrow axes (up
    to NARROW channels, or `points`); else 1, 2, 4 and multiples of a step that is itself a multiple of BLOCK,
    about `points` of them, and `dense`."""
    if dense <= max(points, NARROW):
        return list(range(1, dense + 1))
    step = BLOCK * -(-dense // (BLOCK * points))
    return sorted({1, 2, 4, *range(step, dense, step), dense})


def _trace(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, tuple[tuple[int, ...], bool, int]]:
    """{module of a registered kind: (one sample's input shape, whether the input needs a gradient, elements of
    one sample's output)}, in the order of one training-mode forward pass (the model's state is restored)."""
    seen: dict[nn.Module, tuple[tuple[int, ...], bool, int]] = {}

    def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if mod not in seen and inputs and torch.is_tensor(inputs[0]):
            seen[mod] = (tuple(inputs[0].shape[1:]), inputs[0].requires_grad, out[0].numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if kind_of(m) is not None]
    state = copy.deepcopy(model.state_dict())  # a training-mode pass moves BN statistics: restore them
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            model(example.expand(2, *example.shape[1:]))  # BN needs more than one sample in training mode
    finally:
        model.train(was_training)
        model.load_state_dict(state)
        for h in handles:
            h.remove()
    return seen


def _refuse_concatenation(name: str, in_segs: list[tuple[int, int]], out_segs: list[tuple[int, int]]) -> None:
    """Refuse a layer whose input or output channels come from several channel groups."""
    for side, segs in (("input", in_segs), ("output", out_segs)):
        if len({g for g, _ in segs if g >= 0}) > 1:
            raise EpipruneError(f"latency tables do not cover layer {name!r}, whose {side} channels come from "
                                "several channel groups (a concatenation) (accepted: layers fed by one group; "
                                "use a flops or params budget)")


def timed_layers(graph: PrunableGraph | TransformerGraph) -> tuple[list[TimedLayer], np.ndarray]:
    """The layers of graph.model the latency tables cover (every module of a registered kind the forward pass
    reaches), and each group's activation volume (elements per sample of the outputs its channels define, shape
    (G,)), traced with one training-mode forward pass. A TransformerGraph's: unit_timed_layers."""
    if isinstance(graph, TransformerGraph):
        return unit_timed_layers(graph)
    out_of, in_of = graph.module_groups()
    names = {m: n for n, m in graph.model.named_modules()}
    out_segs, in_segs, _ = graph.channel_segments()
    layers: list[TimedLayer] = []
    volume = np.zeros(len(graph.groups))
    sizes = graph.widths()
    for m, (shape, needs_grad, out_numel) in _trace(graph.model, graph.example_inputs).items():
        g_out, g_in = out_of.get(m, -1), in_of.get(m, -1)
        _refuse_concatenation(names[m], in_segs.get(id(m), []), out_segs.get(id(m), []))
        kind = kind_of(m)
        refusal = kind.refuse(m, names[m])
        if refusal is not None:
            raise EpipruneError(refusal)
        dense_in, dense_out = kind.channels(m)
        if g_out >= 0 and kind.activation_volume:
            volume[g_out] += out_numel
        spatial = "x".join(map(str, shape[1:]))
        signature = (f"{kind.name} {kind.detail(m)} in{dense_in}{'/g' if g_in >= 0 else ''} out{dense_out}"
                     f"{'/g' if g_out >= 0 else ''} @{spatial or '-'} grad{int(needs_grad)}")
        layers.append(TimedLayer(names[m], kind.name, signature, g_in, g_out, dense_in, dense_out,
                                 sizes[g_in] if g_in >= 0 else dense_in, sizes[g_out] if g_out >= 0 else dense_out,
                                 kind.builder(m), shape, needs_grad))
    return layers, volume


def unit_timed_layers(graph: TransformerGraph) -> tuple[list[TimedLayer], np.ndarray]:
    """One timed layer per unit group of a transformer: its whole block at a number of kept units (one axis; see
    costs.unit_kinds), input (tokens, hidden) of one sample; and per group the parameters its units own (shape (G,)),
    the tail's regressor V in place of a CNN's activation volume (costs.unit_kinds says why)."""
    layers: list[TimedLayer] = []
    volume = np.zeros(len(graph.groups))
    for g, (group, (call, sample)) in enumerate(zip(graph.groups, block_calls(graph), strict=True)):
        kind = kind_of(call)
        units, _ = kind.channels(call)
        signature = f"{kind.name} {kind.detail(call)} in{units}/g out{units}/g @{'x'.join(map(str, sample))} grad1"
        layers.append(TimedLayer(group.name, kind.name, signature, -1, g, units, units, units, units,
                                 kind.builder(call), sample, True))
        volume[g] = unit_params(group) * group.size
    return layers, volume


def table_axes(layer: TimedLayer, points: int) -> list[list[int]]:
    """Measured channel counts per axis: [out] for one-axis layers, [in, out] otherwise (a fixed dim: one point)."""
    out_axis = grid(layer.dense_out, points) if layer.out_group >= 0 else [layer.dense_out]
    if layer.single_axis:
        return [out_axis]
    in_axis = grid(layer.dense_in, points) if layer.in_group >= 0 else [layer.dense_in]
    return [in_axis, out_axis]


def prepare_layer(layer: TimedLayer, c_in: int, c_out: int, settings: LatencySettings, device: torch.device
                  ) -> Callable[[], None]:
    """A function running one layer at (c_in, c_out) channels once, as the settings' target runs it (train:
    forward and backward from a fixed output gradient; infer: forward without autograd), on a random batch."""
    op = in_memory_format(layer.build(c_in, c_out).to(device), settings.channels_last)
    shape = LAYER_KINDS.get(layer.kind).batch_shape(layer.input_shape, c_in, settings.batch_size)
    train = settings.target == "train"
    x = in_memory_format(torch.randn(*shape, device=device), settings.channels_last)
    x.requires_grad_(train and layer.input_grad)
    op.train(train)
    if not train:
        def run() -> None:
            with torch.no_grad(), autocast(device, settings.amp):
                op(x)
        return run
    with autocast(device, settings.amp):
        grad_out = torch.ones_like(op(x))

    def run_train() -> None:
        for p in op.parameters():
            p.grad = None
        x.grad = None
        with autocast(device, settings.amp):
            out = op(x)
        out.backward(grad_out)
    return run_train


def time_layer(layer: TimedLayer, c_in: int, c_out: int, settings: LatencySettings, device: torch.device) -> float:
    """Milliseconds of one layer at (c_in, c_out) channels, as the settings' target runs it (the median of
    settings.repeats runs after settings.warmup)."""
    return median_ms(prepare_layer(layer, c_in, c_out, settings, device), device, settings.warmup, settings.repeats)


@dataclass
class LatencyTable:
    """Measured layer tables and calibration of one model on one device (see costs.latency_model for the method).

    layers: {signature: {"axes": [[channels...], ...], "ms": nested list, milliseconds}} (as measured).
    calibration: constant_ms, layer_scale, tail_ms (>= 0) and the whole-model timings they were fitted to.
    noise: how noisy the build was (costs.layer_ratios.measure_layer_ratios; empty for tables built before it)."""

    key: dict
    layers: dict[str, dict]
    calibration: dict
    build_seconds: float = 0.0
    noise: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"format": FORMAT, **asdict(self)}, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table written by save(); a corrupt, truncated or foreign file is a LatencyTableError."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT}")
            table = cls(dict(data["key"]), dict(data["layers"]), dict(data["calibration"]),
                        float(data.get("build_seconds", 0.0)), dict(data.get("noise") or {}))
            for entry in table.layers.values():
                shape = tuple(len(a) for a in entry["axes"])
                if np.asarray(entry["ms"], dtype=np.float64).shape != shape:
                    raise ValueError("a layer table does not match its axes")
            for name in ("constant_ms", "layer_scale", "tail_ms"):
                float(table.calibration[name])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LatencyTableError(f"latency table {path} is corrupt or not an epiprune latency table "
                                    f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}) (accepted: "
                                    "a file written by `epiprune latency-table`; delete it to rebuild)") from None
        return table


def architecture_digest(layers: Sequence[TimedLayer], graph: PrunableGraph | TransformerGraph) -> str:
    """A short hash of the layer layout and channel groups: tables of other architectures never match."""
    text = json.dumps([[layer.name, layer.signature, layer.in_group, layer.out_group] for layer in layers]
                      + [graph.names, graph.widths()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def table_key(graph: PrunableGraph | TransformerGraph, layers: Sequence[TimedLayer], settings: LatencySettings) -> dict:
    """What a table's numbers depend on; a stored table is reused only when every field matches. Not the
    settings' repeats, warmup or noise_limit: how many timings a point takes and whether a build is accepted, not
    what is timed."""
    device = graph.example_inputs.device
    return {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "dtype": "float32" if settings.amp == "none" else settings.amp,
            "memory_format": "channels_last" if settings.channels_last else "contiguous",
            "batch_size": settings.batch_size, "input_size": list(graph.example_inputs.shape[1:]),
            "target": settings.target, "model": type(graph.model).__name__,
            "architecture": architecture_digest(layers, graph), "grid_points": settings.grid_points}


def default_table_path(key: dict) -> Path:
    """Where `train` keeps tables between runs: $EPIPRUNE_CACHE (or ~/.cache/epiprune)/latency/<model>-<hash>.json."""
    root = Path(os.environ.get("EPIPRUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                         Path.home() / ".cache") / "epiprune")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return root / "latency" / f"{key['model'].lower()}-{digest}.json"
