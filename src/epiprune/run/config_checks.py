"""The checks of a TrainConfig (TrainConfig.validate): each raises EpipruneError with one line naming the bad value
and what is accepted. Apart from config.py, which declares the settings, so that each stays small; the policy's own
ranges are checked where the policy checks them (policy/bounds.py) and only named by their flag here."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from typing import TYPE_CHECKING

from epiprune.costs.budget import Budget
from epiprune.costs.timing import TARGETS, check_noise_limit
from epiprune.errors import EpipruneError
from epiprune.models import check_model_name, check_model_task, is_import_path
from epiprune.models.user import factory_arguments, import_factory
from epiprune.numerics import AMP_DTYPES
from epiprune.policy.bounds import check_at_least, check_epi_average, check_threshold
from epiprune.policy.clock import AUTO
from epiprune.policy.importance import IMPORTANCES
from epiprune.policy.indicator import INDICATORS
from epiprune.run.config_text import NOISE_LIMIT_OPTION
from epiprune.run.data import DATASETS

if TYPE_CHECKING:
    from epiprune.run.config import TrainConfig

OPTIMIZERS = ("sgd", "adamw")


def validate_config(cfg: TrainConfig) -> None:
    """Raise EpipruneError naming the first bad value of `cfg` and what is accepted (TrainConfig.validate)."""
    _check_user_input(cfg)
    _check_model(cfg)
    if cfg.data not in DATASETS:
        raise EpipruneError(f"unknown dataset {cfg.data!r} (accepted: {', '.join(DATASETS)})")
    _check_text(cfg)
    INDICATORS.get(cfg.indicator)  # an unknown name is one line naming the registered ones
    if cfg.finetune_epochs < 0:
        raise EpipruneError(f"fine-tune epochs {cfg.finetune_epochs} is negative (accepted: >= 0)")
    if not 0 <= cfg.warmup_epochs < cfg.epochs:
        raise EpipruneError(f"warm-up epochs {cfg.warmup_epochs} is outside [0, {cfg.epochs})")
    IMPORTANCES.get(cfg.importance)
    Budget.parse(cfg.budget)
    if cfg.latency_target not in TARGETS:
        raise EpipruneError(f"unknown latency target {cfg.latency_target!r} (accepted: {', '.join(TARGETS)})")
    if cfg.amp not in AMP_DTYPES:
        raise EpipruneError(f"unknown amp dtype {cfg.amp!r} (accepted: {', '.join(AMP_DTYPES)})")
    check_noise_limit(cfg.latency_noise_limit, NOISE_LIMIT_OPTION)
    if cfg.latency_batch is not None and cfg.latency_batch < 1:
        raise EpipruneError(f"latency batch {cfg.latency_batch} is too small (accepted: an integer >= 1)")
    # integer options with a lower bound, named as the message names them (some by their flag); the policy's
    # own settings are checked where the policy checks them (policy/bounds.py), named by their flag here
    for name, value, low in (("epochs", cfg.epochs, 1), ("batch size", cfg.batch_size, 1),
                             ("image size", cfg.image_size, 8), ("--holdout", cfg.holdout, 0),
                             ("--probe-every", cfg.probe_every, 0)):
        if value < low:
            raise EpipruneError(f"{name} {value} is too small (accepted: an integer >= {low})")
    for field_name, setting in (("epi_window", "window"), ("channel_multiple", "channel_multiple"),
                                ("epi_peak", "peak"), ("epi_smooth", "smooth"),
                                ("earlybird_queue", "earlybird_queue")):
        check_at_least(setting, getattr(cfg, field_name), "--" + field_name.replace("_", "-"))
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise EpipruneError(f"learning rate {cfg.lr} is not a positive number")
    if cfg.optimizer not in OPTIMIZERS:
        raise EpipruneError(f"unknown optimizer {cfg.optimizer!r} (accepted: {', '.join(OPTIMIZERS)})")
    if not 0 <= cfg.momentum < 1:
        raise EpipruneError(f"--momentum {cfg.momentum} is outside [0, 1)")
    _check_clock(cfg)
    _check_contradictions(cfg)
    _check_schedule(cfg)


def _check_schedule(cfg: TrainConfig) -> None:
    """The prune points, the fallback and the checkpoints against the schedule; what --branch-from can replay."""
    if cfg.epi_every == "epoch" and cfg.epi_window + 2 > cfg.epochs and cfg.prune_at is None and \
            cfg.indicator != "none":
        raise EpipruneError(f"EPI window {cfg.epi_window} is too large for {cfg.epochs} epochs (accepted: a "
                            f"window <= epochs - 2: EPI needs window + 1 dense epochs, then pruned training; "
                            "or --epi-every auto, EPI on the step clock, which probes within epochs)")
    if cfg.prune_at is not None and not 0 <= cfg.prune_at < cfg.total_epochs:
        raise EpipruneError(f"prune-at epoch {cfg.prune_at:g} is outside 0..{cfg.total_epochs - 1}")
    if cfg.epi_threshold != AUTO:
        check_threshold(cfg.epi_threshold, "--epi-threshold")
    if cfg.max_dense_epochs is not None and not 0 < cfg.max_dense_epochs < cfg.epochs:
        raise EpipruneError(f"max dense epochs {cfg.max_dense_epochs:g} is outside (0, {cfg.epochs}) (accepted: "
                            f"1..{cfg.epochs - 1} on the epoch clock, fractions on the step clock)")
    check_epi_average(cfg.epi_average)
    if not (cfg.bn_l1 >= 0 and math.isfinite(cfg.bn_l1)):
        raise EpipruneError(f"--bn-l1 {cfg.bn_l1} is not a number >= 0 (accepted: e.g. 1e-4, or 0 for none)")
    if cfg.data_seed is not None and not 0 <= cfg.data_seed < 2**32:
        raise EpipruneError(f"--data-seed {cfg.data_seed} is outside 0..{2**32 - 1}")
    for k in cfg.keep_checkpoints or []:
        if not 1 <= k <= cfg.total_epochs:
            raise EpipruneError(f"--keep-checkpoints epoch {k} is outside 1..{cfg.total_epochs}")
    if cfg.branch_from is not None:
        if cfg.indicator in ("none", "earlybird") or cfg.importance == "random":
            raise EpipruneError(f"--branch-from cannot replay indicator {cfg.indicator!r} with importance "
                                f"{cfg.importance!r} (accepted: indicator epi, earlybird-budget or --prune-at, "
                                "importance taylor, magnitude or bn)")
        if cfg.prune_at == 0:
            raise EpipruneError("--branch-from with --prune-at 0 has nothing to branch from (accepted: --prune-at "
                                ">= 1)")


def _check_contradictions(cfg: TrainConfig) -> None:
    """Settings that are each valid but together do not do what they say (issue 23): refused, not ignored."""
    if cfg.prune_at is not None and cfg.indicator == "none":
        raise EpipruneError(f"--prune-at {cfg.prune_at:g} with --indicator none never prunes (accepted: "
                            "--prune-at with another --indicator, which it then replaces, or --indicator none "
                            "alone for a dense run)")
    sgd_momentum = next(f.default for f in fields(cfg) if f.name == "momentum")
    if cfg.optimizer == "adamw" and cfg.momentum != sgd_momentum:
        raise EpipruneError(f"--momentum {cfg.momentum} is SGD's and AdamW does not use it (accepted: --momentum "
                            "with --optimizer sgd, or AdamW without --momentum)")


def _check_model(cfg: TrainConfig) -> None:
    """The model name, its kwargs and the ignored layers' form; a user factory is imported here (it is named
    by the caller) and its signature checked against the kwargs. Building it needs the data: see
    run.network.build_network."""
    try:
        json.dumps(cfg.model_kwargs, allow_nan=False)  # recorded in the run's files: plain data only
    except (TypeError, ValueError) as e:
        raise EpipruneError(f"model_kwargs {cfg.model_kwargs!r} is not JSON data: {e} (accepted: a dict of "
                            "numbers, strings, booleans, null, lists and dicts)") from None
    if not isinstance(cfg.model_kwargs, dict):
        raise EpipruneError(f"model_kwargs {cfg.model_kwargs!r} is not a dict (accepted: a JSON object)")
    if not isinstance(cfg.ignore_layers, list) or not all(isinstance(n, str) and n for n in cfg.ignore_layers):
        raise EpipruneError(f"ignore_layers {cfg.ignore_layers!r} is not a list of module names (accepted: "
                            "e.g. ['conv1', 'layers.0.conv1'])")
    check_model_name(cfg.model, cfg.model_kwargs)
    if is_import_path(cfg.model):
        factory_arguments(import_factory(cfg.model), cfg.model, cfg.model_kwargs, 3, 10)


def _check_clock(cfg: TrainConfig) -> None:
    """--epi-every's form, and the settings that mean something on one clock only."""
    every = cfg.epi_every
    if every not in ("epoch", "auto") and not (every.isdigit() and int(every) >= 2):
        raise EpipruneError(f"--epi-every {every!r} is not a clock (accepted: epoch, auto, or a number of "
                            "optimizer steps >= 2)")
    if every == "epoch":
        if cfg.epi_threshold == AUTO:
            raise EpipruneError("--epi-threshold auto needs the step clock (accepted: --epi-every auto or a "
                                "number of steps, or a threshold in (0, 1])")
        for flag, value in (("--min-dense-epochs", cfg.min_dense_epochs),
                            ("--max-dense-epochs", cfg.max_dense_epochs), ("--prune-at", cfg.prune_at)):
            if value is not None and value != int(value):
                raise EpipruneError(f"{flag} {value:g} is not a whole number of epochs (accepted: fractions "
                                    "on the step clock, --epi-every auto or a number of steps)")
    elif cfg.probe_every:
        raise EpipruneError(f"--probe-every {cfg.probe_every} is the epoch clock's extra probing; on the step "
                            "clock --record-scores records every probe (accepted: --epi-every epoch with it)")
    elif cfg.epi_threshold == AUTO and cfg.importance != "taylor":
        raise EpipruneError(f"--epi-threshold auto needs gradient importance, not {cfg.importance!r} "
                            "(accepted: --importance taylor, or a threshold in (0, 1])")


