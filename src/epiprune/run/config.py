"""One description of a training run: `TrainConfig`. The `train` subcommand's options are generated from its fields
(help, default, choices, type: see `option` and cli.add_config_options), `epiprune train --config FILE` reads a
JSON file of its fields, and `compare` writes one such file per run. Adding a run setting is adding a field here.
Its checks are in config_checks.py.
"""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from epiprune.costs.timing import MAX_PAIR_RATIO_SPREAD, TARGETS, LatencySettings
from epiprune.errors import EpipruneError
from epiprune.files import atomic_write_text
from epiprune.models import MODELS
from epiprune.models.user import parse_layer_names, parse_model_kwargs
from epiprune.numerics import AMP_DTYPES
from epiprune.policy.bounds import EPI_AVERAGES
from epiprune.policy.config import PolicyConfig
from epiprune.policy.importance import IMPORTANCES, MAGNITUDE_TAU, TAYLOR_TAU
from epiprune.policy.indicator import INDICATORS
from epiprune.run.config_checks import OPTIMIZERS, validate_config
from epiprune.run.config_text import (
    fits,
    int_list,
    parse_epochs,
    parse_noise_limit,
    parse_threshold,
)
from epiprune.run.data import DATASETS
from epiprune.run.defaults import CNN_DEFAULTS, describe, model_defaults

DEFAULT_EPI_EVERY = "epoch"
# --epi-every auto: probes over the whole schedule (24 steps at 12 epochs of 47 steps: issue 20's offline look)
PROBES_PER_SCHEDULE = 24


