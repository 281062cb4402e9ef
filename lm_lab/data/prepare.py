"""Prepare a corpus once: tokenise it in parallel into sharded memory-mapped token files plus `meta.json`.

Documents stream through in canonical order: a bounded number of batches is in flight in the worker
processes, and tokens are appended to the shard files as results come back (in order, so the output does
not depend on the number of processes). Memory stays bounded whatever the corpus size; the finished folder
appears atomically, so a crash never leaves half-prepared files that look complete.

    lm-lab prepare-data data=slimpajama_6b tokenizer=gpt2 [data.num_proc=16]
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from lm_lab.data.config import DataConfig
from lm_lab.data.files import Document, Tally, split_pieces
from lm_lab.data.shards import FORMAT_VERSION, TokenShards, held_out, read_meta, token_dtype
from lm_lab.data.sources import describe, documents, fingerprint, splits_read
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
    """Training-split documents in canonical order, up to `max_bytes`: validation text never shapes the BPE.

    Long documents are fed in pieces cut at pre-token boundaries (`files.cut`): the trainer counts the same
    words as from the whole text, in bounded memory."""
    seen = 0
    for doc in documents(cfg):
        if cfg.val_from is None and held_out(doc, cfg.val_fraction):
            continue
        for piece in split_pieces(doc) if isinstance(doc, str) else doc.pieces():
            yield piece
            seen += len(piece.encode("utf-8"))
            if seen >= max_bytes:
                return


# -- parallel tokenisation ----------------------------------------------------------------------------------

_worker: dict = {}


def _init_worker(spec: tuple, dtype: str, val_fraction: float | None, held_out_only: bool, in_pool: bool) -> None:
    tokenizer = tokenizer_from_spec(spec)
    if in_pool:  # one process per core already: no nested thread pools
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        tokenizer.threads = False
        _die_with_parent()
    _worker.update(tokenizer=tokenizer, dtype=np.dtype(dtype), val_fraction=val_fraction, held_out_only=held_out_only)


def _die_with_parent() -> None:
    """A worker whose parent process dies (killed, even by SIGKILL) exits at once instead of living on."""
    import multiprocessing.connection

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


class Task(NamedTuple):
    """Pieces of text for one worker: whole documents, or pieces of long ones (`first`/`last` mark the
    document's ends; `flag` is the held-out decision when the main process made it, for long documents)."""

    texts: list[str]
    flags: list[bool | None]
    first: list[bool]
    last: list[bool]
    hint: list[int]  # the document's size in UTF-8 bytes (at least its token count), to place shard ends
    n_read: int  # documents that start in this task


def _tokenize(task: Task) -> tuple[np.ndarray, np.ndarray, np.ndarray, Task]:
    """(tokens of every piece, end-of-text after each document's last, per-piece lengths, held-out flags, the
    task without its texts). With `held_out_only` (preparing only the validation split) the other documents
    are not tokenised at all (length 0)."""
    frac = _worker["val_fraction"]
    flags = np.array(
        [f if f is not None else bool(frac) and held_out(t, frac) for t, f in zip(task.texts, task.flags, strict=True)],
        dtype=bool,
    )
    keep = flags if _worker["held_out_only"] else np.ones(len(flags), dtype=bool)
    texts = [t for t, k in zip(task.texts, keep, strict=True) if k]
    ends = [e for e, k in zip(task.last, keep, strict=True) if k]
    tokens, kept = _worker["tokenizer"].encode_docs(texts, _worker["dtype"], ends=ends)
    lengths = np.zeros(len(flags), dtype=np.int64)
    lengths[keep] = kept
    return tokens, lengths, flags, task._replace(texts=[])


def ordered_map(fn: Callable, items: Iterable, processes: int, initializer: Callable, initargs: tuple) -> Iterator:
    """`map(fn, items)` over `processes` worker processes, results in order, at most 4 per process in flight.

    Leaving early (an error, a cap reached, SIGTERM) cancels what is queued and stops the workers at once."""
    if processes <= 1:
        initializer(*initargs)
        yield from map(fn, items)
        return
    # spawn, not fork: the tokenizers' Rust thread pools do not survive a fork
    ex = ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=initializer, initargs=initargs)
    finished = False
    try:
        pending: deque = deque()
        for item in items:
            pending.append(ex.submit(fn, item))
            if len(pending) >= 4 * processes:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
        finished = True
    finally:
        if finished:
            ex.shutdown(wait=True)
        else:
            ex.shutdown(wait=False, cancel_futures=True)
            if hasattr(ex, "terminate_workers"):  # Python >= 3.14
                ex.terminate_workers()
            else:
                for proc in list((getattr(ex, "_processes", None) or {}).values()):
                    proc.terminate()


