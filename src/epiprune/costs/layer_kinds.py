"""The layer kinds latency tables time, as a registry: kind name -> how to recognise a module of that kind, its
dense channel counts, how to build a stand-alone layer of given (in, out) channels for timing, and how its time
scales with the channel groups (one axis or in x out; whether its output counts to the activation volume).

timed_layers and the latency cost model read everything kind-specific from here, so a new kind is added by
`register(LayerKind(...))`, not by editing if-chains (the transformer units, attention heads and MLP neurons, are
registered so by costs.unit_kinds). A kind's name and its
`detail` are part of every table signature, and signatures are part of the cache key: changing them for an
existing kind orphans every stored table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from epiprune.registry import Registry
from epiprune.surgery import is_depthwise

Build = Callable[[int, int], nn.Module]  # (input channels, output channels) -> a fresh layer of that shape
# (one sample's dense input shape, input channels, batch) -> the shape of the batch a layer is timed on
BatchShape = Callable[[tuple[int, ...], int, int], tuple[int, ...]]


def _no_refusal(_module: nn.Module, _name: str) -> str | None:
    return None


def channels_first(sample: tuple[int, ...], c_in: int, batch: int) -> tuple[int, ...]:
    """A channel layer's batch: (batch, c_in, *spatial), the sample's channels replaced by the timed count."""
    return (batch, c_in, *sample[1:])


@dataclass(frozen=True)
class LayerKind:
    """One kind of layer a latency table covers.

    name: the first word of the layer's table signature and TimedLayer.kind ('conv', 'dwconv', 'linear', 'bn').
    matches(module): whether a module is of this kind (kinds are tried in registration order; the first wins).
    channels(module): its dense (input, output) channel counts (features for a linear layer).
    builder(module): build(c_in, c_out), a fresh layer with the module's other hyper-parameters, for timing.
    detail(module): those other hyper-parameters as written in the signature (kernel, stride, bias, class, ...).
    single_axis: its time depends on one channel count, in = out (a depthwise conv, a norm), so its table has one
    axis (the output group's); otherwise two axes, in x out.
    activation_volume: its output's elements count to the activation volume V(w) of the memory-bound tail.
    refuse(module, name): why a module of this kind cannot be tabled (a one-line message), or None.
    batch_shape(sample, c_in, batch): the shape of the random batch it is timed on (default channels_first; a
    transformer block's input keeps its width whatever units it has: costs.unit_kinds)."""

    name: str
    matches: Callable[[nn.Module], bool]
    channels: Callable[[nn.Module], tuple[int, int]]
    builder: Callable[[nn.Module], Build]
    detail: Callable[[nn.Module], str]
    single_axis: bool
    activation_volume: bool
    refuse: Callable[[nn.Module, str], str | None] = _no_refusal
    batch_shape: BatchShape = channels_first


LAYER_KINDS: Registry[LayerKind] = Registry("latency layer kind")


def register(kind: LayerKind) -> LayerKind:
    """Add a layer kind to the registry (after the existing ones); a second kind of the same name is an error."""
    return LAYER_KINDS.register(kind.name, kind)


def kind_of(module: nn.Module) -> LayerKind | None:
    """The first registered kind that matches `module`, or None (a layer the tables do not time)."""
    return next((LAYER_KINDS.get(name) for name in LAYER_KINDS if LAYER_KINDS.get(name).matches(module)), None)


def _conv_detail(conv: nn.Conv2d) -> str:
    return (f"k{'x'.join(map(str, conv.kernel_size))} s{'x'.join(map(str, conv.stride))} "
            f"p{'x'.join(map(str, conv.padding))} d{'x'.join(map(str, conv.dilation))} b{int(conv.bias is not None)}")


def _conv_builder(conv: nn.Conv2d, depthwise: bool) -> Build:
    def build(c_in: int, c_out: int) -> nn.Module:
        return nn.Conv2d(c_in, c_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                         groups=c_out if depthwise else 1, bias=conv.bias is not None)
    return build


def _refuse_grouped(conv: nn.Conv2d, name: str) -> str | None:
    if conv.groups == 1:
        return None
    return (f"latency tables do not cover grouped convolution {name!r} (groups={conv.groups}) yet (accepted: dense or "
            "depthwise convolutions; use a flops or params budget)")


DWCONV = register(LayerKind(
    "dwconv", matches=is_depthwise, channels=lambda m: (m.in_channels, m.out_channels),
    builder=lambda m: _conv_builder(m, depthwise=True), detail=_conv_detail, single_axis=True, activation_volume=True))
CONV = register(LayerKind(  # every other Conv2d: dense ones are timed, grouped ones refused (not silently skipped)
    "conv", matches=lambda m: isinstance(m, nn.Conv2d) and not is_depthwise(m),
    channels=lambda m: (m.in_channels, m.out_channels), builder=lambda m: _conv_builder(m, depthwise=False),
    detail=_conv_detail, single_axis=False, activation_volume=True, refuse=_refuse_grouped))
LINEAR = register(LayerKind(
    "linear", matches=lambda m: isinstance(m, nn.Linear), channels=lambda m: (m.in_features, m.out_features),
    builder=lambda m: lambda c_in, c_out: nn.Linear(c_in, c_out, bias=m.bias is not None),
    detail=lambda m: f"b{int(m.bias is not None)}", single_axis=False, activation_volume=False))
BN = register(LayerKind(
    "bn", matches=lambda m: isinstance(m, nn.modules.batchnorm._BatchNorm),
    channels=lambda m: (m.num_features, m.num_features), builder=lambda m: lambda _c_in, c_out: type(m)(c_out),
    detail=lambda m: type(m).__name__, single_axis=True, activation_volume=True))
