"""Tokens seen, tokens per second and (where the device's peak is known) MFU, over Lightning's `Throughput`."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput

from callbacks.cadence import logs_this_step
from lm_lab.devices import peak_flops


class TokenThroughput(L.Callback):
    """Logs `train/tokens`, `train/epoch` (when the data module knows it) and `throughput/{tokens_per_sec, tokens_per_sec_per_device, flops_per_sec_per_device, mfu}`.

    Measured at logging steps only (after gradient accumulation, validation time excluded), over a rolling
    window of `window_size` logging steps; CUDA is synchronised only then, so it does not slow the run it
    measures. Tokens seen are derived from the global step, so they stay right after a resume.
    """

    def __init__(self, window_size: int = 5):
        self.window_size = window_size
        self.clock = time.perf_counter  # seconds; tests replace it with a mock clock
        self.tokens_per_step = 0
        self.flops_per_token = 0
        self.peak_tflops: float | None = None  # per device, instead of the device table (fit: budget.peak_tflops)
        self._elapsed, self._t0, self._last_step = 0.0, self.clock(), 0
        self._first_step, self._final = 0, None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        peak = peak_flops(trainer.strategy.root_device, trainer.precision, self.peak_tflops)  # dense peaks
        self._throughput = Throughput(available_flops=peak, world_size=trainer.world_size, window_size=self.window_size)
        self._elapsed, self._t0, self._last_step = 0.0, self.clock(), trainer.global_step
        self._first_step, self._final = trainer.global_step, None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self.tokens_per_step:
            micro, self.seq_len = batch.shape[0], batch.shape[1] - 1
            self.tokens_per_step = micro * self.seq_len * trainer.accumulate_grad_batches * trainer.world_size
            self.flops_per_token = pl_module.flops_per_token(self.seq_len)
        step = trainer.global_step
        if trainer.fit_loop._should_accumulate():
            return
        if not logs_this_step(trainer):
            return
        if step == self._last_step:
            return
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        world = trainer.world_size
        tokens_per_device = step * self.tokens_per_step // world  # Throughput counts per device
        self._throughput.update(
            time=self._elapsed + self.clock() - self._t0,
            batches=step,
            samples=tokens_per_device // self.seq_len,
            lengths=tokens_per_device,
            flops=(step - self._last_step) * self.tokens_per_step * self.flops_per_token / world,
        )
        self._last_step = step
        pl_module.log("train/tokens", float(step * self.tokens_per_step))
        epochs = getattr(trainer.datamodule, "epochs_at", lambda _: None)(step)
        if epochs is not None:
            pl_module.log("train/epoch", epochs)  # passes over the training split (Inheritune repeats data)
        metrics = self._throughput.compute()
        if "device/items_per_sec" in metrics:
            pl_module.log("throughput/tokens_per_sec", metrics["device/items_per_sec"] * world)
            pl_module.log("throughput/tokens_per_sec_per_device", metrics["device/items_per_sec"])
        if "device/flops_per_sec" in metrics:
            pl_module.log("throughput/flops_per_sec_per_device", metrics["device/flops_per_sec"])
        if "device/mfu" in metrics:
            pl_module.log("throughput/mfu", metrics["device/mfu"])

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._elapsed += self.clock() - self._t0  # stop the clock during validation

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._t0 = self.clock()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._final = (trainer.global_step - self._first_step, self._elapsed + self.clock() - self._t0)

    def measured(self) -> tuple[int, float] | None:
        """(optimizer steps, seconds) of this start's training, validation excluded; None before training ended."""
        return self._final