def tasks(
    docs: Iterable[Document], frac: float | None, held_out_only: bool, max_chars: int = 1 << 20
) -> Iterator[Task]:
    """Documents as tasks of about `max_chars` of text, so the workers get even shares of work; a long document
    becomes pieces (its held-out decision made here, from a hash of all its pieces)."""
    task, size = Task([], [], [], [], [], 0), 0

    def add(text: str, flag: bool | None, first: bool, last: bool, hint: int) -> None:
        nonlocal size
        task.texts.append(text)
        task.flags.append(flag)
        task.first.append(first)
        task.last.append(last)
        task.hint.append(hint)
        size += len(text)

    for doc in docs:
        task = task._replace(n_read=task.n_read + 1)
        if isinstance(doc, str):
            add(doc, None, True, True, len(doc))
        else:
            flag = bool(frac) and held_out(doc, frac)
            if held_out_only and not flag:
                continue
            nbytes = doc.scan()[2]
            pieces = doc.pieces()
            current, first = next(pieces, ""), True
            for following in pieces:
                add(current, flag, first, False, nbytes)
                current, first = following, False
                if size >= max_chars:
                    yield task
                    task, size = Task([], [], [], [], [], 0), 0
            add(current, flag, first, True, nbytes)
        if size >= max_chars:
            yield task
            task, size = Task([], [], [], [], [], 0), 0
    if task.texts or task.n_read:
        yield task


class ShardWriter:
    """Appends documents' tokens to `<split>-NNNNN.bin` files of at most `shard_tokens` tokens (a document
    larger than that gets a shard of its own); documents never straddle shards. A long document arrives in
    pieces (`write(first=..., last=...)`); its shard is chosen at its first piece from its size hint."""

    def __init__(self, folder: Path, split: str, shard_tokens: int):
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.shards: list[dict] = []
        self.documents = 0
        self.tokens = 0
        self._file = None
        self._hash = hashlib.blake2b(digest_size=16)

    def add(self, tokens: np.ndarray) -> None:
        """One whole document."""
        self.write(tokens, first=True, last=True, hint=len(tokens))

    def write(self, tokens: np.ndarray, *, first: bool, last: bool, hint: int) -> None:
        if first and (
            self._file is None
            or (
                self.shards[-1]["tokens"]
                and self.shards[-1]["tokens"] + (len(tokens) if last else hint) > self.shard_tokens
            )
        ):
            self._next_shard()
        data = tokens.tobytes()
        self._file.write(data)
        self._hash.update(data)
        shard = self.shards[-1]
        shard["tokens"] += len(tokens)
        if len(tokens):
            shard["max_id"] = max(shard["max_id"], int(tokens.max()))
        self.tokens += len(tokens)
        if last:
            shard["documents"] += 1
            self.documents += 1

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


# -- the cache: temp folders of dead preparations, damaged folders ------------------------------------------

TEMP = re.compile(r"\.tmp\.(\d+)@(.+)\.[A-Za-z0-9_]+")


def _temp_prefix() -> str:
    return f".tmp.{os.getpid()}@{socket.gethostname().replace('.', '_')}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_dead_temps(folder: Path, max_age_other_hosts: float = 2 * 86400) -> list[Path]:
    """Remove the temp folders that preparations killed on this host (their pid is gone) left in `folder`, and
    those of other hosts (a shared file system) older than `max_age_other_hosts` seconds. Returns them."""
    removed = []
    host = socket.gethostname().replace(".", "_")
    for p in folder.glob(".tmp.*") if folder.is_dir() else []:
        m = TEMP.fullmatch(p.name)
        if not m or not p.is_dir():
            continue
        pid, owner = int(m.group(1)), m.group(2)
        dead = not _alive(pid) if owner == host else time.time() - p.stat().st_mtime > max_age_other_hosts
        if dead:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        log.info("removed %d temp folder(s) of killed preparations in %s", len(removed), folder)
    return removed


