"""One description of a training run: `TrainConfig`. The `train` subcommand's options are generated from its fields
(help, default, choices, type: see `option` and cli.add_config_options), `epiprune train --config FILE` reads a
JSON file of its fields, and `compare` writes one such file per run. Adding a run setting is adding a field here.
(That is why the file is over ~400 lines: it is the one list of run settings, each field with its help text.)
"""

from __future__ import annotations

import functools
import json
import math
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from epiprune.costs.budget import Budget
from epiprune.costs.timing import MAX_PAIR_RATIO_SPREAD, TARGETS, LatencySettings, check_noise_limit
from epiprune.errors import EpipruneError
from epiprune.files import atomic_write_text
from epiprune.models import MODELS, check_model_name, check_model_task, is_import_path
from epiprune.models.user import factory_arguments, import_factory, parse_layer_names, parse_model_kwargs
from epiprune.numerics import AMP_DTYPES
from epiprune.policy.bounds import EPI_AVERAGES, check_at_least, check_epi_average, check_threshold
from epiprune.policy.clock import AUTO
from epiprune.policy.config import PolicyConfig
from epiprune.policy.importance import IMPORTANCES, MAGNITUDE_TAU, TAYLOR_TAU
from epiprune.policy.indicator import INDICATORS
from epiprune.run.config_text import (
    NOISE_LIMIT_OPTION,
    fits,
    int_list,
    parse_epochs,
    parse_noise_limit,
    parse_threshold,
)
from epiprune.run.data import DATASETS
from epiprune.run.defaults import CNN_DEFAULTS, describe, model_defaults

