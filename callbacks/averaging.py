"""Weight averaging (EMA, SWA or windowed SWA) of the weights during training, evaluated beside the raw weights.

Hägele et al. 2024 §5: averaging the weights of the stable (constant-LR) phase gets close to a cooldown's
quality without one. This is Lightning's `WeightAveraging` (torch's `AveragedModel` underneath) with two
changes for research use: validation scores both models (the raw weights as `val/loss`, the average as
`val/loss_ema` or `val/loss_swa`, or `val/loss_<label>`) instead of swapping one for the other, and the run's
weights stay the raw ones at the end (the average is saved in every checkpoint under
`averaged_state_dict_<label>` and restored on resume).

With `horizon`, SWA is their code's windowed SWA (`lm_lab.optim.averaging.WindowedSWA`): the mean restarts
every `horizon` steps and validation scores the latest completed window (or the mean of the last `windows`);
before the first window completes nothing is scored, as in their code. The open window and the completed
ones are saved in every checkpoint under `averaged_windows_<label>`, so a resumed run continues them exactly.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_avg_fn
from torchmetrics import MeanMetric

from lm_lab.optim.averaging import AveragingConfig, WindowedSWA


class AveragedWeights(WeightAveraging):
    settings = AveragingConfig  # lm_lab.config checks a configured one with it before any work

    def __init__(
        self,
        kind: str = "ema",
        decay: float = 0.999,
        start_step: int = 0,
        every_n_steps: int = 1,
        horizon: int | None = None,
        windows: int = 1,
        label: str | None = None,
    ):
        AveragingConfig(kind, decay, start_step, every_n_steps, horizon, windows, label)  # lm_lab.config checks first
        # EMA: w <- decay * w + (1 - decay) * theta; SWA: the equal-weight mean of every update averaged in
        super().__init__(use_buffers=True, **({"avg_fn": get_ema_avg_fn(decay)} if kind == "ema" else {}))
        self.kind, self.start_step, self.every_n_steps = kind, start_step, every_n_steps
        self.label = label or kind
        # windowed SWA: the windows' means live here; the AveragedModel holds the scored mean, for validation
        self.windowed = WindowedSWA(horizon, every_n_steps, windows) if horizon is not None else None
        self._val_loss = MeanMetric()

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return (
            step_idx is not None
            and step_idx >= self.start_step
            and (step_idx - self.start_step) % self.every_n_steps == 0
        )

    @property
    def state_key(self) -> str:  # an EMA and an SWA may run side by side (the key is the kind's when unlabelled)
        return self._generate_state_key(kind=self.label)

    @property
    def scores(self) -> bool:
        """Whether there is an average to score: windowed SWA has none until its first window completes."""
        return self._average_model is not None and (self.windowed is None or bool(self.windowed.completed))

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
        if self.windowed is not None:
            self.windowed.to(pl_module.device)

    # -- windowed SWA: every step goes to the windows; a completed one becomes the scored average -------------

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self.windowed is None:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step <= self._latest_update_step:  # a micro-batch inside gradient accumulation
            return
        self._latest_update_step = trainer.global_step
        t = trainer.global_step - 1 - self.start_step  # the step just taken, counted from the averaging's start
        if t >= 0 and self.windowed.update(t, _weights(pl_module)):
            scored = self.windowed.scored()
            for name, tensor in _weights(self._average_model.module).items():
                tensor.detach().copy_(scored[name])
            samples = len(self.windowed.completed) * self.windowed.horizon // self.windowed.interval
            self._average_model.n_averaged.fill_(samples)

    # -- evaluate both instead of swapping ------------------------------------------------------------------

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_loss = self._val_loss.to(pl_module.device)
        self._val_loss.reset()

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self.scores or trainer.sanity_checking:
            return
        averaged = self._average_model.module
        averaged.eval()
        with trainer.precision_plugin.forward_context():  # the same precision as the raw model's validation
            loss = averaged.loss(batch)
        self._val_loss.update(loss, weight=batch.shape[0] * (batch.shape[1] - 1))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.scores or trainer.sanity_checking or self._val_loss.update_count == 0:
            return
        pl_module.log(f"val/loss_{self.label}", self._val_loss.compute())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # keep the raw weights; the average is in the checkpoints

    # -- checkpoints: the raw weights stay the run's weights -----------------------------------------------

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:
            checkpoint[f"averaged_state_dict_{self.label}"] = self._average_model.state_dict()
        if self.windowed is not None:
            checkpoint[f"averaged_windows_{self.label}"] = self.windowed.state_dict()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        key = f"averaged_state_dict_{self.label}"
        if self._average_model is not None and key in checkpoint:
            self._average_model.load_state_dict(checkpoint[key])
        windows = checkpoint.get(f"averaged_windows_{self.label}")
        if self.windowed is not None and windows is not None:
            self.windowed.load_state_dict(windows)
            if self._average_model is not None:  # on the average's device (after on_fit_start under FSDP)
                self.windowed.to(next(self._average_model.parameters()).device)


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What an average holds: the parameters and buffers (as `AveragedModel(use_buffers=True)` averages them)."""
    return dict(itertools.chain(module.named_parameters(), module.named_buffers()))