def damage(folder: Path, tokenizer: Tokenizer | None = None) -> str | None:
    """Why a token folder cannot be used (no or broken meta.json, a missing or truncated shard, another
    tokenizer), or None when it is complete."""
    try:
        meta = check_meta(folder, tokenizer) if tokenizer is not None else read_meta(folder)
        for split in meta["splits"]:
            TokenShards(folder, split, meta)
    except ConfigError as e:
        return str(e).split(";")[0]
    return None


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises SystemExit here (so the temp folder is removed) unless someone else handles it."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return

    def raise_exit(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# -- the job ------------------------------------------------------------------------------------------------


def prepare(cfg: DataConfig, tok_cfg: TokenizerConfig, *, val_only: bool = False, progress: bool = True) -> Path:
    """Token files for this corpus, split rule and tokenizer: found in the cache, or made now. Returns the folder.

    A folder that is damaged (no meta.json, a truncated shard) is rebuilt. With `val_only` (streaming mode)
    only the validation split is made, reading no further than needed.
    """
    out = token_dir(cfg, tok_cfg, val_only)
    if (out / "meta.json").exists() and damage(out) is None:
        return out
    tokenizer = get_tokenizer(cfg, tok_cfg)
    if out.exists():
        problem = damage(out, tokenizer)
        if problem is None:
            return out
        log.warning("token folder %s is damaged (%s): rebuilding it", out, problem)
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(out.parent)
    with _sigterm_raises(), logging_redirect_tqdm():
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=_temp_prefix()))
        try:
            meta = _prepare_into(tmp, cfg, tokenizer, val_only, progress)
            atomic_write_json(tmp / "meta.json", meta)
            try:
                tmp.rename(out)
            except OSError:  # another process finished the same folder first: its content is identical
                shutil.rmtree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    splits, dropped = meta["splits"], meta["held_out_beyond_cap"]
    train = "training streams on the fly" if val_only else f"{splits['train']['tokens']:,} train"
    log.info(
        "prepared %s in %.1f s: %s / %s val tokens (%d held-out docs beyond the cap left out) -> %s",
        cfg.name,
        meta["seconds"],
        train,
        f"{splits['val']['tokens']:,}",
        dropped["documents"],
        out,
    )
    return out


