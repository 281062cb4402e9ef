"""Weight averaging (EMA or SWA) of the weights during training, evaluated beside the raw weights.

Hägele et al. 2024 §5: averaging the weights of the stable (constant-LR) phase gets close to a cooldown's
quality without one. This is Lightning's `WeightAveraging` (torch's `AveragedModel` underneath) with two
changes for research use: validation scores both models (the raw weights as `val/loss`, the average as
`val/loss_ema` or `val/loss_swa`) instead of swapping one for the other, and the run's weights stay the raw
ones at the end (the average is saved in every checkpoint under
`averaged_state_dict_ema` or `averaged_state_dict_swa` and restored on resume).
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_avg_fn
from torchmetrics import MeanMetric

from lm_lab.optim.averaging import AveragingConfig


class AveragedWeights(WeightAveraging):
    settings = AveragingConfig  # lm_lab.config checks a configured one with it before any work

    def __init__(self, kind: str = "ema", decay: float = 0.999, start_step: int = 0, every_n_steps: int = 1):
        AveragingConfig(kind, decay, start_step, every_n_steps)  # lm_lab.config checks a configured one first
        # EMA: w <- decay * w + (1 - decay) * theta; SWA: the equal-weight mean of every update averaged in
        super().__init__(use_buffers=True, **({"avg_fn": get_ema_avg_fn(decay)} if kind == "ema" else {}))
        self.kind, self.start_step, self.every_n_steps = kind, start_step, every_n_steps
        self._val_loss = MeanMetric()

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return (
            step_idx is not None
            and step_idx >= self.start_step
            and (step_idx - self.start_step) % self.every_n_steps == 0
        )

    @property
    def state_key(self) -> str:  # an EMA and an SWA may run side by side
        return self._generate_state_key(kind=self.kind)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning's WeightAveraging builds a module with configure_model itself, warning that the average is
        # not sharded; the lab's module builds there (for FSDP), and the average is a full copy by design
        configure = getattr(pl_module, "configure_model", None)
        if stage == "fit" and callable(configure):
            configure()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*WeightAveraging callback with a model that overrides.*")
            super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning builds the average in setup(), before the strategy moves the model to its device
        if self._average_model is not None:
            self._average_model.to(pl_module.device)

    # -- evaluate both instead of swapping ------------------------------------------------------------------

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_loss = self._val_loss.to(pl_module.device)
        self._val_loss.reset()

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._average_model is None or trainer.sanity_checking:
            return
        averaged = self._average_model.module
        averaged.eval()
        with trainer.precision_plugin.forward_context():  # the same precision as the raw model's validation
            loss = averaged.loss(batch)
        self._val_loss.update(loss, weight=batch.shape[0] * (batch.shape[1] - 1))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is None or trainer.sanity_checking or self._val_loss.update_count == 0:
            return
        pl_module.log(f"val/loss_{self.kind}", self._val_loss.compute())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # keep the raw weights; the average is in the checkpoints

    # -- checkpoints: the raw weights stay the run's weights -----------------------------------------------

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:
            checkpoint[f"averaged_state_dict_{self.kind}"] = self._average_model.state_dict()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        key = f"averaged_state_dict_{self.kind}"
        if self._average_model is not None and key in checkpoint:
            self._average_model.load_state_dict(checkpoint[key])