OPTIMIZERS = ("sgd", "adamw")
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
    holdout: int = option(0, help="hold this many training images out as the validation split; the dataset's own "
                          "validation split becomes a test split, evaluated once at the end (--val-subset then sizes "
                          "it) (0: off)")
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
        """Raise EpipruneError naming the first bad value and what is accepted."""
        self._validate_user_input()
        self._validate_model()
        if self.data not in DATASETS:
            raise EpipruneError(f"unknown dataset {self.data!r} (accepted: {', '.join(DATASETS)})")
        self._validate_text()
        INDICATORS.get(self.indicator)  # an unknown name is one line naming the registered ones
        if self.finetune_epochs < 0:
            raise EpipruneError(f"fine-tune epochs {self.finetune_epochs} is negative (accepted: >= 0)")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise EpipruneError(f"warm-up epochs {self.warmup_epochs} is outside [0, {self.epochs})")
        IMPORTANCES.get(self.importance)
        Budget.parse(self.budget)
        if self.latency_target not in TARGETS:
            raise EpipruneError(f"unknown latency target {self.latency_target!r} (accepted: {', '.join(TARGETS)})")
        if self.amp not in AMP_DTYPES:
            raise EpipruneError(f"unknown amp dtype {self.amp!r} (accepted: {', '.join(AMP_DTYPES)})")
        check_noise_limit(self.latency_noise_limit, NOISE_LIMIT_OPTION)
        if self.latency_batch is not None and self.latency_batch < 1:
            raise EpipruneError(f"latency batch {self.latency_batch} is too small (accepted: an integer >= 1)")
        # integer options with a lower bound, named as the message names them (some by their flag); the policy's
        # own settings are checked where the policy checks them (policy/bounds.py), named by their flag here
        for name, value, low in (("epochs", self.epochs, 1), ("batch size", self.batch_size, 1),
                                 ("image size", self.image_size, 8), ("--holdout", self.holdout, 0),
                                 ("--probe-every", self.probe_every, 0)):
            if value < low:
                raise EpipruneError(f"{name} {value} is too small (accepted: an integer >= {low})")
        for field_name, setting in (("epi_window", "window"), ("channel_multiple", "channel_multiple"),
                                    ("epi_peak", "peak"), ("epi_smooth", "smooth"),
                                    ("earlybird_queue", "earlybird_queue")):
            check_at_least(setting, getattr(self, field_name), "--" + field_name.replace("_", "-"))
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise EpipruneError(f"learning rate {self.lr} is not a positive number")
        if self.optimizer not in OPTIMIZERS:
            raise EpipruneError(f"unknown optimizer {self.optimizer!r} (accepted: {', '.join(OPTIMIZERS)})")
        if not 0 <= self.momentum < 1:
            raise EpipruneError(f"--momentum {self.momentum} is outside [0, 1)")
        self._validate_clock()
        self._validate_contradictions()
        if self.epi_every == "epoch" and self.epi_window + 2 > self.epochs and self.prune_at is None and \
                self.indicator != "none":
            raise EpipruneError(f"EPI window {self.epi_window} is too large for {self.epochs} epochs (accepted: a "
                                f"window <= epochs - 2: EPI needs window + 1 dense epochs, then pruned training; "
                                "or --epi-every auto, EPI on the step clock, which probes within epochs)")
        if self.prune_at is not None and not 0 <= self.prune_at < self.total_epochs:
            raise EpipruneError(f"prune-at epoch {self.prune_at:g} is outside 0..{self.total_epochs - 1}")
        if self.epi_threshold != AUTO:
            check_threshold(self.epi_threshold, "--epi-threshold")
        if self.max_dense_epochs is not None and not 0 < self.max_dense_epochs < self.epochs:
            raise EpipruneError(f"max dense epochs {self.max_dense_epochs:g} is outside (0, {self.epochs}) (accepted: "
                                f"1..{self.epochs - 1} on the epoch clock, fractions on the step clock)")
        check_epi_average(self.epi_average)
        if not (self.bn_l1 >= 0 and math.isfinite(self.bn_l1)):
            raise EpipruneError(f"--bn-l1 {self.bn_l1} is not a number >= 0 (accepted: e.g. 1e-4, or 0 for none)")
        if self.data_seed is not None and not 0 <= self.data_seed < 2**32:
            raise EpipruneError(f"--data-seed {self.data_seed} is outside 0..{2**32 - 1}")
        for k in self.keep_checkpoints or []:
            if not 1 <= k <= self.total_epochs:
                raise EpipruneError(f"--keep-checkpoints epoch {k} is outside 1..{self.total_epochs}")
        if self.branch_from is not None:
            if self.indicator in ("none", "earlybird") or self.importance == "random":
                raise EpipruneError(f"--branch-from cannot replay indicator {self.indicator!r} with importance "
                                    f"{self.importance!r} (accepted: indicator epi, earlybird-budget or --prune-at, "
                                    "importance taylor, magnitude or bn)")
            if self.prune_at == 0:
                raise EpipruneError("--branch-from with --prune-at 0 has nothing to branch from (accepted: --prune-at "
                                    ">= 1)")

    def _validate_contradictions(self) -> None:
        """Settings that are each valid but together do not do what they say (issue 23): refused, not ignored."""
        if self.prune_at is not None and self.indicator == "none":
            raise EpipruneError(f"--prune-at {self.prune_at:g} with --indicator none never prunes (accepted: "
                                "--prune-at with another --indicator, which it then replaces, or --indicator none "
                                "alone for a dense run)")
        sgd_momentum = next(f.default for f in fields(self) if f.name == "momentum")
        if self.optimizer == "adamw" and self.momentum != sgd_momentum:
            raise EpipruneError(f"--momentum {self.momentum} is SGD's and AdamW does not use it (accepted: --momentum "
                                "with --optimizer sgd, or AdamW without --momentum)")

    def _validate_model(self) -> None:
        """The model name, its kwargs and the ignored layers' form; a user factory is imported here (it is named
        by the caller) and its signature checked against the kwargs. Building it needs the data: see
        run.network.build_network."""
        try:
            json.dumps(self.model_kwargs, allow_nan=False)  # recorded in the run's files: plain data only
        except (TypeError, ValueError) as e:
            raise EpipruneError(f"model_kwargs {self.model_kwargs!r} is not JSON data: {e} (accepted: a dict of "
                                "numbers, strings, booleans, null, lists and dicts)") from None
        if not isinstance(self.model_kwargs, dict):
            raise EpipruneError(f"model_kwargs {self.model_kwargs!r} is not a dict (accepted: a JSON object)")
        if not isinstance(self.ignore_layers, list) or not all(isinstance(n, str) and n for n in self.ignore_layers):
            raise EpipruneError(f"ignore_layers {self.ignore_layers!r} is not a list of module names (accepted: "
                                "e.g. ['conv1', 'layers.0.conv1'])")
        check_model_name(self.model, self.model_kwargs)
        if is_import_path(self.model):
            factory_arguments(import_factory(self.model), self.model, self.model_kwargs, 3, 10)

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

    def _validate_clock(self) -> None:
        """--epi-every's form, and the settings that mean something on one clock only."""
        every = self.epi_every
        if every not in ("epoch", "auto") and not (every.isdigit() and int(every) >= 2):
            raise EpipruneError(f"--epi-every {every!r} is not a clock (accepted: epoch, auto, or a number of "
                                "optimizer steps >= 2)")
        if every == "epoch":
            if self.epi_threshold == AUTO:
                raise EpipruneError("--epi-threshold auto needs the step clock (accepted: --epi-every auto or a "
                                    "number of steps, or a threshold in (0, 1])")
            for flag, value in (("--min-dense-epochs", self.min_dense_epochs),
                                ("--max-dense-epochs", self.max_dense_epochs), ("--prune-at", self.prune_at)):
                if value is not None and value != int(value):
                    raise EpipruneError(f"{flag} {value:g} is not a whole number of epochs (accepted: fractions "
                                        "on the step clock, --epi-every auto or a number of steps)")
        elif self.probe_every:
            raise EpipruneError(f"--probe-every {self.probe_every} is the epoch clock's extra probing; on the step "
                                "clock --record-scores records every probe (accepted: --epi-every epoch with it)")
        elif self.epi_threshold == AUTO and self.importance != "taylor":
            raise EpipruneError(f"--epi-threshold auto needs gradient importance, not {self.importance!r} "
                                "(accepted: --importance taylor, or a threshold in (0, 1])")

    def latency_settings(self) -> LatencySettings:
        """What a latency table for this run times: its target, batch, memory format and autocast dtype; and the
        noise limit its build must meet."""
        return LatencySettings(target=self.latency_target, batch_size=self.latency_batch or self.batch_size,
                               channels_last=self.channels_last, amp=self.amp, noise_limit=self.latency_noise_limit)

    def _validate_text(self) -> None:
        """The model fits the data (a language model for --data text, an image model otherwise); text's settings."""
        check_model_task(self.model, "text" if self.data == "text" else "image", self.data)
        if self.data != "text":
            return
        if self.seq_len < 2:
            raise EpipruneError(f"--seq-len {self.seq_len} is too small (accepted: an integer >= 2)")
        if self.holdout:
            raise EpipruneError(f"--holdout {self.holdout} is not supported with --data text (accepted: no --holdout; "
                                "the validation split is each document's last 10%)")

    def _validate_user_input(self) -> None:
        """Checks that come before the others, so that a bad value is blamed on its own option."""
        if self.epochs < 1:
            raise EpipruneError(f"--epochs {self.epochs} is too small (accepted: an integer >= 1)")
        for flag, value in (("--train-subset", self.train_subset), ("--val-subset", self.val_subset)):
            if value is not None and value < 1:
                raise EpipruneError(f"{flag} {value} is too small (accepted: a number of images >= 1, or leave "
                                    "it out to use them all)")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise EpipruneError(f"--weight-decay {self.weight_decay} is not a number >= 0 (accepted: e.g. 5e-4, "
                                "or 0 for none)")
        if not (self.clip_grad_norm >= 0 and math.isfinite(self.clip_grad_norm)):
            raise EpipruneError(f"--clip-grad-norm {self.clip_grad_norm} is not a number >= 0 (accepted: e.g. 1.0, "
                                "or 0 for off)")
        if self.data_dir is not None and self.data == "builtin":
            raise EpipruneError(f"--data-dir {self.data_dir} is given but --data is builtin, which needs no folder "
                                f"(accepted: --data {', '.join(d for d in DATASETS if d != 'builtin')} with "
                                "--data-dir, or no --data-dir)")
        if not str(self.out).strip():
            raise EpipruneError("--out is empty (accepted: a folder name, e.g. runs/train)")
        if not 0 <= self.seed < 2**32:
            raise EpipruneError(f"--seed {self.seed} is outside 0..{2**32 - 1}")
        if self.init_batches < 1:
            raise EpipruneError(f"--init-batches {self.init_batches} is too small (accepted: an integer >= 1)")
        check_at_least("min_dense_epochs", self.min_dense_epochs, "--min-dense-epochs")
        if not (self.dist_timeout > 0 and math.isfinite(self.dist_timeout)):
            raise EpipruneError(f"--dist-timeout {self.dist_timeout} is not a positive number of seconds")

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


