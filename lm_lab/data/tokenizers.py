"""Tokenizers that need no network: UTF-8 bytes, and a byte-level BPE trained with `tokenizers` and cached.

Every tokenizer appends one end-of-text id after each document, so documents never run into each other
without a separator in the token stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lm_lab.errors import raise_if
from lm_lab.fileio import atomic_write_text

EOT = "<|endoftext|>"
KINDS = ("bpe", "bytes")


@dataclass
class TokenizerConfig:
    """Which tokenizer a run uses."""

    name: str = "bpe"
    """`bpe` (byte-level BPE trained on the run's training split, cached) or `bytes` (UTF-8 bytes)."""
    vocab_size: int = 4096
    """Vocabulary size including the end-of-text token; `bytes` has exactly 257."""

    def __post_init__(self) -> None:
        problems = []
        if self.name not in KINDS:
            problems.append(f"tokenizer.name={self.name!r} is unknown; choose one of {list(KINDS)}")
        elif self.name == "bytes" and self.vocab_size != 257:
            problems.append(f"tokenizer.vocab_size={self.vocab_size} but the bytes tokenizer has 257 ids; set 257")
        elif self.name == "bpe" and not (isinstance(self.vocab_size, int) and 257 <= self.vocab_size <= 2**32):
            problems.append(f"tokenizer.vocab_size={self.vocab_size!r} must be an integer >= 257 for a byte-level BPE")
        raise_if(problems)


class ByteTokenizer:
    """UTF-8 bytes 0..255 plus end-of-text 256: lossless on any text, no training."""

    vocab_size = 257
    eot_id = 256
    name = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class BPETokenizer:
    """Byte-level BPE (GPT-2's pre-tokenisation) from the Hugging Face `tokenizers` library."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.eot_id = tokenizer.token_to_id(EOT)
        # the name identifies the exact merges, so token files made with another BPE are never mixed up
        self.name = f"bpe{self.vocab_size}-{hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:12]}"

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: lossless
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self._tok.to_str())

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts)]  # parallel in Rust

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids))


Tokenizer = ByteTokenizer | BPETokenizer
