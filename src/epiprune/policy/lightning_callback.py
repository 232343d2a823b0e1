"""PyTorch Lightning callback (optional extra: `pip install 'epiprune[lightning]'`).

    trainer = lightning.Trainer(max_epochs=30, callbacks=[EarlyPruningCallback(torch.zeros(1, 3, 32, 32),
                                                                               Budget("flops", 0.5))])

The callback builds an EarlyPruningPolicy on the LightningModule when training starts, accumulates importance after
every backward and decides at the end of every training epoch, or, on the step clock (`epi_every=N`; the epoch's
length is taken from the trainer when `steps_per_epoch` is not given), every N steps right after the backward;
when it prunes, the module and the (first) optimizer are updated in place. Tested here with one device; under a
multi-device strategy the DDP wrapper would have to be rebuilt after pruning, which Lightning does not expose: use
`epiprune train` under torchrun instead.
Resuming a Lightning checkpoint taken after pruning needs the pruned shapes first: untested.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from epiprune.costs.budget import Budget
from epiprune.policy.early_pruning import EarlyPruningPolicy


class EarlyPruningCallback(Callback):
    """Prune the LightningModule at the epoch EPI picks. Keyword arguments go to EarlyPruningPolicy."""

    def __init__(self, example_inputs: torch.Tensor, budget: Budget | None = None, **policy_kwargs: Any) -> None:
        self.example_inputs = example_inputs
        self.budget = budget or Budget()
        self.policy_kwargs = policy_kwargs
        self.policy: EarlyPruningPolicy | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # here, not at on_fit_start: the training batches per epoch (the step clock's epoch) are known from now on
        if self.policy is None:
            example = self.example_inputs.to(pl_module.device)
            kwargs = dict(self.policy_kwargs)
            if kwargs.get("epi_every") and kwargs.get("steps_per_epoch") is None:
                kwargs["steps_per_epoch"] = int(trainer.num_training_batches)
            self.policy = EarlyPruningPolicy(pl_module, example, self.budget, **kwargs)

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.policy.step(optimizer=trainer.optimizers[0]):
            self._log_pruned(pl_module)

    def _log_pruned(self, pl_module: LightningModule) -> None:
        flops, params = self.policy.count()
        pl_module.log_dict({"epiprune/flops": float(flops), "epiprune/params": float(params)})

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.policy.end_epoch(trainer.optimizers[0]):
            self._log_pruned(pl_module)
        record = self.policy.history[-1] if self.policy.history else None
        if record is not None and record.epoch == self.policy.epoch and record.epi is not None:
            pl_module.log("epiprune/epi", record.epi)
