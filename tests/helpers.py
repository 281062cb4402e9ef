"""Test-only helpers that run inside `run.py` processes (imported by `_target_` from the repository root)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L


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