def _check_text(cfg: TrainConfig) -> None:
    """The model fits the data (a language model for --data text, an image model otherwise); text's settings."""
    check_model_task(cfg.model, "text" if cfg.data == "text" else "image", cfg.data)
    if cfg.data != "text":
        return
    if cfg.seq_len < 2:
        raise EpipruneError(f"--seq-len {cfg.seq_len} is too small (accepted: an integer >= 2)")


def _check_user_input(cfg: TrainConfig) -> None:
    """Checks that come before the others, so that a bad value is blamed on its own option."""
    if cfg.epochs < 1:
        raise EpipruneError(f"--epochs {cfg.epochs} is too small (accepted: an integer >= 1)")
    for flag, value in (("--train-subset", cfg.train_subset), ("--val-subset", cfg.val_subset)):
        if value is not None and value < 1:
            raise EpipruneError(f"{flag} {value} is too small (accepted: a number of images >= 1, or leave "
                                "it out to use them all)")
    if not (cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay)):
        raise EpipruneError(f"--weight-decay {cfg.weight_decay} is not a number >= 0 (accepted: e.g. 5e-4, "
                            "or 0 for none)")
    if not (cfg.clip_grad_norm >= 0 and math.isfinite(cfg.clip_grad_norm)):
        raise EpipruneError(f"--clip-grad-norm {cfg.clip_grad_norm} is not a number >= 0 (accepted: e.g. 1.0, "
                            "or 0 for off)")
    if cfg.data_dir is not None and cfg.data == "builtin":
        raise EpipruneError(f"--data-dir {cfg.data_dir} is given but --data is builtin, which needs no folder "
                            f"(accepted: --data {', '.join(d for d in DATASETS if d != 'builtin')} with "
                            "--data-dir, or no --data-dir)")
    if not str(cfg.out).strip():
        raise EpipruneError("--out is empty (accepted: a folder name, e.g. runs/train)")
    if not 0 <= cfg.seed < 2**32:
        raise EpipruneError(f"--seed {cfg.seed} is outside 0..{2**32 - 1}")
    if cfg.init_batches < 1:
        raise EpipruneError(f"--init-batches {cfg.init_batches} is too small (accepted: an integer >= 1)")
    check_at_least("min_dense_epochs", cfg.min_dense_epochs, "--min-dense-epochs")
    if not (cfg.dist_timeout > 0 and math.isfinite(cfg.dist_timeout)):
        raise EpipruneError(f"--dist-timeout {cfg.dist_timeout} is not a positive number of seconds")
