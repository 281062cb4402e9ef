"""The LightningDataModule: corpus -> split -> tokenizer -> cached token files -> window batches."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from lm_lab.data.config import DataConfig
from lm_lab.data.embedded import embedded_documents
from lm_lab.data.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer, TokenizerConfig
from lm_lab.data.tokens import open_split, read_meta, split_of, unigram_entropy, write_token_dir
from lm_lab.data.windows import EpochWindowSampler, TokenWindows, sequential_starts
from lm_lab.errors import ConfigError, raise_if

log = logging.getLogger(__name__)


class LMDataModule(L.LightningDataModule):
    def __init__(
        self,
        data: DataConfig,
        tokenizer: TokenizerConfig,
        *,
        seq_len: int,
        micro_batch_size: int,
        val_tokens: int | None,
        seed: int,
        batch_size: int | None = None,
    ):
        super().__init__()
        self.cfg = data
        self.tokenizer_cfg = tokenizer
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.batch_size = batch_size or micro_batch_size  # global batch: an epoch holds whole steps
        self.val_tokens = val_tokens
        self.seed = seed
        self.tokenizer: Tokenizer | None = None
        self.splits: dict[str, np.memmap] = {}

    # -- where things live ---------------------------------------------------------------------------------

    def _corpus(self) -> tuple[list, str]:
        docs = list(embedded_documents())
        h = hashlib.sha256()
        for doc in docs:
            h.update(doc.doc_id.encode())
            h.update(b"\0")
            h.update(doc.text.encode("utf-8"))
            h.update(b"\0")
        return docs, h.hexdigest()[:16]

    def _dirs(self, content_hash: str) -> tuple[Path, Path]:
        root = (
            Path(os.path.expanduser(self.cfg.cache_dir))
            / f"{self.cfg.name}-{content_hash}"
            / f"val{self.cfg.val_fraction:g}"
        )
        tok = self.tokenizer_cfg
        spec = "bytes" if tok.name == "bytes" else f"bpe{tok.vocab_size}"
        return root / f"{spec}.tokenizer.json", root / spec

    # -- Lightning hooks -----------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Build (once, cached) the tokenizer and the token files. Runs on one process per node."""
        docs, content_hash = self._corpus()
        tok_path, token_dir = self._dirs(content_hash)
        tokenizer = self._tokenizer(tok_path, docs)
        if not (token_dir / "meta.json").exists():
            log.info("tokenising %d documents of %r into %s (once; cached)", len(docs), self.cfg.name, token_dir)
            info = {"source": self.cfg.name, "content_hash": content_hash}
            write_token_dir(token_dir, docs, tokenizer, self.cfg.val_fraction, info=info)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        docs, content_hash = self._corpus()
        tok_path, token_dir = self._dirs(content_hash)
        self.tokenizer = self._tokenizer(tok_path, docs)
        meta = read_meta(token_dir)
        if meta["tokenizer"] != self.tokenizer.name or meta["vocab_size"] != self.tokenizer.vocab_size:
            raise ConfigError(
                f"token files in {token_dir} were made with tokenizer {meta['tokenizer']} but this run uses "
                f"{self.tokenizer.name}; delete {token_dir} to prepare them again"
            )
        self.meta = meta
        self.splits = {s: open_split(token_dir, s, meta) for s in ("train", "val")}
        problems = []
        need = {"train": (self.batch_size + 1) * self.seq_len, "val": 2 * self.seq_len}
        for split, tokens in self.splits.items():
            if len(tokens) < need[split]:
                problems.append(
                    f"the {split} split of data.name={self.cfg.name!r} has {len(tokens)} tokens, fewer than the "
                    f"{need[split]} that train.seq_len={self.seq_len} and train.batch_size={self.batch_size} need; "
                    f"lower them or change data.val_fraction={self.cfg.val_fraction}"
                )
        raise_if(problems)
        if self.trainer is None or self.trainer.is_global_zero:
            log.info(
                "data %s: %s train / %s val tokens, tokenizer %s, cached in %s",
                self.cfg.name, f"{len(self.splits['train']):,}", f"{len(self.splits['val']):,}", self.tokenizer.name, token_dir,
            )  # fmt: skip

    def _tokenizer(self, path: Path, docs: list) -> Tokenizer:
        if self.tokenizer_cfg.name == "bytes":
            return ByteTokenizer()
        if not path.exists():  # trained on the training split only, so validation text stays unseen
            log.info(
                "training a %d-token byte-level BPE on the training split (once; cached at %s)",
                self.tokenizer_cfg.vocab_size,
                path,
            )
            train_text = (d.text for d in docs if split_of(d.doc_id, self.cfg.val_fraction) == "train")
            BPETokenizer.train(train_text, self.tokenizer_cfg.vocab_size).save(path)
        return BPETokenizer.load(path)

    def train_dataloader(self) -> DataLoader:
        tokens = self.splits["train"]
        return DataLoader(
            TokenWindows(tokens, self.seq_len),
            batch_size=self.micro_batch_size,
            sampler=EpochWindowSampler(len(tokens), self.seq_len, self.seed, multiple_of=self.batch_size),
            num_workers=self.cfg.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        tokens = self.splits["val"]
        return DataLoader(
            TokenWindows(tokens, self.seq_len),
            batch_size=self.micro_batch_size,
            sampler=self.val_starts(),
            num_workers=self.cfg.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    # -- what a run reports about its data -----------------------------------------------------------------

    def val_starts(self) -> list[int]:
        return sequential_starts(len(self.splits["val"]), self.seq_len, self.val_tokens)

    def val_unigram_entropy(self) -> float:
        """Unigram entropy (nats) of exactly the target tokens the validation loss is computed on."""
        n_targets = len(self.val_starts()) * self.seq_len
        return unigram_entropy(self.splits["val"][1 : n_targets + 1], self.tokenizer.vocab_size)
