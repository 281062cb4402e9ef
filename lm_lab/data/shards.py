"""Token files on disk: the held-out rule, the shard layout, and reading shards back as memory maps.

A token folder holds `meta.json` and, per split, shard files of raw token ids (`train-00000.bin`, ...;
uint16 when the vocabulary fits, else uint32), each document followed by the end-of-text id. Training
reads them through `numpy.memmap`, with no Python work per token.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from lm_lab.errors import ConfigError

SPLITS = ("train", "val")
FORMAT_VERSION = 2


def held_out(text, val_fraction: float) -> bool:
    """Whether a document is a validation candidate: a hash of its text alone decides, so the choice is the same
    on every run, machine and world size, and exact duplicates always fall on the same side. `text` is a str or
    a `files.LongText` (hashed piece by piece: the same value as its whole text's)."""
    if isinstance(text, str):
        digest = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    else:
        digest = text.scan()[0]
    return digest / 2**64 < val_fraction


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def read_meta(token_dir: Path) -> dict:
    path = token_dir / "meta.json"
    if not path.exists():
        raise ConfigError(
            f"{path} not found: the token files are not prepared; run `lm-lab prepare-data` with this run's data and "
            f"tokenizer (it rebuilds an incomplete folder)"
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path} is not valid JSON ({e}); `lm-lab prepare-data` with this run's settings rebuilds {token_dir}"
        ) from None
    needed = ("dtype", "splits")  # what reading the shards needs; check_meta checks the tokenizer's fields
    missing = [k for k in needed if k not in meta] if isinstance(meta, dict) else list(needed)
    if missing:
        raise ConfigError(
            f"{path} lacks {missing}: not made by lm_lab's prepare; `lm-lab prepare-data` with this run's settings rebuilds {token_dir}"
        )
    return meta


class TokenShards:
    """One split's shards, memory-mapped, each checked to hold exactly the tokens meta.json promises."""

    def __init__(self, token_dir: Path, split: str, meta: dict | None = None):
        meta = meta or read_meta(token_dir)
        if split not in meta["splits"]:
            raise ConfigError(f"{token_dir} has no {split!r} split (it holds {sorted(meta['splits'])})")
        dtype = np.dtype(meta["dtype"])
        self.maps: list[np.memmap] = []
        for shard in meta["splits"][split]["shards"]:
            path = token_dir / shard["file"]
            expected = shard["tokens"] * dtype.itemsize
            size = path.stat().st_size if path.exists() else None
            if size != expected:
                raise ConfigError(
                    f"token file {path} has {size} bytes but meta.json promises {shard['tokens']} tokens ({expected} "
                    f"bytes): it is missing or truncated; `lm-lab prepare-data` with this run's settings rebuilds {token_dir}"
                )
            tokens = np.memmap(path, dtype=dtype, mode="r") if shard["tokens"] else np.zeros(0, dtype)
            # ids beyond the vocabulary would fail deep inside the embedding, mid-training: refuse them at open
            # (prepare records each shard's largest id; for files without it, read the shard once)
            max_id = shard.get("max_id", int(tokens.max()) if len(tokens) else -1)
            if max_id >= meta.get("vocab_size", math.inf):
                raise ConfigError(
                    f"token file {path} holds id {max_id}, beyond the {meta['vocab_size']} ids of tokenizer "
                    f"{meta.get('tokenizer')}: it is damaged or from another tokenizer; `lm-lab prepare-data` with this run's settings rebuilds {token_dir}"
                )
            self.maps.append(tokens)
        self.sizes = np.array([len(m) for m in self.maps], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def window(self, shard: int, start: int, length: int) -> np.ndarray:
        return self.maps[shard][start : start + length]

    def concatenated(self) -> np.ndarray:
        return np.concatenate([np.asarray(m) for m in self.maps]) if self.maps else np.zeros(0, np.int64)


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats of the tokens' empirical unigram distribution.

    It is the cross-entropy of the best model that knows only token frequencies (and knows them on this very
    data), so a validation loss well below it means the model learned context, not just frequencies.
    """
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
