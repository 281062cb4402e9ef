"""The LightningDataModule: corpus -> tokenizer -> token files (or a stream) -> batches for every rank.

The training position is a function of the global step (see `windows.py`), so a checkpoint restores it
exactly; the module's `state_dict` records what the run read (corpus, tokenizer, batch geometry, position)
and a resume with different data or batch geometry is refused instead of silently reading other tokens.
"""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from lm_lab.data.config import DataConfig
from lm_lab.data.prepare import check_meta, get_tokenizer, prepare, token_dir
from lm_lab.data.shards import TokenShards, unigram_entropy
from lm_lab.data.streaming import StreamWindows
from lm_lab.data.tokenizers import Tokenizer, TokenizerConfig
from lm_lab.data.windows import TrainWindows, ValWindows
from lm_lab.errors import ConfigError, raise_if
from lm_lab.scaling.budget import NO_STEP_LIMIT

log = logging.getLogger(__name__)


class LMDataModule(L.LightningDataModule):
    def __init__(
        self,
        data: DataConfig,
        tokenizer: TokenizerConfig,
        *,
        seq_len: int,
        micro_batch_size: int,
        batch_size: int,
        val_tokens: int | None,
        seed: int,
    ):
        super().__init__()
        self.cfg = data
        self.tokenizer_cfg = tokenizer
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.batch_size = batch_size  # global batch: an epoch holds whole optimizer steps
        self.val_tokens = val_tokens
        self.seed = seed
        self.tokenizer: Tokenizer | None = None
        self.meta: dict | None = None
        self.train: TokenShards | None = None
        self.val: TokenShards | None = None
        self._restored: dict | None = None
        self._per_epoch: int | None = None

    @property
    def streaming(self) -> bool:
        return self.cfg.mode == "streaming"

    def _on_cuda(self) -> bool:  # pinned host memory only speeds up copies to a GPU
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def _rank_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    # -- Lightning hooks -----------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Make (once, cached) the tokenizer and token files. Lightning runs this on one process per node."""
        prepare(self.cfg, self.tokenizer_cfg, val_only=self.streaming)

    def setup(self, stage: str | None = None) -> None:
        if self.val is not None:
            return
        self.tokenizer = get_tokenizer(self.cfg, self.tokenizer_cfg)
        folder = token_dir(self.cfg, self.tokenizer_cfg, val_only=self.streaming)
        self.meta = check_meta(folder, self.tokenizer)
        self.val = TokenShards(folder, "val", self.meta)
        if not self.streaming:
            self.train = TokenShards(folder, "train", self.meta)
        self._per_epoch = None
        problems = []
        if self.train is not None:
            tiles = int(np.maximum(self.train.sizes // self.seq_len - 1, 0).sum())
            if tiles < self.batch_size:
                problems.append(
                    f"the train split of data.name={self.cfg.name!r} holds {tiles} windows of train.seq_len={self.seq_len} "
                    f"tokens, fewer than one train.batch_size={self.batch_size}; use more data or lower them"
                )
        world = self._rank_world()[1]
        n_val = len(ValWindows(self.val, self.seq_len, self.val_tokens).all_windows)
        if n_val < world:
            problems.append(
                f"the validation split of data.name={self.cfg.name!r} holds {n_val} windows of train.seq_len={self.seq_len} "
                f"tokens, fewer than the {world} processes that share it; raise data.val_fraction / data.val_split_tokens"
            )
        raise_if(problems)
        if self.trainer is None or self.trainer.is_global_zero:
            log.info(
                "data %s (%s): %s train / %s val tokens, tokenizer %s, files in %s",
                self.cfg.name,
                self.cfg.mode,
                "streamed" if self.streaming else f"{len(self.train):,}",
                f"{len(self.val):,}",
                self.tokenizer.name,
                folder,
            )
            max_steps = getattr(self.trainer, "max_steps", -1) if self.trainer is not None else -1
            planned = self.epochs_at(max_steps) if 0 < max_steps < NO_STEP_LIMIT else None  # (not a clock's)
            if planned is not None and planned > 1:
                (log.warning if planned >= 10 else log.info)(
                    "train.max_steps=%d reads the train split of data.name=%s %.1f times; for fewer repeats use a "
                    "larger corpus (e.g. data=slimpajama_6b tokenizer=gpt2)",
                    max_steps,
                    self.cfg.name,
                    planned,
                )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        if self._restored is not None:
            self._check_resume(self._restored)
        # Lightning calls this after restoring a checkpoint: the global step says where the data resumes
        # (`check_position` verifies that at the start of training)
        start = self.consumed_micro_batches(self.trainer.global_step if self.trainer is not None else 0)
        self._train_start = start
        if self.streaming:
            dataset = StreamWindows(
                self.cfg,
                self.tokenizer.spec,
                self.tokenizer.vocab_size,
                self.seq_len,
                self.micro_batch_size,
                self.seed,
                rank=rank,
                world=world,
                start=start,
            )
        else:
            dataset = TrainWindows(
                self.train,
                self.seq_len,
                self.micro_batch_size,
                self.batch_size,
                self.seed,
                rank=rank,
                world=world,
                start=start,
            )
        return DataLoader(dataset, batch_size=None, num_workers=self.cfg.num_workers, pin_memory=self._on_cuda())

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        return DataLoader(
            ValWindows(self.val, self.seq_len, self.val_tokens, rank=rank, world=world),
            batch_size=self.micro_batch_size,
            num_workers=self.cfg.num_workers,
            pin_memory=self._on_cuda(),
            generator=self._generator(),
        )

    def _generator(self) -> torch.Generator:
        """A loader's own generator: creating its iterator then draws no number from the global RNG, which
        dropout uses, so validating (or not) between checkpoints cannot change the training that follows."""
        return torch.Generator().manual_seed(self.seed)

    # -- position and resume -------------------------------------------------------------------------------

    def consumed_micro_batches(self, global_step: int) -> int:
        """Global micro-batches read after `global_step` optimizer steps."""
        return global_step * (self.batch_size // self.micro_batch_size)

    def check_position(self, global_step: int) -> None:
        """Called when training starts: the training data must begin where the restored step says it does."""
        expected = self.consumed_micro_batches(global_step)
        if getattr(self, "_train_start", expected) != expected:
            raise RuntimeError(
                f"the training data starts at micro-batch {self._train_start} but step {global_step} has consumed "
                f"{expected}: the dataloader was built before the checkpoint was restored"
            )

    def epochs_at(self, global_step: int) -> float | None:
        """Passes over the training split after `global_step` steps (None when streaming: the size is unknown)."""
        if self.streaming or self.train is None:
            return None
        if self._per_epoch is None:  # global micro-batches per pass: fixed once the shards are open
            windows = TrainWindows(self.train, self.seq_len, self.micro_batch_size, self.batch_size, self.seed)
            self._per_epoch = windows.per_epoch
        return self.consumed_micro_batches(global_step) / self._per_epoch

    def _identity(self) -> dict:
        """What a resume must match to read the same tokens; a stream's order also depends on how it was split
        among readers."""
        stream = {
            "path": self.cfg.path,
            "revision": self.cfg.revision,
            "shuffle_buffer": self.cfg.shuffle_buffer,
            "world_size": self._rank_world()[1],
            "num_workers": self.cfg.num_workers,
            "micro_batch_size": self.micro_batch_size,
        }
        return {
            "data": self.cfg.name,
            "mode": self.cfg.mode,
            **(stream if self.streaming else {}),
            "content": self.meta["splits"]["val"]["content_hash"]
            if self.streaming
            else self.meta["splits"]["train"]["content_hash"],
            "tokenizer": self.meta["tokenizer"],
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def state_dict(self) -> dict:
        """Saved in every checkpoint: what was read and how far (the position itself follows from the step)."""
        if self.meta is None:
            return {}
        state = self._identity()
        step = self.trainer.global_step if self.trainer is not None else 0
        state.update(global_step=step, micro_batches=self.consumed_micro_batches(step), epochs=self.epochs_at(step))
        return state

    def load_state_dict(self, state: dict) -> None:
        self._restored = state or None  # checked when training resumes (not for validation-only use)

    def _check_resume(self, saved: dict) -> None:
        now = self._identity()
        changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]
        if changed:
            raise ConfigError(
                "cannot resume exactly: the checkpoint read other data or batches than this run would ("
                + "; ".join(changed)
                + "); resume with the original data, tokenizer, seed, seq_len and batch_size"
            )

    # -- what a run reports about its data -----------------------------------------------------------------

    def val_unigram_entropy(self) -> float:
        """Unigram entropy (nats) of exactly the target tokens the validation loss is computed on."""
        return unigram_entropy(ValWindows(self.val, self.seq_len, self.val_tokens).targets(), self.tokenizer.vocab_size)

    def val_bytes(self) -> int:
        """UTF-8 bytes of the text of exactly the target tokens the validation loss is computed on."""
        targets = ValWindows(self.val, self.seq_len, self.val_tokens).targets()
        return int(self.tokenizer.token_bytes()[targets].sum())

    def val_token_count(self) -> int:
        return len(ValWindows(self.val, self.seq_len, self.val_tokens).all_windows) * self.seq_len
