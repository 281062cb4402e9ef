"""Training and validation batches: contiguous windows of `seq_len + 1` tokens, in an order that is a pure
function of (seed, epoch, position), so a resumed run reads exactly what an uninterrupted one would.

Prepared data: each epoch picks a random phase in [0, seq_len), tiles every shard with windows starting at
`phase + k * seq_len`, and visits them in a random order: within an epoch no token is seen twice (nanoGPT
samples offsets with replacement, so some text is seen twice and some never). An epoch holds a whole number
of global batches. Global micro-batch j holds windows [j * micro, (j + 1) * micro) of the epoch's order, and
rank r of W reads the micro-batches j = r, r + W, r + 2W, ...: a step's global batch is the same set of
windows whatever the world size and accumulation, and the ranks never overlap.

The position is the number of global micro-batches consumed, `global_step * batch_size / micro_batch_size`,
so it is restored from the checkpoint's step; Lightning sees one endless epoch and never skips or replays.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from lm_lab.data.shards import TokenShards


class EpochPlan:
    """The window order of every epoch over a split's shards."""

    def __init__(self, sizes: np.ndarray, seq_len: int, seed: int, multiple_of: int = 1):
        self.seq_len, self.seed = seq_len, seed
        # windows per shard at any phase: the last one must end inside the shard
        self.tiles = np.maximum(np.asarray(sizes, dtype=np.int64) // seq_len - 1, 0)
        self.offsets = np.concatenate([[0], np.cumsum(self.tiles)])
        self.total = int(self.offsets[-1])
        self.n_windows = self.total // multiple_of * multiple_of
        if self.n_windows < 1:
            raise ValueError(
                f"{int(np.sum(sizes))} tokens hold {self.total} windows of seq_len + 1 = {seq_len + 1} tokens, "
                f"fewer than one global batch of {multiple_of}"
            )

    def epoch(self, epoch: int) -> tuple[int, np.ndarray]:
        """(phase, window indices in visiting order) of `epoch`: 4 bytes a window while there are < 2^31."""
        rng = np.random.default_rng([self.seed, epoch])
        phase = int(rng.integers(self.seq_len))
        order = np.arange(self.total, dtype=np.int32 if self.total < 2**31 else np.int64)
        rng.shuffle(order)
        return phase, order[: self.n_windows]  # the left-over windows change from epoch to epoch

    def locate(self, phase: int, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, start position) of window indices."""
        windows = np.asarray(windows, dtype=np.int64)
        shard = np.searchsorted(self.offsets, windows, side="right") - 1
        return shard, phase + (windows - self.offsets[shard]) * self.seq_len


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class TrainWindows(IterableDataset):
    """This rank's training micro-batches, (micro, seq_len + 1) int64, from global micro-batch `start` on, forever."""

    def __init__(
        self,
        shards: TokenShards,
        seq_len: int,
        micro: int,
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
    ):
        if start % world:
            raise ValueError(f"start={start} must be a multiple of the world size {world}")
        self.shards, self.seq_len, self.micro = shards, seq_len, micro
        self.rank, self.world, self.start = rank, world, start
        self.plan = EpochPlan(shards.sizes, seq_len, seed, multiple_of=batch_size)
        self.per_epoch = self.plan.n_windows // micro  # global micro-batches per epoch, a multiple of world

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker, n_workers = _worker()
        # DataLoader workers take turns starting with worker 0, so worker k serves this rank's k-th, (k+K)-th, ...
        # micro-batch counted from the start: the order is the same for any number of workers
        local = self.start // self.world + worker
        epoch, phase, order = -1, 0, None
        while True:
            j = local * self.world + self.rank  # global micro-batch index
            e, jj = divmod(j, self.per_epoch)
            if e != epoch:
                epoch, (phase, order) = e, self.plan.epoch(e)
            shard, start = self.plan.locate(phase, order[jj * self.micro : (jj + 1) * self.micro])
            batch = np.stack([self.shards.window(s, p, self.seq_len + 1) for s, p in zip(shard, start, strict=True)])
            yield torch.from_numpy(batch.astype(np.int64))
            local += n_workers


class ValWindows(Dataset):
    """Non-overlapping windows from the start of each validation shard (every target token scored once), capped
    at `max_tokens`; rank r of W takes windows r, r + W, ... so the ranks together score each window once."""

    def __init__(
        self, shards: TokenShards, seq_len: int, max_tokens: int | None = None, *, rank: int = 0, world: int = 1
    ):
        self.shards, self.seq_len = shards, seq_len
        all_windows = [
            (i, k * seq_len) for i, size in enumerate(shards.sizes) for k in range((int(size) - 1) // seq_len)
        ]
        if max_tokens is not None:
            all_windows = all_windows[: max(1, max_tokens // seq_len)]
        self.all_windows = all_windows
        self.windows = all_windows[rank::world]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> torch.Tensor:
        shard, start = self.windows[i]
        return torch.from_numpy(self.shards.window(shard, start, self.seq_len + 1).astype(np.int64))

    def targets(self) -> np.ndarray:
        """Every target token the validation loss is computed on, over all ranks."""
        parts = [self.shards.window(s, p + 1, self.seq_len) for s, p in self.all_windows]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
