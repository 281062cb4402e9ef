"""`LastCheckpoint`: keeps `checkpoints/last.ckpt` current, the checkpoint a run resumes from.

It saves after every validation (so a resumed run never skips or repeats one), every `every_n_steps`
optimizer steps and every `every_minutes` minutes of training, always at a step boundary: never in the
middle of gradient accumulation, and never just before a validation (which saves right after). Writes go
through the trainer's checkpoint IO, atomic in this lab. The best weights by validation loss are kept by
Lightning's `ModelCheckpoint` beside it.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class LastCheckpoint(L.Callback):
    def __init__(self, dirpath: str, every_n_steps: int | None = 100, every_minutes: float | None = 30.0):
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps = every_n_steps
        self.every_minutes = every_minutes
        self._since = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since = time.monotonic()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.fit_loop._should_accumulate():
            return  # mid-accumulation: a resume could not restart here
        step = trainer.global_step
        validation_follows = (
            trainer.fit_loop.total_batch_idx + 1
        ) % trainer.val_check_batch == 0 or step >= trainer.max_steps
        if validation_follows:
            return
        by_steps = bool(self.every_n_steps) and step % self.every_n_steps == 0
        by_time = bool(self.every_minutes) and time.monotonic() - self._since >= 60 * self.every_minutes
        if by_steps or by_time:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state; every rank calls it, rank 0 writes
        self._since = time.monotonic()
