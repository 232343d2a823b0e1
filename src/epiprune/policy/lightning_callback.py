"""PyTorch Lightning callback (optional extra: `pip install 'epiprune[lightning]'`).

    trainer = lightning.Trainer(max_epochs=30, callbacks=[EarlyPruningCallback(torch.zeros(1, 3, 32, 32),
                                                                               Budget("flops", 0.5))])

The callback builds an EarlyPruningPolicy on the LightningModule when fitting starts, accumulates importance after
every backward and decides at the end of every training epoch; when it prunes, the module and the (first)
optimizer are updated in place. Tested here with one device; under a multi-device strategy the DDP wrapper would
have to be rebuilt after pruning, which Lightning does not expose: use `epiprune train` under torchrun instead.
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

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.policy is None:
            example = self.example_inputs.to(pl_module.device)
            self.policy = EarlyPruningPolicy(pl_module, example, self.budget, **self.policy_kwargs)

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.policy.step()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.policy.end_epoch(trainer.optimizers[0]):
            flops, params = self.policy.count()
            pl_module.log_dict({"epiprune/flops": float(flops), "epiprune/params": float(params)})
        record = self.policy.history[-1] if self.policy.history else None
        if record is not None and record.epoch == self.policy.epoch and record.epi is not None:
            pl_module.log("epiprune/epi", record.epi)