def option(default: Any = MISSING, *, help: str, choices: tuple[str, ...] | None = None,  # noqa: A002
           metavar: str | None = None, parse: Callable[[str], Any] | None = None,
           default_factory: Callable[[], Any] | Any = MISSING, policy: str | None = None) -> Any:
    """A TrainConfig field and its command-line option `--<name-with-dashes>`: help text (the default is appended
    unless it says "(default ..."), choices, metavar, and `parse` for text that is not a plain int/float/str (the
    option then takes the text and parse makes the field's value). A bool field is a switch (default off).
    policy: the PolicyConfig field this setting feeds (TrainConfig.policy_config builds it from these)."""
    metadata = {"help": help, "choices": choices, "metavar": metavar, "parse": parse, "cli": True, "policy": policy}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A config class's field types. Cached: this module's annotations are strings (`from __future__ import
    annotations`) and typing.get_type_hints compiles every one of them on each call, which the command line did
    once per option (187 calls, about 0.2 s of every `epiprune` command)."""
    return typing.get_type_hints(cls)


@dataclass
class TrainConfig:
    """What `epiprune train` runs; every field is also a command-line option (`model_kwargs` -> --model-kwargs),
    generated from the field's metadata (see `option`), except `progress` (the switch --no-progress).

    model: a registry name or the import path `package.module:factory` of the user's own network.
    model_kwargs: JSON keyword arguments of that factory (num_classes and in_channels are added when it takes
    them). ignore_layers: module names (as in model.named_modules()) whose output channels are never pruned."""

    model: str = option("resnet20", help=f"network: {', '.join(MODELS)}, or your own as package.module:factory (a "
                        "function or nn.Module class returning it; called with num_classes and in_channels if it "
                        "takes them; the current folder is searched first)")
    model_kwargs: dict = option(default_factory=dict, metavar="JSON", parse=parse_model_kwargs,
                                help="keyword arguments of your --model factory as a JSON object, e.g. "
                                "'{\"width\": 32}' (default: none)")
    ignore_layers: list[str] = option(default_factory=list, metavar="NAMES", parse=parse_layer_names,
                                      help="comma-separated module names (as in model.named_modules()) whose output "
                                      "channels are never pruned; a container stands for its convs and linear layers "
                                      "(default: none; the classifier is always kept)")
    data: str = option("builtin", help=f"dataset: {', '.join(DATASETS)} (builtin: a Fashion-MNIST subset shipped "
                       "with epiprune, 10k train / 2k val; text: byte-level language modelling, a built-in public-"
                       "domain corpus or --data-dir's .txt files, for --model lm_tiny)")
    data_dir: str | None = option(None, help="folder of the dataset's files (only with a --data other than builtin; "
                                  "fashion-mnist also finds Debian's dataset-fashion-mnist) (default: none)")
    image_size: int = option(32, help="image side for --data imagefolder (pixels)")
    seq_len: int = option(128, help="bytes per sample for --data text (a sample predicts each next byte)")
    train_subset: int | None = option(None, help="use at most this many training images, drawn at random "
                                      "(default: all)")
    val_subset: int | None = option(None, help="use at most this many validation images, drawn at random "
                                    "(default: all)")
    epochs: int = option(15, help="epochs of the whole schedule (dense + pruned)")
    batch_size: int = option(128, help="images per step (under torchrun: the global batch, split over the ranks)")
    lr: float | None = option(None, help="peak learning rate, cosine-annealed per step over the whole schedule "
                              + describe("lr"))
    momentum: float = option(0.9, help="momentum of SGD (Nesterov)")
    warmup_epochs: float | None = option(None, help="ramp the LR up linearly over this many epochs first (1 helps "
                                         "ResNet-56 at lr 0.1) " + describe("warmup_epochs"))
    weight_decay: float | None = option(None, help="on weights of 2 or more dimensions (conv, linear, embeddings), "
                                        "not on norm scales or biases " + describe("weight_decay"))
    optimizer: str | None = option(None, choices=OPTIMIZERS, help="SGD with Nesterov momentum, or AdamW (ConvNeXt-"
                                   "style networks need it: e.g. --optimizer adamw --lr 1e-3 --weight-decay 0.05); "
                                   "its state is carried through the prune either way " + describe("optimizer"))
    clip_grad_norm: float | None = option(None, help="clip the global L2 norm of the gradients at this value before "
                                          "each optimizer step (after fp16's unscaling; 0: off) "
                                          + describe("clip_grad_norm"))
    budget: str = option(PolicyConfig.budget, policy="budget",
                         help="what to keep: flops:F, params:F or latency:F (of the dense model's step "
                         "time measured on this device), 0 < F < 1")
    importance: str = option(PolicyConfig.importance, choices=IMPORTANCES, policy="importance",
                             help="channel importance: first-order Taylor "
                             "(gradients), group L2 weight magnitude, BN |gamma| (network slimming), or random")
    indicator: str = option(PolicyConfig.indicator, choices=INDICATORS, policy="indicator",
                            help="when to prune: EPI; earlybird (You et al. 2020 as "
                            "published: BN |gamma| channel masks, a queue of --earlybird-queue distances all < "
                            "epsilon = 1 - threshold, default 0.1; use it with --importance bn --bn-l1 1e-4); "
                            "earlybird-budget (masks of the budget's sub-network over the EPI window, distances <= "
                            "epsilon); none (dense training, EPI still tracked)")
    epi_window: int = option(PolicyConfig.window, policy="window", help="r: earlier epochs EPI compares with")
    epi_threshold: float | str | None = option(None, policy="threshold", metavar="TAU", parse=parse_threshold,
                                               help=f"tau: prune when EPI >= tau (default {TAYLOR_TAU} for taylor, "
                                               f"{MAGNITUDE_TAU} for magnitude, the paper's values); 'auto' (step "
                                               "clock, taylor): the run's noise floor, the running mean of the "
                                               "similarity of sub-networks selected from the two halves of each "
                                               "probe interval")
    epi_every: str = option(DEFAULT_EPI_EVERY, metavar="STEPS", help="when EPI probes the dominant sub-network: "
                            "'epoch' (once per epoch), N (every N optimizer steps, N >= 2: the step clock, which "
                            "prunes inside an epoch), or 'auto' (the step clock with "
                            f"{PROBES_PER_SCHEDULE} probes over the schedule, at least 2 steps apart)")
    epi_average: str = option(PolicyConfig.epi_average, choices=EPI_AVERAGES, policy="epi_average",
                              help="EPI's mean of layer distances: over layers (the "
                              "paper: a channel group spanning k conv/linear layers counts k times) or over channel "
                              "groups (each once; epiprune before 2026-11-28)")
    epi_peak: int = option(PolicyConfig.peak, policy="peak",
                           help="also require EPI to exceed each of its last N values (the paper's peak "
                           "condition; 0: off)")
    epi_smooth: int = option(PolicyConfig.smooth, policy="smooth",
                             help="compare the mean of the last N EPI values with tau (1: EPI itself; 2, the "
                             "default, moved the prune epoch least under perturbations: docs/RESULTS.md)")
    earlybird_queue: int = option(PolicyConfig.earlybird_queue, policy="earlybird_queue",
                                  help="--indicator earlybird: successive mask distances that must "
                                  "all be below epsilon")
    min_dense_epochs: float | None = option(None, policy="min_dense_epochs",
                                            help="never prune earlier (fractions of an epoch on the step clock) "
                                            "(default: window+1 on the epoch clock, 0 on the step clock)")
    max_dense_epochs: float | None = option(None, help="prune at this epoch anyway if EPI has not triggered "
                                            "(fractions of an epoch on the step clock) (default: half the epochs, "
                                            "rounded down on the epoch clock)")
    prune_at: float | None = option(None, policy="prune_at", parse=parse_epochs,
                                    help="ignore EPI: prune after exactly this many dense epochs (0: at "
                                    "initialisation; step clock: fractions, met at the first probe at or after "
                                    "them) (default: none, --indicator decides)")
    channel_multiple: int = option(PolicyConfig.channel_multiple, policy="channel_multiple",
                                   help="keep a multiple of this many channels per layer (8: faster CPU/GPU "
                                   "kernels, coarser budget)")
    finetune_epochs: int = option(0, help="extra epochs after --epochs at 0.1x the LR (train-prune-fine-tune with "
                                  "--prune-at EPOCHS)")
    init_batches: int = option(10, help="with --prune-at 0 and taylor: batches of gradients used to rank channels at "
                               "initialisation")
    bn_l1: float = option(0.0, help="L1 penalty on BN scales while dense (network slimming; Early-Bird uses 1e-4)")
    holdout: int = option(0, help="hold this many training images (--data text: sequences of --seq-len bytes, cut "
                          "from the end of each document's training part) out as the validation split; the dataset's "
                          "own validation split becomes a test split, evaluated once at the end (--val-subset then "
                          "sizes it) (0: off)")
    data_seed: int | None = option(None, help="seeds the draw of --train-subset, --val-subset and --holdout, so that "
                                   "seeds can share one data subset (default: --seed)")
    record_scores: bool = option(False, help="write scores.jsonl: the importance of every dense epoch (step "
                                 "clock: of every probe and its first half) (for --branch-from and trigger studies)")
    probe_every: int = option(0, help="with --record-scores: also record the Taylor scores of every window of N "
                              "steps (0: off)")
    keep_checkpoints: list[int] | None = option(None, metavar="EPOCHS",
                                                parse=lambda text: int_list(text, "keep-checkpoints"),
                                                help="keep the checkpoints of these epochs in "
                                                "checkpoints/epoch<k>.pt, e.g. 1-6,12; on the step clock also, for "
                                                "every probe in them, the one before its step, step<s-1>.pt "
                                                "(default: none)")
    branch_from: str | None = option(None, metavar="DIR", help="start from the dense run in DIR (made with "
                                     "--record-scores --keep-checkpoints): replay its scores through this run's "
                                     "policy and continue from the epoch it prunes (step clock: inside the "
                                     "epoch, at the probe step) (default: none)")
    latency_target: str = option("train", choices=TARGETS, help="latency budget: time a training step (forward + "
                                 "backward + SGD step, at the batch size) or inference (forward only, at "
                                 "--latency-batch)")
    latency_batch: int | None = option(None, help="batch size the latency table times (default: the training batch "
                                       "size, --batch-size)")
    channels_last: bool = option(False, help="channels-last memory format for training and for the latency table")
    amp: str = option("none", choices=tuple(AMP_DTYPES), help="autocast dtype of the forward pass (fp16 adds loss "
                      "scaling); the latency table matches it")
    latency_table: str | None = option(None, metavar="PATH", policy="latency_table",
                                       help="latency budget: the table file to reuse or build "
                                       "(default: a cache file per model, device and settings under $EPIPRUNE_CACHE, "
                                       "else ~/.cache/epiprune)")
    latency_noise_limit: float = option(MAX_PAIR_RATIO_SPREAD, metavar="FRACTION", parse=parse_noise_limit,
                                        help="latency budget: refuse to build a table whose timings spread more than "
                                        "this (pair ratios' interquartile range over median, median over layer sizes; "
                                        f"a number > 0) (default: {MAX_PAIR_RATIO_SPREAD}). A higher limit accepts a "
                                        "table built under load (two threads on a busy machine measured 0.74-0.94): "
                                        "the closed loop at the prune still corrects the pick against measured times. "
                                        "Not part of the table's key: a stored table is reused whatever the limit")
    latency_closed_loop: bool = option(True, policy="latency_closed_loop",
                                       help="latency budget: at the prune, time the table's pick against the dense "
                                       "model and correct it until it measures within [F - 0.03, F] (seconds; "
                                       "recorded in summary.json; the kept widths then depend on the timings: "
                                       "--no-latency-closed-loop with a stored table reruns bit-identically) "
                                       "(default: on)")
    compile: bool = option(False, help="torch.compile the model (compiled again after the prune; latency tables stay "
                           "eager)")
    seed: int = option(0, policy="seed", help="seeds initialisation, data order and augmentation (runs on the CPU are "
                       "bit-identical for one seed)")
    device: str = option("auto", choices=("auto", "cpu", "cuda"), help="auto: this rank's GPU if CUDA is "
                         "available, else the CPU")
    dist_timeout: float = option(600.0, help="under torchrun: seconds a collective may wait for the other ranks "
                                 "before failing")
    out: str = option("runs/train", help="output folder (refused if it holds a run, see --force)")
    progress: bool = field(default=True, metadata={"cli": False})  # the command line's --no-progress

    def __post_init__(self) -> None:
        """The network-dependent settings left unset (None) take the network's value (run/defaults.py): a
        transformer's AdamW, warm-up and clipping, or a CNN's SGD; a value given is kept."""
        defaults = model_defaults(self.model, self.epochs)
        for name in CNN_DEFAULTS:
            if getattr(self, name) is None:
                setattr(self, name, defaults[name])

    @classmethod
    def options(cls) -> list[Field]:
        """The fields that are command-line options, in the order `train --help` lists them."""
        return [f for f in fields(cls) if f.metadata.get("cli", True)]

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        return dict(_type_hints(cls))

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """The config in a JSON file of TrainConfig fields (as `compare` writes them), with `overrides` on top."""
        return cls(**{**read_config_file(path), **overrides})

    def write(self, path: str | Path) -> None:
        """This config as a JSON file that `epiprune train --config` reads."""
        atomic_write_text(Path(path), json.dumps(asdict(self), indent=1) + "\n")

    def validate(self) -> None:
        """Raise EpipruneError naming the first bad value and what is accepted (run/config_checks.py)."""
        validate_config(self)

    def policy_config(self, steps_per_epoch: int | None = None) -> PolicyConfig:
        """The policy's settings: each field that declares `policy=` feeds that PolicyConfig field; the others are
        derived: max_dense_epochs (the fallback, resolved from the schedule), latency (what the table times) and the
        clock (epi_every and steps_per_epoch: the step clock needs the epoch's length, the run's batches per epoch)."""
        values = {f.metadata["policy"]: getattr(self, f.name) for f in fields(self) if f.metadata.get("policy")}
        every = 0 if self.epi_every == "epoch" else self.resolved_epi_every(steps_per_epoch)
        return PolicyConfig(**values, max_dense_epochs=self.resolved_max_dense_epochs, latency=self.latency_settings(),
                            epi_every=every, steps_per_epoch=steps_per_epoch if every else None)

    def resolved_epi_every(self, steps_per_epoch: int | None) -> int:
        """Optimizer steps between probes (0: the epoch clock); 'auto' spreads PROBES_PER_SCHEDULE probes over the
        schedule's steps (at least 2 steps apart: each probe's noise estimate needs two halves)."""
        if self.epi_every == "epoch":
            return 0
        if self.epi_every != "auto":
            return int(self.epi_every)
        if steps_per_epoch is None:
            raise EpipruneError("--epi-every auto needs the epoch's length in steps (accepted: a number of steps)")
        return max(2, round(self.epochs * steps_per_epoch / PROBES_PER_SCHEDULE))

    def latency_settings(self) -> LatencySettings:
        """What a latency table for this run times: its target, batch, memory format and autocast dtype; and the
        noise limit its build must meet."""
        return LatencySettings(target=self.latency_target, batch_size=self.latency_batch or self.batch_size,
                               channels_last=self.channels_last, amp=self.amp, noise_limit=self.latency_noise_limit)

    @property
    def total_epochs(self) -> int:
        """The schedule, plus the fine-tuning epochs of train-prune-fine-tune."""
        return self.epochs + self.finetune_epochs

    @property
    def resolved_max_dense_epochs(self) -> float:
        """Default fallback: half the schedule (EPI's promise is to prune early); on the epoch clock a whole
        epoch, at least window + 1."""
        if self.max_dense_epochs is not None:
            return self.max_dense_epochs
        if self.epi_every != "epoch":
            return self.epochs / 2
        return min(self.epochs - 1, max(self.epi_window + 1, self.epochs // 2))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The TrainConfig fields in a JSON file (`train --config`), each checked against its field's type."""
    try:
        values = json.loads(Path(path).read_text())
    except OSError as e:
        raise EpipruneError(f"cannot read --config {path} ({e.strerror}) (accepted: a JSON file of train's "
                            "settings, as compare writes them)") from None
    except ValueError as e:
        raise EpipruneError(f"--config {path} is not JSON ({e}) (accepted: a JSON object of train's settings)") \
            from None
    if not isinstance(values, dict):
        raise EpipruneError(f"--config {path} is not a JSON object (accepted: an object of train's settings)")
    hints = TrainConfig.field_types()
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise EpipruneError(f"--config {path} names unknown settings {unknown} (accepted: {', '.join(hints)})")
    for name, value in values.items():
        if not fits(value, hints[name]):
            raise EpipruneError(f"--config {path}: {name} = {value!r} is not of type {hints[name]} (accepted: the "
                                "type of train's --" + name.replace("_", "-") + ")")
    return values


