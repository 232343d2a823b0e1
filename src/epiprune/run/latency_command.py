"""`epiprune latency-table`: build (or reuse) a model's latency table ahead of `train --budget latency:F`.

Every input is checked before anything is timed (a build takes a minute or more: issue 23 met a RuntimeError after
38 s for `--num-classes 0` and an unwritable `--out` after 58 s). The network is built the way `train` builds it
(registry name or `package.module:factory`, its keyword arguments, the layers never pruned) and the table is timed
with the settings `TrainConfig.latency_settings` derives, so that a table built here is the one train looks for.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from epiprune.costs.calibration import CALIBRATION_NETWORKS, calibration_steps
from epiprune.costs.latency_build import load_or_build
from epiprune.costs.latency_model import LatencyCostModel
from epiprune.costs.latency_table import default_table_path, table_key, timed_layers
from epiprune.costs.timing import LatencySettings
from epiprune.errors import EpipruneError
from epiprune.models import model_task
from epiprune.numerics import in_memory_format
from epiprune.policy.subnetwork import select_subnetwork
from epiprune.run.config import TrainConfig
from epiprune.run.network import build_network, resolve_device
from epiprune.run.text import VOCAB
from epiprune.surgery import PrunableGraph, TransformerGraph, make_graph


@dataclass
class TableJob:
    """A checked request: the network's graph on its device, what to time, and the file to reuse or write."""

    graph: PrunableGraph | TransformerGraph
    settings: LatencySettings
    path: Path
    named: bool  # the caller named the file (else: train's cache file)


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """'1,28,28' -> (1, 28, 28); anything else is one EpipruneError line."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise EpipruneError(f"bad input shape {text!r} (accepted: C,H,W such as 1,28,28 or 3,32,32)")
    return shape  # type: ignore[return-value]


def check_writable(path: Path, option: str = "--out") -> None:
    """Refuse (one line) a table path that is a folder or whose folder cannot take a new file, before any timing:
    a file is created and removed in its nearest existing folder (the folders below are made when it is written)."""
    if path.is_dir():
        raise EpipruneError(f"{option} {path} is a folder (accepted: a file name, e.g. {path / 'table.json'})")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise EpipruneError(f"{option} {path}: {folder} is not a folder (accepted: a file in a writable folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".epiprune-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise EpipruneError(f"cannot write {option} {path}: {e.strerror} in {folder} (accepted: a file in a "
                            "writable folder)") from None


def prepare(cfg: TrainConfig, input_shape: str, num_classes: int | None, out: str | None, force: bool) -> TableJob:
    """Check every input and build the network (no timing yet). cfg carries what `train` would be given: model,
    model_kwargs, ignore_layers, batch_size, seq_len, latency_target, latency_batch, channels_last, amp, device, and
    the build's latency_noise_limit. A language model (a model whose task is text: lm_tiny) is built for byte tokens
    (num_classes None: the text data's 256) and timed on cfg.seq_len tokens, not on input_shape; its graph, like a
    ViT's, is of attention heads and MLP neurons (surgery.make_graph)."""
    text = model_task(cfg.model) == "text"
    if text:  # the run it is for trains on text: its settings are checked as such a run's
        cfg = replace(cfg, data="text")
    shape = (1, cfg.seq_len) if text else parse_input_shape(input_shape)
    num_classes = (VOCAB if text else 10) if num_classes is None else num_classes
    if num_classes < 1:
        raise EpipruneError(f"--num-classes {num_classes} is too small (accepted: an integer >= 1, the outputs of "
                            "the classifier)")
    cfg.validate()
    device = resolve_device(cfg.device)
    if text:
        model, ignored = build_network(cfg, 1, num_classes, None, "text")
        example = torch.zeros(*shape, dtype=torch.long, device=device)
    else:
        model, ignored = build_network(cfg, shape[0], num_classes, shape[1:])
        example = torch.zeros(1, *shape, device=device)
    model = in_memory_format(model.to(device), cfg.channels_last)
    try:
        graph = make_graph(model, example, ignored)
    except RuntimeError as e:  # the network does not run on this input (too small for its strides, ...)
        raise EpipruneError(f"--model {cfg.model} does not run on --input-shape {input_shape}: "
                            f"{(str(e).splitlines() or [type(e).__name__])[0][:200]} (accepted: the C,H,W of "
                            "the images train feeds it)") from None
    settings = cfg.latency_settings()
    path = Path(out) if out is not None else default_table_path(table_key(graph, timed_layers(graph)[0], settings))
    if path.is_dir() or not path.exists() or force:  # a file to write; an existing one may be reused (read only)
        check_writable(path, "--out" if out is not None else "the cache file")
    return TableJob(graph, settings, path, out is not None)


def build_note(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log`, plus one line after load_or_build says it is building: its two phases, each with its own progress
    bar (hundreds of fast layer points, then the calibration's whole-model steps of seconds each)."""

    def logged(message: str) -> None:
        log(message)
        if message.startswith("latency table: building") or message.endswith(": rebuilding"):
            log(f"latency table: timing each layer shape on a grid of channel counts (one progress bar), then "
                f"calibrating on {CALIBRATION_NETWORKS} whole networks ({calibration_steps()} training steps, each "
                "much slower than a layer's: a second bar)")

    return logged


def build(job: TableJob, force: bool, progress: bool, log: Callable[[str], None] = print) -> LatencyCostModel:
    """Reuse the table at job.path if its key matches, else time and write it (another key there is refused
    unless force)."""
    cost, _ = load_or_build(job.graph, job.settings, job.path if job.named else None, progress=progress,
                            log=build_note(log), select=select_subnetwork, replace=force)
    return cost
