import pytest
import torch

pytest.importorskip("lightning")

import lightning

from epiprune import Budget, build_model
from epiprune.policy.lightning_callback import EarlyPruningCallback


class Classifier(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = build_model("resnet20", 1, 10)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _index):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def test_callback_prunes_inside_a_lightning_fit(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(48, 1, 16, 16), torch.randint(0, 10, (48,)))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    callback = EarlyPruningCallback(torch.zeros(1, 1, 16, 16), Budget("flops", 0.5), window=1, max_dense_epochs=2)
    trainer = lightning.Trainer(max_epochs=4, callbacks=[callback], accelerator="cpu", logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=tmp_path)
    module = Classifier()
    trainer.fit(module, loader)
    policy = callback.policy
    assert policy.pruned and policy.prune_epoch == 2
    assert policy.count()[0] <= 0.51 * policy.dense_flops
    assert module.net.layers[0].conv1.weight.shape[0] < 16  # the module Lightning trained really shrank
    assert trainer.current_epoch == 4
