"""Streaming mode: tokenise on the fly from a `datasets` stream, for corpora too large to prepare.

The stream is shuffled with a seeded buffer (`IterableDataset.shuffle`, reseeded per epoch), held-out
documents are skipped, and the tokens are packed into windows of `seq_len + 1` (consecutive windows share
one token, so every token is a target once). The `world x workers` readers split the stream with
`datasets.distributed.split_dataset_by_node` (whole shards each when they divide evenly, else every n-th
document), so ranks and workers never read the same document.

Resuming replays: each reader regenerates its stream and skips the micro-batches already consumed, so the
resumed run sees exactly the tokens an uninterrupted one would (same world size and worker count), at the
cost of re-reading the stream up to the resume point. Prepared data resumes instantly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from lm_lab.data.config import DataConfig
from lm_lab.data.shards import held_out, token_dtype
from lm_lab.data.sources import open_dataset, texts_of
from lm_lab.data.tokenizers import tokenizer_from_spec
from lm_lab.data.windows import _worker


class StreamWindows(IterableDataset):
    """This rank's training micro-batches, (micro, seq_len + 1) int64, tokenised from the stream, forever."""

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer_spec: tuple,
        vocab_size: int,
        seq_len: int,
        micro: int,
        seed: int,
        *,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
    ):
        self.cfg, self.spec, self.dtype = cfg, tokenizer_spec, token_dtype(vocab_size)
        self.seq_len, self.micro, self.seed = seq_len, micro, seed
        self.rank, self.world, self.start = rank, world, start

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker, n_workers = _worker()
        # as in TrainWindows: worker k serves this rank's micro-batches l0 + k, l0 + k + K, ... where l0 is the
        # resume point; each of those belongs to reader (l mod K) of the original numbering, so this worker
        # plays reader (l0 + k) mod K and skips the ones that reader already produced
        l0 = self.start // self.world
        reader = (l0 + worker) % n_workers
        skip = (l0 + worker) // n_workers
        for produced, batch in enumerate(self._batches(self.rank * n_workers + reader, self.world * n_workers)):
            if produced >= skip:
                yield batch

    def _batches(self, reader: int, n_readers: int) -> Iterator[torch.Tensor]:
        from datasets import Dataset
        from datasets.distributed import split_dataset_by_node

        tokenizer = tokenizer_from_spec(self.spec)
        need = self.micro * self.seq_len + 1
        buffer = np.zeros(0, dtype=self.dtype)
        ds = open_dataset(self.cfg, self.cfg.split, streaming=True)
        if isinstance(ds, Dataset):  # a hub dataset read from the `datasets` cache (HF_DATASETS_OFFLINE)
            ds = ds.to_iterable_dataset(num_shards=max(n_readers, 64))
        # the same seeded shard order and buffer on every reader; then each reader takes whole shards when they
        # divide evenly among the readers, else every n-th document (`datasets`' own rule)
        ds = split_dataset_by_node(
            ds.shuffle(seed=self.seed, buffer_size=self.cfg.shuffle_buffer), rank=reader, world_size=n_readers
        )
        epoch = 0
        while True:
            ds.set_epoch(epoch)  # a new shard order and shuffle-buffer seed each epoch
            for texts in texts_of(ds, self.cfg):
                mine = [t for t in texts if self.cfg.val_from is not None or not held_out(t, self.cfg.val_fraction)]
                if not mine:
                    continue
                tokens, _ = tokenizer.encode_docs(mine, self.dtype)
                buffer = np.concatenate([buffer, tokens])
                while len(buffer) >= need:
                    windows = np.lib.stride_tricks.sliding_window_view(buffer[:need], self.seq_len + 1)[:: self.seq_len]
                    yield torch.from_numpy(windows.astype(np.int64))
                    buffer = buffer[need - 1 :]
            epoch += 1
