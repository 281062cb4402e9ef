"""`LMModule`: the thin Lightning shell that trains any model of the family with next-token cross-entropy.

It is built from plain data (dicts of the config dataclasses), so a checkpoint alone rebuilds the run.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import lightning as L
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric

from lm_lab.models import GPT, ModelConfig, flops_per_token
from lm_lab.optim import OptimizerConfig, SchedulerConfig, build_optimizer, lr_multiplier


def _as(cls, value):
    return value if isinstance(value, cls) else cls(**value)


class LMModule(L.LightningModule):
    def __init__(
        self,
        model: ModelConfig | dict,
        optimizer: OptimizerConfig | dict,
        scheduler: SchedulerConfig | dict,
        max_steps: int,
    ):
        super().__init__()
        self.model_config = _as(ModelConfig, model)
        self.optimizer_config = _as(OptimizerConfig, optimizer)
        self.scheduler_config = _as(SchedulerConfig, scheduler)
        self.max_steps = max_steps
        # plain dicts only: checkpoints then load with torch.load(weights_only=True)
        self.save_hyperparameters(
            {
                "model": asdict(self.model_config),
                "optimizer": asdict(self.optimizer_config),
                "scheduler": asdict(self.scheduler_config),
                "max_steps": max_steps,
            }
        )
        self.model = GPT(self.model_config)
        self.val_loss = MeanMetric()
        self.last_val_step: int | None = None  # global step of the last (non-sanity) validation

    def flops_per_token(self, seq_len: int) -> int:
        return flops_per_token(self.model_config, seq_len)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of a (B, T + 1) batch of token windows."""
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T) inputs and targets
        logits = self.model(x)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_start(self) -> None:
        check = getattr(self.trainer.datamodule, "check_position", None)
        if check is not None:  # the data must resume exactly where the restored step left it
            check(self.global_step)

    def on_train_batch_end(self, outputs, batch: torch.Tensor, batch_idx: int) -> None:
        # Lightning validates on the interval or when told to stop, not at max_steps between intervals: ask it to
        # stop at the last step, so the final weights are scored inside fit, logged and checkpointed (last/best).
        if self.global_step >= self.max_steps:
            self.trainer.should_stop = True

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.val_loss.update(self.loss(batch), weight=batch.shape[0] * (batch.shape[1] - 1))

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # token-weighted mean over the whole validation set, all ranks
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/ppl", torch.exp(loss))
        if not self.trainer.sanity_checking:
            self.last_val_step = self.global_step

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Clip here rather than with Trainer(gradient_clip_val): Lightning's AMP plugin refuses that with fused
        # AdamW. Gradients are unscaled here: bf16 has no loss scaling, and with fp16 the optimizer is not fused
        # (see configure_optimizers), so Lightning unscales before this hook.
        clip = self.optimizer_config.grad_clip or math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), clip)
        self.log("train/grad_norm", norm)
        self.log("train/lr", optimizer.param_groups[0]["lr"])  # the LR this step applies

    def configure_optimizers(self):
        # Fused AdamW unscales fp16 gradients inside step(), after this module clips them; so no fusing with a
        # GradScaler (16-mixed), where clipping must see unscaled gradients.
        fused = self.device.type == "cuda" and self.trainer.precision != "16-mixed"
        optimizer = build_optimizer(self.model, self.optimizer_config, fused=fused)
        scheduler = LambdaLR(optimizer, lr_multiplier(self.scheduler_config, self.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
