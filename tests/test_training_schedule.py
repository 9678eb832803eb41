"""The learning-rate schedule's length is counted without the Trainer's own training loader
(so that a resumed run's loader gets its saved position back), and equals what Lightning
estimates once that loader exists."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from bertzoo.training import schedule_length


class Compare(L.Callback):
    """Records both counts once the Trainer has built its loader, then stops the run."""

    def on_train_start(self, trainer, pl_module):
        self.counts = (schedule_length(trainer, pl_module), trainer.estimated_stepping_batches)
        raise StopIteration


@pytest.mark.parametrize("options", [
    {"max_epochs": 3},
    {"max_epochs": 2, "accumulate_grad_batches": 5},
    {"max_epochs": 2, "limit_train_batches": 0.3},
    {"max_epochs": 2, "limit_train_batches": 7},
    {"max_epochs": 4, "max_steps": 100},
    {"max_steps": 10},
], ids=["epochs", "accumulate", "limit-fraction", "limit-count", "steps-first", "steps-only"])
def test_schedule_length_is_lightnings_estimate(options):
    compare = Compare()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[compare], **options)
    with pytest.raises(StopIteration):
        trainer.fit(BoringModel())  # 64 training batches an epoch
    ours, lightnings = compare.counts
    assert ours == lightnings


@pytest.mark.parametrize("options", [{"max_steps": 3}, {"max_epochs": 1, "max_steps": 3}],
                         ids=["steps", "epochs"])
def test_the_trainer_builds_its_loader_after_the_schedule_is_known(options):
    """The Trainer builds its own loader once, after `configure_optimizers` (where resuming
    restores its position); training by steps alone builds no other."""
    class Counting(BoringModel):
        loaders = 0

        def train_dataloader(self):
            Counting.loaders += 1
            return super().train_dataloader()

        def configure_optimizers(self):
            self.length = schedule_length(self.trainer, self)
            self.loaders_before = Counting.loaders
            return super().configure_optimizers()

    model = Counting()
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, **options).fit(model)
    assert model.length == 3
    assert model.loaders_before == (0 if "max_epochs" not in options else 1)
    assert Counting.loaders == model.loaders_before + 1
