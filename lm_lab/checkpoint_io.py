"""Atomic checkpoint writes: a crash mid-write leaves the previous checkpoint intact."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lm_lab.fileio import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but every save goes to a temporary file beside its target, is flushed to
    disk and renamed into place; and every load is `weights_only=True`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage (s3://, gs://): fsspec's own write
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(
        self, path, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)  # never unpickle code
