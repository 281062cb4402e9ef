"""Logs loss spikes: `train/loss_spike` (1 when a spike was seen since the last log) and `train/loss_spikes`
(running count), with a warning naming the step."""

from __future__ import annotations

import logging

import lightning as L
import torch

from callbacks.cadence import logs_this_step
from lm_lab.guards import SpikeDetector

log = logging.getLogger(__name__)


class LossSpikes(L.Callback):
    """Every micro-batch loss goes through the detector; the values are read from the device in one go at each
    logging step (and before each checkpoint), so the check adds no synchronisation per step."""

    def __init__(self, window: int = 100, k: float = 6.0, min_rise: float = 0.1, warmup: int = 50):
        self.detector = SpikeDetector(window=window, k=k, min_rise=min_rise, warmup=warmup)
        self.count = 0
        self._pending: list[torch.Tensor] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if isinstance(outputs, dict) and "loss" in outputs:
            self._pending.append(outputs["loss"].detach())
        if logs_this_step(trainer):
            spikes = self._flush(trainer.global_step)
            pl_module.log("train/loss_spike", float(spikes > 0))
            pl_module.log("train/loss_spikes", float(self.count))

    def _flush(self, step: int) -> int:
        spikes = 0
        for loss in torch.stack(self._pending).float().tolist() if self._pending else []:
            if self.detector.update(loss):
                spikes += 1
                log.warning(
                    "loss spike near step %d: %.4f against a running mean of %.4f", step, loss, self.detector.mean
                )
        self._pending.clear()
        self.count += spikes
        return spikes

    def state_dict(self) -> dict:
        self._flush(-1)  # the checkpoint holds every loss seen so far, so a resumed run's averages match
        return {**self.detector.state_dict(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.detector.load_state_dict(state)
        self.count = state["count"]
