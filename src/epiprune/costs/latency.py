"""Latency cost model: the time of a width vector, predicted from per-layer tables measured on the device.

HALP-style (Shen et al., NeurIPS 2022): every conv (dense or depthwise), linear and batch-norm layer is timed on
its own, at its input size, on a grid of channel counts (every channel for narrow layers, about `grid_points`
steps for wide ones); a layer's time at any width is read from its table (the next grid point up on axes that
resolve the kernels' channel blocks, linear interpolation on coarser ones: see BLOCK). A table is made monotone
(its lower envelope along each channel axis), so the predicted cost of a width vector,

    latency(w) = constant + layer_scale * sum over layers T_layer(in channels, out channels) + tail * V(w),

is monotone in every width, as sub-network selection requires. V(w) in [0, 1] is the fraction of the dense
model's activation volume (elements per sample of the groups' outputs) that w keeps: the memory-bound tail that
no single layer owns (ReLUs, residual adds, pooling, the optimizer's elementwise work). The three coefficients
(>= 0) are measured, not guessed: the whole model's step is timed dense, pruned uniformly to 60% and 30% of every
group, and at two uneven sub-networks of the kind selection picks, and a non-negative least-squares fit maps the
layer sum onto those five timings. layer_scale is
there because a layer timed alone is not a layer inside a network (on a 2-core CPU the isolated layers of a
ResNet-20 summed to 1.5x its measured step: caches, allocator and thread wake-ups differ).

What is timed (LatencySettings.target): 'train' = forward + backward of a training batch (whole model: plus the
loss and an SGD step), since EPI's point is a cheaper training run; 'infer' = forward only, eval mode, no grad.
Every timing: warm-up runs, then the median of `repeats`; on a GPU after torch.cuda.synchronize().

A table is an artefact: one JSON file whose key records the device, torch version, threads, dtype, memory
format, batch size, input size, target and the model's layer layout; `load_or_build` reuses a file whose key
matches, rebuilds one whose key differs, and refuses a corrupt file or one measured on another device.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from epiprune.errors import EpipruneError
from epiprune.io.serialization import atomic_write_text
from epiprune.policy.subnetwork import select_subnetwork
from epiprune.surgery import PrunableGraph, is_depthwise

FORMAT = "epiprune-latency-table/1"
TARGETS = ("train", "infer")
NARROW = 16  # axes up to this many channels are timed at every count
# CPU (oneDNN) and GPU kernels pad channels to blocks of 8 or 16, so a layer's time is a staircase in its channel
# count. On an axis whose grid points are at most BLOCK apart (and wide ones sit on multiples of BLOCK), a width
# costs what the next grid point at or above it costs: exact on the staircase, where linear interpolation between
# block edges under-predicted odd widths by 5-20% on this CPU. Wider gaps are interpolated linearly.
BLOCK = 8
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class LatencyTableError(EpipruneError):
    """A latency table file that cannot be used (corrupt, foreign, measured elsewhere)."""


@dataclass(frozen=True)
class LatencySettings:
    """What a latency table times, and how.

    target: 'train' (forward + backward at batch_size) or 'infer' (forward only). batch_size: samples per timed
    batch. channels_last / amp: the memory format and autocast dtype ('none', 'bf16', 'fp16') of the run the
    table must match. repeats / warmup: timed and untimed runs per point (the median is kept). grid_points:
    about this many measured channel counts per wide axis (every channel up to it)."""

    target: str = "train"
    batch_size: int = 128
    channels_last: bool = False
    amp: str = "none"
    repeats: int = 3
    warmup: int = 1
    grid_points: int = 12

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise EpipruneError(f"unknown latency target {self.target!r} (accepted: {', '.join(TARGETS)})")
        if self.amp not in AMP_DTYPES:
            raise EpipruneError(f"unknown amp dtype {self.amp!r} (accepted: {', '.join(AMP_DTYPES)})")
        for name, value, low in (("latency batch", self.batch_size, 1), ("latency repeats", self.repeats, 1),
                                 ("latency warm-up", self.warmup, 0), ("latency grid points", self.grid_points, 2)):
            if not isinstance(value, int) or value < low:
                raise EpipruneError(f"{name} {value!r} is too small (accepted: an integer >= {low})")


def device_name(device: torch.device) -> str:
    """A human-readable name of the processor that runs the timings (the GPU's, or the CPU model)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(run: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of run() in milliseconds, after `warmup` untimed calls (GPU: timed after a sync)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass ('bf16', 'fp16'), or nothing ('none')."""
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def in_memory_format(obj: torch.Tensor | nn.Module, channels_last: bool) -> torch.Tensor | nn.Module:
    """A module, or a 4-D tensor, in channels-last memory format when asked (anything else as it is)."""
    if not channels_last or (torch.is_tensor(obj) and obj.ndim != 4):
        return obj
    return obj.to(memory_format=torch.channels_last)


def time_model_step(model: nn.Module, input_shape: Sequence[int], settings: LatencySettings,
                    repeats: int = 10, warmup: int = 3) -> float:
    """Milliseconds of one step of `model` as `settings` describe it, timed on a deep copy (the caller's weights,
    BN statistics and gradients are untouched). train: forward, cross-entropy, backward, SGD step with momentum;
    infer: eval-mode forward without autograd. input_shape: one sample's (C, H, W)."""
    device = next(model.parameters()).device
    clone = copy.deepcopy(model)
    clone = in_memory_format(clone, settings.channels_last)
    x = in_memory_format(torch.randn(settings.batch_size, *input_shape, device=device), settings.channels_last)
    if settings.target == "infer":
        clone.eval()

        def run() -> None:
            with torch.no_grad(), autocast(device, settings.amp):
                clone(x)
    else:
        clone.train()
        optimizer = torch.optim.SGD(clone.parameters(), lr=1e-6, momentum=0.9)
        with torch.no_grad():
            classes = clone(x[:2]).shape[1]
        y = torch.randint(0, classes, (settings.batch_size,), device=device)

        def run() -> None:
            with autocast(device, settings.amp):
                loss = nn.functional.cross_entropy(clone(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return median_ms(run, device, warmup, repeats)


@dataclass
class TimedLayer:
    """One layer whose time the table holds, and how the groups' widths set its channel counts.

    kind: 'conv', 'dwconv' (depthwise: one channel axis), 'linear' or 'bn' (one axis). in_group / out_group:
    the channel group that sets the input / output channels, -1 for a fixed dimension. dense_in / dense_out:
    the layer's channels in the dense model; in_size / out_size: the dense widths of those groups (a flatten can
    make dense_in a multiple of in_size)."""

    name: str
    kind: str
    signature: str
    in_group: int
    out_group: int
    dense_in: int
    dense_out: int
    in_size: int
    out_size: int
    build: Callable[[int, int], nn.Module] = field(repr=False)
    input_shape: tuple[int, ...] = ()  # one sample's input (C, H, W) or (C,), dense
    input_grad: bool = True  # training needs the input's gradient (not for the layer fed by the data)

    @property
    def single_axis(self) -> bool:
        return self.kind in ("dwconv", "bn")


def grid(dense: int, points: int) -> list[int]:
    """Channel counts at which a layer with `dense` channels on an axis is timed: every count for narrow axes (up
    to NARROW channels, or `points`); else 1, 2, 4 and multiples of a step that is itself a multiple of BLOCK,
    about `points` of them, and `dense`."""
    if dense <= max(points, NARROW):
        return list(range(1, dense + 1))
    step = BLOCK * -(-dense // (BLOCK * points))
    return sorted({1, 2, 4, *range(step, dense, step), dense})


def _conv_builder(conv: nn.Conv2d, depthwise: bool) -> Callable[[int, int], nn.Module]:
    def build(c_in: int, c_out: int) -> nn.Module:
        return nn.Conv2d(c_in, c_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                         groups=c_out if depthwise else 1, bias=conv.bias is not None)
    return build


def _bn_builder(bn: nn.modules.batchnorm._BatchNorm) -> Callable[[int, int], nn.Module]:
    return lambda _c_in, c_out: type(bn)(c_out)


def _linear_builder(linear: nn.Linear) -> Callable[[int, int], nn.Module]:
    return lambda c_in, c_out: nn.Linear(c_in, c_out, bias=linear.bias is not None)


def timed_layers(graph: PrunableGraph) -> tuple[list[TimedLayer], np.ndarray]:
    """The layers of graph.model the latency tables cover, and each group's activation volume (elements per
    sample of the outputs its channels define, shape (G,)), traced with one training-mode forward pass."""
    model, example = graph.model, graph.example_inputs
    out_of, in_of = graph.module_groups()
    names = {m: n for n, m in model.named_modules()}
    out_segs, in_segs, _ = graph.channel_segments()
    seen: dict[nn.Module, tuple[tuple[int, ...], bool, int]] = {}  # module: input shape, input grad, out numel

    def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if mod not in seen and inputs and torch.is_tensor(inputs[0]):
            seen[mod] = (tuple(inputs[0].shape[1:]), inputs[0].requires_grad, out[0].numel())

    kinds = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
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
    layers: list[TimedLayer] = []
    volume = np.zeros(len(graph.groups))
    sizes = graph.widths()
    for m, (shape, needs_grad, out_numel) in seen.items():
        g_out, g_in = out_of.get(m, -1), in_of.get(m, -1)
        for side, segs in (("input", in_segs.get(id(m), [])), ("output", out_segs.get(id(m), []))):
            if len({g for g, _ in segs if g >= 0}) > 1:
                raise EpipruneError(f"latency tables do not cover layer {names[m]!r}, whose {side} channels come from "
                                    "several channel groups (a concatenation) (accepted: layers fed by one group; "
                                    "use a flops or params budget)")
        if isinstance(m, nn.Conv2d):
            depthwise = is_depthwise(m)
            if m.groups > 1 and not depthwise:
                raise EpipruneError(f"latency tables do not cover grouped convolution {names[m]!r} "
                                    f"(groups={m.groups}) yet (accepted: dense or depthwise convolutions; use a "
                                    "flops or params budget)")
            kind, dense_in, dense_out = ("dwconv" if depthwise else "conv"), m.in_channels, m.out_channels
            build = _conv_builder(m, depthwise)
            detail = (f"k{'x'.join(map(str, m.kernel_size))} s{'x'.join(map(str, m.stride))} "
                      f"p{'x'.join(map(str, m.padding))} d{'x'.join(map(str, m.dilation))} b{int(m.bias is not None)}")
        elif isinstance(m, nn.Linear):
            kind, dense_in, dense_out, build, detail = "linear", m.in_features, m.out_features, _linear_builder(m), \
                f"b{int(m.bias is not None)}"
        else:
            kind, dense_in, dense_out, build, detail = "bn", m.num_features, m.num_features, _bn_builder(m), \
                type(m).__name__
        if g_out >= 0 and kind in ("bn", "conv", "dwconv"):
            volume[g_out] += out_numel
        spatial = "x".join(map(str, shape[1:]))
        signature = (f"{kind} {detail} in{dense_in}{'/g' if g_in >= 0 else ''} out{dense_out}"
                     f"{'/g' if g_out >= 0 else ''} @{spatial or '-'} grad{int(needs_grad)}")
        layers.append(TimedLayer(names[m], kind, signature, g_in, g_out, dense_in, dense_out,
                                 sizes[g_in] if g_in >= 0 else dense_in, sizes[g_out] if g_out >= 0 else dense_out,
                                 build, shape, needs_grad))
    return layers, volume


def _axes(layer: TimedLayer, points: int) -> list[list[int]]:
    """Measured channel counts per axis: [out] for one-axis layers, [in, out] otherwise (a fixed dim: one point)."""
    out_axis = grid(layer.dense_out, points) if layer.out_group >= 0 else [layer.dense_out]
    if layer.single_axis:
        return [out_axis]
    in_axis = grid(layer.dense_in, points) if layer.in_group >= 0 else [layer.dense_in]
    return [in_axis, out_axis]


def _time_layer(layer: TimedLayer, c_in: int, c_out: int, settings: LatencySettings, device: torch.device) -> float:
    """Milliseconds of one layer at (c_in, c_out) channels, as the settings' target runs it."""
    op = in_memory_format(layer.build(c_in, c_out).to(device), settings.channels_last)
    spatial = layer.input_shape[1:]
    train = settings.target == "train"
    x = in_memory_format(torch.randn(settings.batch_size, c_in, *spatial, device=device), settings.channels_last)
    x.requires_grad_(train and layer.input_grad)
    op.train(train)
    if not train:
        def run() -> None:
            with torch.no_grad(), autocast(device, settings.amp):
                op(x)
        return median_ms(run, device, settings.warmup, settings.repeats)
    with autocast(device, settings.amp):
        grad_out = torch.ones_like(op(x))

    def run_train() -> None:
        for p in op.parameters():
            p.grad = None
        x.grad = None
        with autocast(device, settings.amp):
            out = op(x)
        out.backward(grad_out)
    return median_ms(run_train, device, settings.warmup, settings.repeats)


def _monotone(ms: np.ndarray) -> np.ndarray:
    """A measured table made non-decreasing in every channel count: each entry becomes the minimum over the entries
    at or above it on each axis. Noise on a timing only ever adds time, so the lower envelope is the estimate
    (a running maximum would spread one slow outlier to every wider point)."""
    for axis in range(ms.ndim):
        ms = np.flip(np.minimum.accumulate(np.flip(ms, axis), axis=axis), axis)
    return ms


def _bracket(axis: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each x: the grid indices (lo, hi) around it and its weight t on hi (x clamped to the axis' range).
    On a block-resolving axis (gaps <= BLOCK) t is 0 or 1: the next grid point at or above x."""
    if len(axis) == 1:
        zero = np.zeros(len(x), dtype=np.int64)
        return zero, zero, np.zeros(len(x))
    x = np.clip(x, axis[0], axis[-1])
    hi = np.clip(np.searchsorted(axis, x), 1, len(axis) - 1)
    if np.max(np.diff(axis)) <= BLOCK:
        return hi - 1, hi, (x > axis[hi - 1]).astype(np.float64)
    return hi - 1, hi, (x - axis[hi - 1]) / (axis[hi] - axis[hi - 1])


def interpolate(axes: Sequence[Sequence[float]], ms: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Read a table on a grid (axes ascending) at `points` (K, number of axes) channel counts, clamped to the
    grid's range: per axis the next grid point at or above (block-resolving axes, see BLOCK) or linear
    interpolation (wider gaps), combined bilinearly for two axes. Returns (K,) values."""
    table = np.asarray(ms, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64).reshape(-1, len(axes))
    brackets = [_bracket(np.asarray(ax, dtype=np.float64), points[:, d]) for d, ax in enumerate(axes)]
    if len(axes) == 1:
        lo, hi, t = brackets[0]
        return (1 - t) * table[lo] + t * table[hi]
    (lo0, hi0, t0), (lo1, hi1, t1) = brackets
    return ((1 - t0) * ((1 - t1) * table[lo0, lo1] + t1 * table[lo0, hi1])
            + t0 * ((1 - t1) * table[hi0, lo1] + t1 * table[hi0, hi1]))


@dataclass
class LatencyTable:
    """Measured layer tables and calibration of one model on one device (see the module docstring).

    layers: {signature: {"axes": [[channels...], ...], "ms": nested list, milliseconds}} (as measured).
    calibration: constant_ms, layer_scale, tail_ms (>= 0) and the whole-model timings they were fitted to."""

    key: dict
    layers: dict[str, dict]
    calibration: dict
    build_seconds: float = 0.0

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
                        float(data.get("build_seconds", 0.0)))
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


class LatencyCostModel:
    """cost(widths) in milliseconds: constant + layer_scale * (sum of the layers' interpolated table values)
    + tail * V(widths), all three coefficients >= 0.
    The same interface as subnetwork.CostModel (callable on a width vector, `dense`, `dense_widths`)."""

    def __init__(self, layers: Sequence[TimedLayer], table: LatencyTable, dense_widths: Sequence[int],
                 volume: np.ndarray) -> None:
        missing = [layer.name for layer in layers if layer.signature not in table.layers]
        if missing:
            raise LatencyTableError(f"latency table lacks layer {missing[0]!r} (accepted: a table built for this "
                                    "model; rebuild it)")
        self.layers = list(layers)
        self.table = table
        self.dense_widths = np.asarray(dense_widths, dtype=np.int64)
        self.volume = np.asarray(volume, dtype=np.float64)
        self.constant = float(table.calibration["constant_ms"])
        self.layer_scale = float(table.calibration.get("layer_scale", 1.0))
        self.tail = float(table.calibration["tail_ms"])
        # layers of one signature share a table: evaluate them together. A layer's channel count on an axis is
        # scale * w[group], with w extended by a 1 at index -1 so that a fixed dimension reads scale = its size
        self._batches = []
        for sig, entry in table.layers.items():
            members = [layer for layer in self.layers if layer.signature == sig]
            if not members:
                continue
            axes = [np.asarray(a, dtype=np.float64) for a in entry["axes"]]
            dims = [(np.asarray([m.out_group for m in members]),
                     np.asarray([m.dense_out / m.out_size if m.out_group >= 0 else m.dense_out for m in members]))]
            if not members[0].single_axis:
                dims.insert(0, (np.asarray([m.in_group for m in members]),
                                np.asarray([m.dense_in / m.in_size if m.in_group >= 0 else m.dense_in
                                            for m in members])))
            self._batches.append((axes, _monotone(np.asarray(entry["ms"], dtype=np.float64)), dims,
                                  [self.layers.index(m) for m in members]))

    def layer_ms(self, widths: Sequence[float]) -> np.ndarray:
        """Each layer's predicted milliseconds at `widths` (in self.layers' order, before layer_scale)."""
        extended = np.append(np.asarray(widths, dtype=np.float64), 1.0)
        result = np.zeros(len(self.layers))
        for axes, ms, dims, positions in self._batches:
            points = np.column_stack([scale * extended[groups] for groups, scale in dims])
            result[positions] = interpolate(axes, ms, points)
        return result

    def volume_fraction(self, widths: Sequence[float]) -> float:
        """V(widths): the kept fraction of the dense activation volume."""
        total = float(self.volume.sum())
        if total == 0:
            return 1.0
        return float(np.sum(self.volume * np.asarray(widths, dtype=np.float64) / self.dense_widths) / total)

    def __call__(self, widths: Sequence[float]) -> float:
        return (self.constant + self.layer_scale * float(np.sum(self.layer_ms(widths)))
                + self.tail * self.volume_fraction(widths))

    @property
    def dense(self) -> float:
        return self(self.dense_widths)


def architecture_digest(layers: Sequence[TimedLayer], graph: PrunableGraph) -> str:
    """A short hash of the layer layout and channel groups: tables of other architectures never match."""
    text = json.dumps([[layer.name, layer.signature, layer.in_group, layer.out_group] for layer in layers]
                      + [graph.names, graph.widths()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def table_key(graph: PrunableGraph, layers: Sequence[TimedLayer], settings: LatencySettings) -> dict:
    """What a table's numbers depend on; a stored table is reused only when every field matches."""
    device = graph.example_inputs.device
    return {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "dtype": "float32" if settings.amp == "none" else settings.amp,
            "memory_format": "channels_last" if settings.channels_last else "contiguous",
            "batch_size": settings.batch_size, "input_size": list(graph.example_inputs.shape[1:]),
            "target": settings.target, "model": type(graph.model).__name__,
            "architecture": architecture_digest(layers, graph), "grid_points": settings.grid_points}


def pruned_copy(graph: PrunableGraph, keep: Sequence[np.ndarray]) -> nn.Module:
    """A copy of graph's model with group g cut to the channels keep[g] (the original is untouched)."""
    clone = copy.deepcopy(graph.model)
    names = {n for n, m in graph.model.named_modules() if any(m is x for x in graph.ignored)}
    cut = PrunableGraph(clone, graph.example_inputs, [m for n, m in clone.named_modules() if n in names])
    cut.prune(keep)
    return clone


def calibration_networks(graph: PrunableGraph, raw: LatencyCostModel) -> list[tuple[str, list[np.ndarray]]]:
    """The sub-networks whose measured steps calibrate the tables: dense, every group cut uniformly to 60% and
    30% (off the block edges), and two that selection would pick under a latency target of 60% and 35% of the raw
    tables' dense time, for seeded random channel scores with random per-group scales (uneven widths, as
    importance-driven pruning produces them)."""
    sizes = graph.widths()
    networks = [(f"uniform {f:g}", [np.arange(max(1, math.ceil(f * n))) for n in sizes]) for f in (1.0, 0.6, 0.3)]
    rng = np.random.default_rng(0)
    floor = raw(np.ones(len(sizes)))  # a tiny network may not get down to 35%: stop at one channel per group
    for fraction in (0.6, 0.35):
        scores = [rng.random(n) * rng.uniform(0.2, 5.0) for n in sizes]
        masks = select_subnetwork(scores, raw, max(fraction * raw.dense, floor))
        networks.append((f"selected {fraction:g}", [np.flatnonzero(m) for m in masks]))
    return networks


def fit_calibration(layer_sums: Sequence[float], volumes: Sequence[float], measured: Sequence[float]
                    ) -> tuple[float, float, float]:
    """(constant, layer_scale, tail) >= 0 minimising the squared error of constant + layer_scale * S + tail * V
    against the measured whole-model times (least squares over every subset of the three terms; the best fit
    whose coefficients are all non-negative wins, so the model stays monotone)."""
    design = np.column_stack([np.ones(len(measured)), layer_sums, volumes])
    target = np.asarray(measured, dtype=np.float64)
    best, best_error = (max(0.0, float(np.mean(target))), 0.0, 0.0), float("inf")
    for subset in ((0, 1, 2), (1, 2), (0, 1), (0, 2), (1,), (2,), (0,)):
        coef, *_ = np.linalg.lstsq(design[:, subset], target, rcond=None)
        if np.any(coef < 0):
            continue
        full = np.zeros(3)
        full[list(subset)] = coef
        error = float(np.sum((design @ full - target) ** 2))
        if error < best_error - 1e-9:
            best, best_error = (float(full[0]), float(full[1]), float(full[2])), error
    return best


CALIBRATION_NETWORKS = 5  # see calibration_networks
CALIBRATION_ROUNDS = 2


def build_table(graph: PrunableGraph, settings: LatencySettings, progress: bool = True,
                log: Callable[[str], None] = print) -> LatencyTable:
    """Time every layer of graph.model on its grid and calibrate against whole-model steps (see the module
    docstring). Runs on the device of graph.example_inputs, with the current torch thread count."""
    start = time.perf_counter()
    layers, volume = timed_layers(graph)
    device = graph.example_inputs.device
    unique = {layer.signature: layer for layer in layers}
    jobs = []
    for sig, layer in unique.items():
        axes = _axes(layer, settings.grid_points)
        points = [(c,) for c in axes[0]] if layer.single_axis else [(a, b) for a in axes[0] for b in axes[1]]
        jobs.append((sig, layer, axes, points))
    total = sum(len(p) for *_, p in jobs)
    entries: dict[str, dict] = {}
    with tqdm(total=total + CALIBRATION_NETWORKS * CALIBRATION_ROUNDS, desc="latency table", unit="point",
              disable=not progress, leave=False, dynamic_ncols=True) as bar:
        for sig, layer, axes, points in jobs:
            values = []
            for point in points:
                c_in, c_out = (point[0], point[0]) if layer.single_axis else point
                values.append(_time_layer(layer, int(c_in), int(c_out), settings, device))
                bar.update()
            ms = np.asarray(values).reshape([len(a) for a in axes])
            entries[sig] = {"axes": axes, "ms": ms.tolist()}
        table = LatencyTable(table_key(graph, layers, settings), entries,
                             {"constant_ms": 0.0, "layer_scale": 1.0, "tail_ms": 0.0})
        raw = LatencyCostModel(layers, table, graph.widths(), volume)
        shape = tuple(graph.example_inputs.shape[1:])
        networks = [(name, keep, pruned_copy(graph, keep)) for name, keep in calibration_networks(graph, raw)]
        # round robin, and the fastest round per network: another process slowing one measurement down (noise only
        # ever adds time) must not bend the fit, which five points and three coefficients leave little room for
        timings: list[list[float]] = [[] for _ in networks]
        for _ in range(CALIBRATION_ROUNDS):
            for times, (_, _, model) in zip(timings, networks, strict=True):
                times.append(time_model_step(model, shape, settings, repeats=5, warmup=2))
                bar.update()
        points_measured = []
        for (name, keep, _), times in zip(networks, timings, strict=True):
            widths = [len(k) for k in keep]
            points_measured.append({"network": name, "widths": widths, "measured_ms": min(times),
                                    "rounds_ms": times, "layer_sum_ms": raw(widths),
                                    "volume": raw.volume_fraction(widths)})
    constant, scale, tail = fit_calibration([p["layer_sum_ms"] for p in points_measured],
                                            [p["volume"] for p in points_measured],
                                            [p["measured_ms"] for p in points_measured])
    table.calibration = {"constant_ms": constant, "layer_scale": scale, "tail_ms": tail, "points": points_measured}
    table.build_seconds = time.perf_counter() - start
    calibrated = LatencyCostModel(layers, table, graph.widths(), volume)
    for p in points_measured:
        p["predicted_ms"] = calibrated(p["widths"])
    dense = points_measured[0]
    log(f"latency table: {len(unique)} layer shapes, {total} points, built in {table.build_seconds:.0f} s; "
        f"dense step {dense['measured_ms']:.1f} ms; calibration: constant {constant:.1f} ms + {scale:.2f} x layers "
        f"+ {tail:.1f} ms x activation volume; " + ", ".join(
            f"{p['network']}: {p['measured_ms']:.1f} ms measured / {p['predicted_ms']:.1f} predicted"
            for p in points_measured))
    return table


def default_table_path(key: dict) -> Path:
    """Where `train` keeps tables between runs: $EPIPRUNE_CACHE (or ~/.cache/epiprune)/latency/<model>-<hash>.json."""
    import os

    root = Path(os.environ.get("EPIPRUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                         Path.home() / ".cache") / "epiprune")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return root / "latency" / f"{key['model'].lower()}-{digest}.json"


def load_or_build(graph: PrunableGraph, settings: LatencySettings, path: str | Path | None = None,
                  progress: bool = True, log: Callable[[str], None] = print) -> tuple[LatencyCostModel, Path]:
    """The latency cost model of graph's model: the table at `path` (default: the cache path of its key) when
    its key matches; rebuilt (and written there) when the file is missing or its key differs in anything but the
    device. A corrupt file, or one measured on another device, is refused (LatencyTableError), never overwritten."""
    layers, volume = timed_layers(graph)
    key = table_key(graph, layers, settings)
    path = Path(path) if path is not None else default_table_path(key)
    if path.exists():
        table = LatencyTable.load(path)
        if table.key == key:
            log(f"latency table: reusing {path}")
            return LatencyCostModel(layers, table, graph.widths(), volume), path
        if table.key.get("device") != key["device"] or table.key.get("device_type") != key["device_type"]:
            raise LatencyTableError(f"latency table {path} was measured on {table.key.get('device')!r}, this run is "
                                    f"on {key['device']!r} (accepted: a table measured on this device; pass another "
                                    "--latency-table path to build one)")
        changed = sorted(k for k in key if table.key.get(k) != key[k])
        log(f"latency table {path} was built for other settings ({', '.join(changed)}): rebuilding")
    else:
        log(f"latency table: building {path} (once per model, device and settings)")
    with torch.random.fork_rng(devices=[graph.example_inputs.device] if graph.example_inputs.is_cuda else []):
        table = build_table(graph, settings, progress, log)  # its random inputs must not move the run's RNG
    table.save(path)
    return LatencyCostModel(layers, table, graph.widths(), volume), path

