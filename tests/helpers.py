"""Test-only helpers that run inside `run.py` processes (imported by `_target_` from the repository root)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lm_lab.checkpoint_io import AtomicCheckpointIO
from lm_lab.fileio import atomic_open


def step_snapshots(run_dir: Path, every: int) -> ModelCheckpoint:
    """Lightning's own step checkpoints, `checkpoints/step<N>.ckpt` every `every` steps, all kept."""
    return ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="step{step}",
        auto_insert_metric_name=False,
        every_n_train_steps=every,
        save_top_k=-1,
    )


def row_hashes(batch) -> list[str]:
    return [hashlib.sha1(row.numpy().tobytes()).hexdigest()[:16] for row in batch.cpu()]


class BatchRecorder(L.Callback):
    """Appends one JSON line per training micro-batch to `<path>.rank<R>.jsonl`: the optimizer step it belongs to
    and a hash of each window, so tests can compare what different runs read, batch for batch."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        line = {"step": trainer.global_step, "rows": row_hashes(batch)}
        with open(Path(f"{self.path}.rank{trainer.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")


def read_records(path: Path, rank: int = 0) -> list[dict]:
    file = Path(f"{path}.rank{rank}.jsonl")
    return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []


class LossRecorder(L.Callback):
    """Appends `{"step", "loss", "lr"}` per micro-batch to a JSONL file, flushed at once (a SIGKILL loses nothing);
    with several processes, rank R > 0 writes to `<path>.rank<R>`."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        path = self.path if trainer.global_rank == 0 else f"{self.path}.rank{trainer.global_rank}"
        with open(path, "a") as f:
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            f.write(json.dumps({"step": trainer.global_step, "loss": outputs["loss"].item(), "lr": lr}) + "\n")


class KillProcessGroup(L.Callback):
    """SIGKILLs the whole process group (every rank at once, as a node failure or `scancel` does) when global step
    `step` is reached on rank 0."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.killpg(os.getpgid(0), signal.SIGKILL)


class InjectNaN(L.Callback):
    """Makes one gradient NaN just before the optimizer step that would make global step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if trainer.global_step + 1 == self.step:
            next(pl_module.parameters()).grad.view(-1)[0] = float("nan")


class CrashingCheckpointIO(AtomicCheckpointIO):
    """Dies by SIGKILL in the middle of its `crash_on_save`-th checkpoint write: half the bytes are on disk."""

    def __init__(self, crash_on_save: int):
        super().__init__()
        self.crash_on_save, self.saves = crash_on_save, 0

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self.saves += 1
        if self.saves < self.crash_on_save:
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_open(path, "wb") as f:
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class KillRank(L.Callback):
    """SIGKILLs one process, global rank `rank`, when global step `step` is reached (a node or GPU lost mid-run:
    the other ranks are left waiting in a collective)."""

    def __init__(self, step: int, rank: int = 1):
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)


class StepSnapshots(ModelCheckpoint):
    """`step_snapshots` for a config: `checkpoints/step<N>.ckpt` every `every` steps, all kept."""

    def __init__(self, dirpath: str, every: int):
        super().__init__(
            dirpath=dirpath,
            filename="step{step}",
            auto_insert_metric_name=False,
            every_n_train_steps=every,
            save_top_k=-1,
        )
