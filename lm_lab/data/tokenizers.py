"""Tokenizers: GPT-2's BPE through tiktoken, any Hugging Face tokenizer, UTF-8 bytes, and a byte-level BPE
trained with `tokenizers` on the run's corpus and cached.

Every tokenizer appends one end-of-text id after each document, so documents never run into each other
without a separator in the token stream. Tokenizers that live on a hub are looked up in the local cache
first; when they are not there and the hub cannot be reached, loading fails at once with a message that
says how to provide the files, instead of hanging on retries.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm_lab.errors import ConfigError, raise_if
from lm_lab.fileio import atomic_write_text

EOT = "<|endoftext|>"
KINDS = ("bpe", "bytes", "tiktoken", "hf")


@dataclass
class TokenizerConfig:
    """Which tokenizer a run uses."""

    name: str = "bpe"
    """`bpe` (byte-level BPE trained on the run's training split, cached), `bytes` (UTF-8 bytes),
    `tiktoken` (an OpenAI encoding such as GPT-2's, by `path`) or `hf` (a Hugging Face tokenizer by `path`)."""
    vocab_size: int = 4096
    """Number of ids, end-of-text included: the target size for `bpe`, 257 for `bytes`, and for `tiktoken`
    and `hf` the size the tokenizer must have (checked when it loads; GPT-2's is 50257)."""
    path: str | None = None
    """`tiktoken`: the encoding name (`gpt2`); `hf`: a hub name (`gpt2`, `EleutherAI/pythia-160m`) or a local
    folder or tokenizer.json file."""
    eot_token: str | None = None
    """`hf`: the token appended after each document; None takes `<|endoftext|>` or else `</s>`."""
    train_bytes: int = 100_000_000
    """`bpe`: learn the merges from at most this many bytes of the training split (in corpus order)."""

    def __post_init__(self) -> None:
        problems = []
        if self.name not in KINDS:
            problems.append(f"tokenizer.name={self.name!r} is unknown; choose one of {list(KINDS)}")
        elif self.name == "bytes" and self.vocab_size != 257:
            problems.append(f"tokenizer.vocab_size={self.vocab_size} but the bytes tokenizer has 257 ids; set 257")
        elif self.name == "bpe" and not (isinstance(self.vocab_size, int) and 257 <= self.vocab_size <= 2**32):
            problems.append(f"tokenizer.vocab_size={self.vocab_size!r} must be an integer >= 257 for a byte-level BPE")
        elif self.name in ("tiktoken", "hf") and not self.path:
            example = "gpt2" if self.name == "tiktoken" else "EleutherAI/pythia-160m"
            problems.append(
                f"tokenizer.path is required for tokenizer.name={self.name!r}, e.g. tokenizer.path={example}"
            )
        if not (isinstance(self.vocab_size, int) and self.vocab_size > 0):
            problems.append(f"tokenizer.vocab_size={self.vocab_size!r} must be a positive integer")
        raise_if(problems)

    @property
    def cache_key(self) -> str:
        """A folder name for token files made with this tokenizer (the exact identity is checked on load)."""
        if self.name == "bytes":
            return "bytes"
        if self.name == "bpe":  # the training corpus is in the folder above; its size cap is here
            return f"bpe{self.vocab_size}-{self.train_bytes}b"
        eot = f"-eot-{self.eot_token}" if self.eot_token else ""
        return f"{self.name}-{''.join(c if c.isalnum() or c in '.-_' else '_' for c in str(self.path) + eot)}"


class ByteTokenizer:
    """UTF-8 bytes 0..255 plus end-of-text 256: lossless on any text, no training."""

    vocab_size = 257
    eot_id = 256
    name = "bytes"
    spec = ("bytes", None)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_docs(
        self, texts: list[str], dtype: np.dtype, ends: list[bool] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """All texts as one array, each followed by end-of-text (only where `ends[i]`: the last piece of a
        long document), and the per-text lengths."""
        ends = ends or [True] * len(texts)
        parts = [
            np.frombuffer(t.encode("utf-8") + b"\xff" * e, dtype=np.uint8) for t, e in zip(texts, ends, strict=True)
        ]
        tokens = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        tokens[tokens == 255] = self.eot_id  # 0xff never occurs in UTF-8, so it marks the document ends
        return tokens, np.array([len(p) for p in parts], dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of each id's text (end-of-text: 0)."""
        return np.array([1] * 256 + [0], dtype=np.int64)


class _ListTokenizer:
    """Shared by the wrapped tokenizers: `encode_batch` gives lists of ids.

    `threads=False` in worker processes (one per core already): a plain loop of `encode` is ~30% faster than a
    single-threaded `encode_batch` of Hugging Face tokenizers.
    """

    threads = True

    def encode_docs(
        self, texts: list[str], dtype: np.dtype, ends: list[bool] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """All texts as one array, each followed by end-of-text (only where `ends[i]`), and the per-text lengths.

        A text longer than `files.LONG_CHARS` is encoded in pieces cut at pre-token boundaries (`files.cut`),
        which bounds the tokenizer's memory (Hugging Face tokenizers take ~120 bytes per character) and gives
        the tokens of the unsplit encoding."""
        from lm_lab.data.files import LONG_CHARS, split_pieces

        ends = ends or [True] * len(texts)
        if all(len(t) <= LONG_CHARS for t in texts):
            ids = self.encode_batch(texts) if texts else []
        else:
            flat, owner = [], []
            for i, t in enumerate(texts):
                for piece in split_pieces(t) if len(t) > LONG_CHARS else (t,):
                    flat.append(piece)
                    owner.append(i)
            ids = [[] for _ in texts]
            for i, x in zip(owner, self.encode_batch(flat), strict=True):
                ids[i].extend(x)
        lengths = np.array([len(x) + e for x, e in zip(ids, ends, strict=True)], dtype=np.int64)
        tokens = np.empty(int(lengths.sum()), dtype=dtype)
        stops = np.cumsum(lengths)
        for x, stop, e in zip(ids, stops, ends, strict=True):
            tokens[stop - len(x) - e : stop - e] = x
            if e:
                tokens[stop - 1] = self.eot_id
        return tokens, lengths


class BPETokenizer(_ListTokenizer):
    """A Hugging Face `tokenizers.Tokenizer`: our trained byte-level BPE, or any tokenizer.json."""

    def __init__(self, tokenizer, path: str | None = None, eot_token: str | None = None, label: str = "bpe"):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        eot = eot_token or next((t for t in (EOT, "</s>") if tokenizer.token_to_id(t) is not None), None)
        if eot is None or tokenizer.token_to_id(eot) is None:
            raise ConfigError(f"tokenizer has no end-of-text token {eot_token or EOT!r}; set tokenizer.eot_token")
        self.eot_id = tokenizer.token_to_id(eot)
        # the name identifies the exact vocabulary and merges, so token files made with another are never mixed up
        digest = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:12]
        self.name = f"{label}{self.vocab_size}-{digest}"
        self.spec = ("json", path, eot)

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
    def load(cls, path: str | Path, eot_token: str | None = None, label: str = "bpe") -> BPETokenizer:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception for a file that is not one
            raise ConfigError(
                f"{path} is not a tokenizer file that the `tokenizers` library can read ({str(e)[:120]}); point "
                f"tokenizer.path at a Hugging Face tokenizer.json"
            ) from None
        return cls(tokenizer, path=str(path), eot_token=eot_token, label=label)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self._tok.to_str())
        self.spec = ("json", str(path), self.spec[2])

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not self.threads:
            return [self.encode(t) for t in texts]
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]  # parallel in Rust

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of each id's text (special tokens: 0). Byte-level vocabularies (ours, GPT-2's, LLaMA 3's)
        map each symbol to one byte exactly; others (SentencePiece) count `<0xNN>` as one byte, `▁` as a space
        and any other symbol by its UTF-8 length: exact for their decoding up to the leading space of a text."""
        if getattr(self, "_token_bytes", None) is None:
            to_byte = _byte_level_symbols()
            special = {t.content for t in self._tok.get_added_tokens_decoder().values() if t.special}
            tokens = [self._tok.id_to_token(i) for i in range(self.vocab_size)]
            plain = [t for t in tokens if t is not None and t not in special]
            byte_level = all(c in to_byte for t in plain for c in t)
            lengths = np.zeros(self.vocab_size, dtype=np.int64)
            for i, t in enumerate(tokens):
                if t is None or t in special:
                    continue
                if byte_level:
                    lengths[i] = len(t)
                elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                    lengths[i] = 1  # SentencePiece byte fallback
                else:
                    lengths[i] = len(t.replace("\u2581", " ").encode("utf-8"))
            self._token_bytes = lengths
        return self._token_bytes


class TiktokenTokenizer(_ListTokenizer):
    """An OpenAI tiktoken encoding (GPT-2's BPE: 50257 ids, `<|endoftext|>` = 50256)."""

    def __init__(self, encoding):
        self._enc = encoding
        self.vocab_size = encoding.n_vocab
        self.eot_id = encoding.eot_token
        self.name = f"tiktoken-{encoding.name}"
        self.spec = ("tiktoken", encoding.name)

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts, num_threads=8 if self.threads else 1)

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode(list(ids))

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of each id (special tokens such as end-of-text: 0)."""
        if getattr(self, "_token_bytes", None) is None:
            special = set(self._enc.special_tokens_set)
            lengths = np.zeros(self.vocab_size, dtype=np.int64)
            for i in range(self.vocab_size):
                try:
                    piece = self._enc.decode_single_token_bytes(i)
                except KeyError:  # an id with no token (tiktoken encodings may have holes)
                    continue
                if piece.decode("utf-8", errors="replace") not in special:
                    lengths[i] = len(piece)
            self._token_bytes = lengths
        return self._token_bytes


Tokenizer = ByteTokenizer | BPETokenizer | TiktokenTokenizer


def _byte_level_symbols() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable symbol that stands for each of the 256 bytes (Radford et al.
    2019's `bytes_to_unicode`, as `tokenizers`' ByteLevel pre-tokenizer uses it)."""
    from tokenizers import pre_tokenizers

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[chr(b)] = b
        else:
            symbols[chr(256 + extra)] = b
            extra += 1
    assert set(symbols) == set(pre_tokenizers.ByteLevel.alphabet())
    return symbols


def reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:443 opens within `timeout` seconds (the libraries' own retries can
    take a minute or, with no timeout set, forever). Behind a proxy or a hub mirror we cannot tell: True."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT")):
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def offline(*env_vars: str) -> bool:
    """Whether any of these switches (e.g. HF_HUB_OFFLINE) is on, read as huggingface_hub and datasets read them."""
    return any(os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE") for k in env_vars)


TIKTOKEN_HOST = "openaipublic.blob.core.windows.net"


def tiktoken_cache_dir() -> Path:
    """Where tiktoken caches its files (its own rule: TIKTOKEN_CACHE_DIR, DATA_GYM_CACHE_DIR, or a temp folder)."""
    import tempfile

    env = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / "data-gym-cache"


def _tiktoken_urls(name: str) -> list[str]:
    if name == "gpt2":
        return [f"https://{TIKTOKEN_HOST}/gpt-2/encodings/main/{f}" for f in ("vocab.bpe", "encoder.json")]
    return [f"https://{TIKTOKEN_HOST}/encodings/{name}.tiktoken"]


def load_tiktoken(name: str) -> TiktokenTokenizer:
    import tiktoken

    known = sorted(tiktoken.list_encoding_names())
    if name not in known:
        raise ConfigError(f"tokenizer.path={name!r} is not a tiktoken encoding; known: {known}")
    cache = tiktoken_cache_dir()
    # tiktoken caches each file under the sha1 of its URL and downloads with no timeout: check first
    missing = [u for u in _tiktoken_urls(name) if not (cache / hashlib.sha1(u.encode()).hexdigest()).exists()]
    help_ = (
        f'on a machine with internet run `TIKTOKEN_CACHE_DIR=DIR python -c "import tiktoken; '
        f"tiktoken.get_encoding('{name}')\"`, copy DIR here and set TIKTOKEN_CACHE_DIR=DIR"
    )
    if missing and not reachable(TIKTOKEN_HOST):
        files = ", ".join(u.rsplit("/", 1)[1] for u in missing)
        raise ConfigError(
            f"tiktoken encoding {name!r}: {files} not cached in {cache} and {TIKTOKEN_HOST} cannot be reached; {help_}"
        )
    try:
        return TiktokenTokenizer(tiktoken.get_encoding(name))
    except Exception as e:  # a download that failed half-way, a corrupt cache file
        raise ConfigError(f"tiktoken encoding {name!r} failed to load ({e}); {help_}") from e


def load_hf(path: str, eot_token: str | None) -> BPETokenizer:
    """A Hugging Face tokenizer from a local tokenizer.json (file or folder) or the hub (cache first)."""
    local = Path(path).expanduser()
    if local.is_dir():
        local = local / "tokenizer.json"
    if local.exists():
        return BPETokenizer.load(local, eot_token=eot_token, label="hf")
    if path.startswith((".", "/", "~")):
        raise ConfigError(f"tokenizer.path={path!r}: no such file or folder with a tokenizer.json")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        file = hf_hub_download(path, "tokenizer.json", local_files_only=True)
    except LocalEntryNotFoundError:
        switched_off = offline("HF_HUB_OFFLINE")
        if switched_off or not reachable("huggingface.co"):
            raise ConfigError(
                f"tokenizer.path={path!r} is not in the Hugging Face cache and the hub "
                f"{'is switched off (HF_HUB_OFFLINE)' if switched_off else 'cannot be reached'}; on a machine with internet "
                f"run `huggingface-cli download {path} tokenizer.json` and copy the cache (HF_HOME), or set "
                f"tokenizer.path to a local folder holding tokenizer.json"
            ) from None
        try:
            file = hf_hub_download(path, "tokenizer.json")
        except HfHubHTTPError as e:  # no such repo, a gated one, or no tokenizer.json in it
            raise ConfigError(
                f"tokenizer.path={path!r}: no tokenizer.json could be downloaded ({type(e).__name__}); check the name, "
                f"log in for gated repos (`huggingface-cli login`), or point tokenizer.path at a local tokenizer.json"
            ) from e
    return BPETokenizer.load(file, eot_token=eot_token, label="hf")


def load_tokenizer(cfg: TokenizerConfig, trained_path: Path | None = None) -> Tokenizer:
    """The tokenizer of `cfg`; a `bpe` one must already be trained and saved at `trained_path`."""
    if cfg.name == "bytes":
        return ByteTokenizer()
    if cfg.name == "bpe":
        if trained_path is None or not trained_path.exists():
            raise ConfigError(f"the bpe tokenizer is not trained yet (expected at {trained_path})")
        tok = BPETokenizer.load(trained_path)
    elif cfg.name == "tiktoken":
        tok = load_tiktoken(cfg.path)
    else:
        tok = load_hf(cfg.path, cfg.eot_token)
    if cfg.name != "bpe" and tok.vocab_size != cfg.vocab_size:
        raise ConfigError(
            f"tokenizer.vocab_size={cfg.vocab_size} but {cfg.path!r} has {tok.vocab_size} ids; "
            f"set tokenizer.vocab_size={tok.vocab_size}"
        )
    return tok


def tokenizer_from_spec(spec: tuple) -> Tokenizer:
    """Rebuild a tokenizer in another process from its picklable `spec`."""
    kind = spec[0]
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "tiktoken":
        import tiktoken

        return TiktokenTokenizer(tiktoken.get_encoding(spec[1]))
    return BPETokenizer.load(spec[1], eot_token=spec[2])
