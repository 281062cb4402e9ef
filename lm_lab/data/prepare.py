"""Prepare a corpus once: tokenise it in parallel into sharded memory-mapped token files plus `meta.json`.

Documents stream through in canonical order: a bounded number of batches is in flight in the worker
processes, and tokens are appended to the shard files as results come back (in order, so the output does
not depend on the number of processes). Memory stays bounded whatever the corpus size; the finished folder
appears atomically, so a crash never leaves half-prepared files that look complete.

    lm-lab prepare-data data=slimpajama_6b tokenizer=gpt2 [data.num_proc=16]
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lm_lab.data.config import DataConfig
from lm_lab.data.shards import FORMAT_VERSION, TokenShards, held_out, read_meta, token_dtype
from lm_lab.data.sources import fingerprint, iter_texts
from lm_lab.data.tokenizers import BPETokenizer, Tokenizer, TokenizerConfig, load_tokenizer, tokenizer_from_spec
from lm_lab.errors import ConfigError
from lm_lab.fileio import atomic_write_json

log = logging.getLogger(__name__)


# -- where things live --------------------------------------------------------------------------------------


def corpus_root(cfg: DataConfig) -> Path:
    """`cache_dir/<name>-<fingerprint>/<split rule>/`: everything derived from this corpus under this split rule."""
    return Path(cfg.cache_dir).expanduser() / f"{cfg.name}-{fingerprint(cfg)}" / cfg.split_key


def token_dir(cfg: DataConfig, tok_cfg: TokenizerConfig, val_only: bool = False) -> Path:
    return corpus_root(cfg) / (tok_cfg.cache_key + ("-valonly" if val_only else ""))


def get_tokenizer(cfg: DataConfig, tok_cfg: TokenizerConfig) -> Tokenizer:
    """Load the run's tokenizer; a `bpe` one is trained first (on the training split only) if not cached."""
    if tok_cfg.name != "bpe":
        return load_tokenizer(tok_cfg)
    path = corpus_root(cfg) / f"{tok_cfg.cache_key}.tokenizer.json"
    if not path.exists():
        log.info(
            "training a %d-id byte-level BPE on up to %.3g bytes of %s's training split (once; cached at %s)",
            tok_cfg.vocab_size,
            tok_cfg.train_bytes,
            cfg.name,
            path,
        )
        BPETokenizer.train(_training_texts(cfg, tok_cfg.train_bytes), tok_cfg.vocab_size).save(path)
    return load_tokenizer(tok_cfg, trained_path=path)


def _training_texts(cfg: DataConfig, max_bytes: int) -> Iterator[str]:
    """Training-split documents in canonical order, up to `max_bytes`: validation text never shapes the BPE."""
    seen = 0
    for texts in iter_texts(cfg):
        for text in texts:
            if cfg.val_from is None and held_out(text, cfg.val_fraction):
                continue
            yield text
            seen += len(text.encode("utf-8"))
            if seen >= max_bytes:
                return


# -- parallel tokenisation ----------------------------------------------------------------------------------

_worker: dict = {}


def _init_worker(spec: tuple, dtype: str, val_fraction: float | None, held_out_only: bool, in_pool: bool) -> None:
    tokenizer = tokenizer_from_spec(spec)
    if in_pool:  # one process per core already: no nested thread pools
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        tokenizer.threads = False
    _worker.update(tokenizer=tokenizer, dtype=np.dtype(dtype), val_fraction=val_fraction, held_out_only=held_out_only)