def _prepare_into(tmp: Path, cfg: DataConfig, tokenizer: Tokenizer, val_only: bool, progress: bool) -> dict:
    started = time.time()
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {"val": ShardWriter(tmp, "val", cfg.shard_tokens)}
    if not val_only:
        writers["train"] = ShardWriter(tmp, "train", cfg.shard_tokens)
    dropped = {"documents": 0, "tokens": 0}
    cap = cfg.val_split_tokens or float("inf")
    # (split to read, whether all of it is validation material): a validation split first, so that an
    # empty one is found before the long pass
    passes = [(cfg.val_from, True)] if cfg.val_from else []
    if not (val_only and cfg.val_from):
        passes.append((cfg.split, False))
    read = {}
    for split, all_val in passes:
        files = describe(cfg, split)
        tally = Tally()
        frac = None if cfg.val_from else cfg.val_fraction
        held_only = val_only and frac is not None
        initargs = (tokenizer.spec, dtype.name, frac, held_only, cfg.processes > 1)
        work = tasks(documents(cfg, split, tally), frac, held_only)
        dest = None
        with tqdm(desc=f"tokenising {cfg.name}/{split}", unit=" docs", disable=not progress, mininterval=1.0) as bar:
            for tokens, lengths, flags, task in ordered_map(_tokenize, work, cfg.processes, _init_worker, initargs):
                ends = np.cumsum(lengths)
                for i, (first, last) in enumerate(zip(task.first, task.last, strict=True)):
                    piece = tokens[ends[i] - lengths[i] : ends[i]]
                    if first:
                        is_val = bool(flags[i]) or all_val
                        if not is_val:
                            dest = writers.get("train")
                        elif writers["val"].tokens < cap:  # held out, in corpus order, until the cap
                            dest = writers["val"]
                        else:
                            dest = dropped
                            dropped["documents"] += 1
                    if dest is dropped:
                        dropped["tokens"] += len(piece)
                    elif dest is not None:
                        dest.write(piece, first=first, last=last, hint=task.hint[i])
                bar.update(task.n_read)
                bar.set_postfix(
                    tokens=f"{sum(w.tokens for w in writers.values()) + dropped['tokens']:.3g}", refresh=False
                )
                if (val_only or all_val) and writers["val"].tokens >= cap and task.last[-1:] != [False]:
                    break  # the validation split is full: the rest of it (or the training split) is not needed
        read[split] = {**tally.as_dict(), **(files or {})}
        log.info(
            "read %s documents of %s/%s (%d blank dropped%s)",
            f"{tally.documents:,}",
            cfg.name,
            split,
            tally.blank,
            f", {tally.bad} bad skipped: {tally.examples[0]}" if tally.bad else "",
        )
        if tally.documents == 0:
            raise tally.no_text(cfg, split)
        if (
            files
            and files["expected_documents"]
            and tally.documents + tally.blank + tally.bad < files["expected_documents"]
        ):
            log.warning(
                "split %r: read %s documents, the README's dataset_info counts %s (a partial download?)",
                split,
                f"{tally.documents:,}",
                f"{files['expected_documents']:,}",
            )
        if writers["val"].documents == 0 and split == cfg.split and not cfg.val_from:
            raise ConfigError(
                f"the validation split of data.path={cfg.path!r} is empty: no document of {tally.documents:,} was "
                f"held out at data.val_fraction={cfg.val_fraction}; raise it or set data.val_from"
            )
    splits = {name: w.close() for name, w in writers.items()}
    seconds = time.time() - started
    total = sum(s["tokens"] for s in splits.values()) + dropped["tokens"]
    return {
        "format": FORMAT_VERSION,
        "name": cfg.name,
        "source": cfg.source,
        "path": cfg.path,
        "config": cfg.config,
        "revision": cfg.revision,
        "split": cfg.split,
        "text_field": cfg.text_field,
        "txt_split": cfg.txt_split,
        "encoding": cfg.encoding,
        "on_bad_document": cfg.on_bad_document,
        "fingerprint": fingerprint(cfg),
        "val_fraction": cfg.val_fraction,
        "val_split_tokens": cfg.val_split_tokens,
        "val_from": cfg.val_from,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "splits": splits,
        "read": read,
        "held_out_beyond_cap": dropped,
        "seconds": round(seconds, 2),
        "tokens_per_sec": round(total / max(seconds, 1e-9)),
    }


def preflight(cfg: DataConfig, tok_cfg: TokenizerConfig) -> None:
    """Check a run's inputs before it starts, reading as little as possible: a hub tokenizer loads; token files
    already prepared are complete and made with this tokenizer (a damaged folder is announced: the run rebuilds
    it); a corpus still to prepare opens, its splits exist and each split read has a first document."""
    streaming = cfg.mode == "streaming"
    folder = token_dir(cfg, tok_cfg, val_only=streaming)
    trained = corpus_root(cfg) / f"{tok_cfg.cache_key}.tokenizer.json"
    tokenizer = None
    if tok_cfg.name != "bpe" or trained.exists():
        tokenizer = load_tokenizer(tok_cfg, trained_path=trained)
    if folder.exists():
        problem = damage(folder, tokenizer) if tokenizer is not None else "the BPE it was made with is gone"
        if problem is None and not streaming:
            return
        if problem is not None:
            log.warning("token folder %s cannot be used (%s): the run prepares it again", folder, problem)
    for split in splits_read(cfg):
        tally = Tally()
        if next(documents(cfg, split, tally), None) is None:
            raise tally.no_text(cfg, split)


def check_meta(token_dir: Path, tokenizer: Tokenizer) -> dict:
    """meta.json of `token_dir`, refusing files made with another tokenizer or vocabulary than the run's."""
    meta = read_meta(token_dir)
    if meta.get("format") != FORMAT_VERSION:
        raise ConfigError(
            f"{token_dir} was prepared by an older lm_lab (format {meta.get('format')}); `lm-lab prepare-data` "
            f"(or the run) rebuilds it"
        )
    if meta.get("tokenizer") != tokenizer.name or meta.get("vocab_size") != tokenizer.vocab_size:
        raise ConfigError(
            f"token files in {token_dir} were made with tokenizer {meta.get('tokenizer')} ({meta.get('vocab_size')} ids) but this "
            f"run uses {tokenizer.name} ({tokenizer.vocab_size} ids); `lm-lab prepare-data` (or the run) rebuilds them"
        )
    return meta
