"""Contiguous windows of `seq_len + 1` tokens over a memory-mapped token stream, and their order.

Training walks the stream in epochs: each epoch picks a random phase in [0, seq_len) and visits every
window that starts at `phase + k * seq_len` once, in a random order. Both choices are a pure function of
(seed, epoch), so an epoch's order can be rebuilt anywhere, and within an epoch no token is seen twice
(nanoGPT samples offsets with replacement, so some text is seen twice and some never).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class TokenWindows(Dataset):
    """Index = start position in the token stream; item = tokens[start : start + seq_len + 1] as int64."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens = tokens
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.tokens) - self.seq_len

    def __getitem__(self, start: int) -> torch.Tensor:
        window = self.tokens[start : start + self.seq_len + 1]
        return torch.from_numpy(window.astype(np.int64))


class EpochWindowSampler(Sampler[int]):
    """Yields window start positions: a seeded random phase and permutation per epoch.

    An epoch holds a whole number of global batches (`multiple_of`), so no optimizer step ever straddles
    an epoch boundary with a partial batch; the few windows left over differ from epoch to epoch.
    """

    def __init__(self, n_tokens: int, seq_len: int, seed: int, multiple_of: int = 1):
        self.n_tokens = n_tokens
        self.seq_len = seq_len
        self.seed = seed
        self.epoch = 0
        # windows at one phase: the same count whatever the phase, the last one ending inside the stream
        self.n_tiles = n_tokens // seq_len - 1
        self.n_windows = self.n_tiles // multiple_of * multiple_of
        if self.n_windows < 1:
            raise ValueError(
                f"{n_tokens} tokens hold {max(self.n_tiles, 0)} windows of seq_len + 1 = {seq_len + 1} tokens, "
                f"fewer than one batch of {multiple_of}"
            )

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def starts(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        phase = int(rng.integers(self.seq_len))
        return phase + rng.permutation(self.n_tiles)[: self.n_windows] * self.seq_len

    def __iter__(self) -> Iterator[int]:
        return iter(self.starts(self.epoch).tolist())

    def __len__(self) -> int:
        return self.n_windows


def sequential_starts(n_tokens: int, seq_len: int, max_tokens: int | None = None) -> list[int]:
    """Non-overlapping windows from the beginning, for evaluation: every target token is scored once."""
    n = (n_tokens - 1) // seq_len
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // seq_len))
    return [k * seq_len for k in range(n)]