def _tokenize(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(all tokens with end-of-text after each document, per-document lengths, held-out flags, documents read).

    With `held_out_only` (preparing only the validation split) the other documents are not tokenised at all.
    """
    frac = _worker["val_fraction"]
    flags = np.array([held_out(t, frac) for t in texts] if frac else [False] * len(texts), dtype=bool)
    n_read = len(texts)
    if _worker["held_out_only"]:
        texts = [t for t, f in zip(texts, flags, strict=True) if f]
        flags = np.ones(len(texts), dtype=bool)
    tokens, lengths = _worker["tokenizer"].encode_docs(texts, _worker["dtype"])
    return tokens, lengths, flags, n_read


def ordered_map(fn: Callable, items: Iterable, processes: int, initializer: Callable, initargs: tuple) -> Iterator:
    """`map(fn, items)` over `processes` worker processes, results in order, at most 4 per process in flight."""
    if processes <= 1:
        initializer(*initargs)
        yield from map(fn, items)
        return
    # spawn, not fork: the tokenizers' Rust thread pools do not survive a fork
    with ProcessPoolExecutor(
        processes, mp_context=get_context("spawn"), initializer=initializer, initargs=initargs
    ) as ex:
        pending: deque = deque()
        for item in items:
            pending.append(ex.submit(fn, item))
            if len(pending) >= 4 * processes:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def chunks(batches: Iterable[list[str]], max_bytes: int = 1 << 20) -> Iterator[list[str]]:
    """Re-batch documents into tasks of about `max_bytes` of text, so the workers get even shares of work."""
    chunk, size = [], 0
    for texts in batches:
        for text in texts:
            chunk.append(text)
            size += len(text)
            if size >= max_bytes:
                yield chunk
                chunk, size = [], 0
    if chunk:
        yield chunk


class ShardWriter:
    """Appends documents' tokens to `<split>-NNNNN.bin` files of at most `shard_tokens` tokens (a document
    larger than that gets a shard of its own); documents never straddle shards."""

    def __init__(self, folder: Path, split: str, shard_tokens: int):
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.shards: list[dict] = []
        self.documents = 0
        self.tokens = 0
        self._file = None
        self._hash = hashlib.blake2b(digest_size=16)

    def add(self, tokens: np.ndarray) -> None:
        if self._file is None or (
            self.shards[-1]["tokens"] and self.shards[-1]["tokens"] + len(tokens) > self.shard_tokens
        ):
            self._next_shard()
        data = tokens.tobytes()
        self._file.write(data)
        self._hash.update(data)
        self.shards[-1]["tokens"] += len(tokens)
        self.shards[-1]["documents"] += 1
        if len(tokens):
            self.shards[-1]["max_id"] = max(self.shards[-1]["max_id"], int(tokens.max()))
        self.documents += 1
        self.tokens += len(tokens)

    def _next_shard(self) -> None:
        if self._file is not None:
            self._file.close()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._file = open(self.folder / name, "wb")  # noqa: SIM115 - closed in _next_shard/close
        self.shards.append({"file": name, "tokens": 0, "documents": 0, "max_id": -1})

    def close(self) -> dict:
        if self._file is None:
            self._next_shard()  # an empty split still has one (empty) shard
        self._file.close()
        tokens = sum(s["tokens"] for s in self.shards)
        return {
            "tokens": tokens,
            "documents": self.documents,
            "shards": self.shards,
            "content_hash": self._hash.hexdigest(),
        }


# -- the job ------------------------------------------------------------------------------------------------


def prepare(cfg: DataConfig, tok_cfg: TokenizerConfig, *, val_only: bool = False, progress: bool = True) -> Path:
    """Token files for this corpus, split rule and tokenizer: found in the cache, or made now. Returns the folder.

    With `val_only` (streaming mode) only the validation split is made, reading no further than needed.
    """
    out = token_dir(cfg, tok_cfg, val_only)
    if (out / "meta.json").exists():
        return out
    tokenizer = get_tokenizer(cfg, tok_cfg)
    dtype = token_dtype(tokenizer.vocab_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    started = time.time()
    try:
        writers = {"val": ShardWriter(tmp, "val", cfg.shard_tokens)}
        if not val_only:
            writers["train"] = ShardWriter(tmp, "train", cfg.shard_tokens)
        dropped = {"documents": 0, "tokens": 0}
        cap = cfg.val_split_tokens or float("inf")
        # (split to read, whether all of it is validation material)
        passes = [(cfg.val_from, True)] if cfg.val_from else []
        if not (val_only and cfg.val_from):
            passes.append((cfg.split, False))
        for split, all_val in passes:
            frac = None if cfg.val_from else cfg.val_fraction
            initargs = (tokenizer.spec, dtype.name, frac, val_only and frac is not None, cfg.processes > 1)
            bar = tqdm(desc=f"tokenising {cfg.name}/{split}", unit=" docs", disable=not progress, mininterval=1.0)
            results = ordered_map(_tokenize, chunks(iter_texts(cfg, split)), cfg.processes, _init_worker, initargs)
            for tokens, lengths, held, n_read in results:
                for doc, is_val in zip(np.split(tokens, np.cumsum(lengths)[:-1]), held | all_val, strict=True):
                    if not is_val:
                        if "train" in writers:
                            writers["train"].add(doc)
                    elif writers["val"].tokens < cap:  # held out, in corpus order, until the cap
                        writers["val"].add(doc)
                    else:
                        dropped["documents"] += 1
                        dropped["tokens"] += len(doc)
                bar.update(n_read)
                bar.set_postfix(
                    tokens=f"{sum(w.tokens for w in writers.values()) + dropped['tokens']:.3g}", refresh=False
                )
                if val_only and writers["val"].tokens >= cap:
                    break  # streaming mode: the training documents are read later, on the fly
            bar.close()
        splits = {name: w.close() for name, w in writers.items()}
        seconds = time.time() - started
        total = sum(s["tokens"] for s in splits.values()) + dropped["tokens"]
        meta = {
            "format": FORMAT_VERSION,
            "name": cfg.name,
            "source": cfg.source,
            "path": cfg.path,
            "config": cfg.config,
            "revision": cfg.revision,
            "split": cfg.split,
            "text_field": cfg.text_field,
            "fingerprint": fingerprint(cfg),
            "val_fraction": cfg.val_fraction,
            "val_split_tokens": cfg.val_split_tokens,
            "val_from": cfg.val_from,
            "tokenizer": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "dtype": dtype.name,
            "splits": splits,
            "held_out_beyond_cap": dropped,
            "seconds": round(seconds, 2),
            "tokens_per_sec": round(total / max(seconds, 1e-9)),
        }
        atomic_write_json(tmp / "meta.json", meta)
        try:
            tmp.rename(out)
        except OSError:  # another process finished the same folder first: its content is identical
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    train = "training streams on the fly" if val_only else f"{splits['train']['tokens']:,} train"
    log.info(
        "prepared %s in %.1f s: %s / %s val tokens (%d held-out docs beyond the cap left out) -> %s",
        cfg.name,
        seconds,
        train,
        f"{splits['val']['tokens']:,}",
        dropped["documents"],
        out,
    )
    return out


def preflight(cfg: DataConfig, tok_cfg: TokenizerConfig) -> None:
    """Check a run's inputs before it starts, reading as little as possible: a hub tokenizer loads; token files
    already prepared are complete and made with this tokenizer; a corpus still to prepare opens, and its first
    documents have the text field."""
    streaming = cfg.mode == "streaming"
    folder = token_dir(cfg, tok_cfg, val_only=streaming)
    trained = corpus_root(cfg) / f"{tok_cfg.cache_key}.tokenizer.json"
    tokenizer = None
    if tok_cfg.name != "bpe" or trained.exists():
        tokenizer = load_tokenizer(tok_cfg, trained_path=trained)
    if (folder / "meta.json").exists():
        if tokenizer is None:
            raise ConfigError(
                f"token files in {folder} exist but the BPE they were made with ({trained}) is gone; delete {folder}"
            )
        meta = check_meta(folder, tokenizer)
        for split in meta["splits"]:
            TokenShards(folder, split, meta)  # every shard present and complete
    if streaming or not (folder / "meta.json").exists():
        next(iter_texts(cfg, batch_size=8), None)


def check_meta(token_dir: Path, tokenizer: Tokenizer) -> dict:
    """meta.json of `token_dir`, refusing files made with another tokenizer or vocabulary than the run's."""
    meta = read_meta(token_dir)
    if meta.get("format") != FORMAT_VERSION:
        raise ConfigError(
            f"{token_dir} was prepared by an older lm_lab (format {meta.get('format')}); delete it to prepare again"
        )
    if meta.get("tokenizer") != tokenizer.name or meta.get("vocab_size") != tokenizer.vocab_size:
        raise ConfigError(
            f"token files in {token_dir} were made with tokenizer {meta.get('tokenizer')} ({meta.get('vocab_size')} ids) but this "
            f"run uses {tokenizer.name} ({tokenizer.vocab_size} ids); delete {token_dir} to prepare them again"
        )
    return meta
