"""Token files on disk: a deterministic document split, streaming tokenisation into memory-mapped files,
and the statistics a run reports about its data.

A token directory holds `meta.json` and one flat file of token ids per split (`train.bin`, `val.bin`),
each document followed by the end-of-text id. Files are written as documents stream through, so memory
stays bounded whatever the corpus size, and the directory appears atomically when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from lm_lab.data.embedded import Document
from lm_lab.data.tokenizers import Tokenizer
from lm_lab.errors import ConfigError
from lm_lab.fileio import atomic_write_json

SPLITS = ("train", "val")
FORMAT_VERSION = 1


def split_of(doc_id: str, val_fraction: float) -> str:
    """`val` or `train`, from a hash of the document id alone: the same on every run, machine and world size."""
    u = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def write_token_dir(
    out_dir: Path,
    documents: Iterable[Document],
    tokenizer: Tokenizer,
    val_fraction: float,
    *,
    info: dict,
    batch_docs: int = 64,
) -> dict:
    """Tokenise `documents` into `out_dir/{train,val}.bin` plus `meta.json`; return the metadata."""
    dtype = token_dtype(tokenizer.vocab_size)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    counts = {s: {"tokens": 0, "documents": 0} for s in SPLITS}
    try:
        with ExitStack() as stack:
            files = {s: stack.enter_context(open(tmp / f"{s}.bin", "wb")) for s in SPLITS}
            batch: list[Document] = []

            def flush() -> None:
                for doc, ids in zip(batch, tokenizer.encode_batch([d.text for d in batch]), strict=True):
                    split = split_of(doc.doc_id, val_fraction)
                    arr = np.asarray([*ids, tokenizer.eot_id], dtype=dtype)
                    files[split].write(arr.tobytes())
                    counts[split]["tokens"] += len(arr)
                    counts[split]["documents"] += 1
                batch.clear()

            for doc in documents:
                batch.append(doc)
                if len(batch) >= batch_docs:
                    flush()
            flush()
        meta = {
            "format": FORMAT_VERSION,
            **info,
            "tokenizer": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype.name,
            "val_fraction": val_fraction,
            "splits": {s: {**counts[s], "file": f"{s}.bin"} for s in SPLITS},
        }
        atomic_write_json(tmp / "meta.json", meta)
        try:
            tmp.rename(out_dir)
        except OSError:  # another process finished the same directory first: its content is identical
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def read_meta(token_dir: Path) -> dict:
    return json.loads((token_dir / "meta.json").read_text())


def open_split(token_dir: Path, split: str, meta: dict | None = None) -> np.memmap:
    """Memory-map one split's tokens, checking the file holds exactly the tokens meta.json promises."""
    meta = meta or read_meta(token_dir)
    info = meta["splits"][split]
    path = token_dir / info["file"]
    dtype = np.dtype(meta["dtype"])
    expected = info["tokens"] * dtype.itemsize
    size = path.stat().st_size if path.exists() else None
    if size != expected:
        raise ConfigError(
            f"token file {path} has {size} bytes but meta.json promises {info['tokens']} tokens ({expected} bytes); "
            f"it is missing or truncated: delete {token_dir} and it will be prepared again"
        )
    return np.memmap(path, dtype=dtype, mode="r")


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats of the tokens' empirical unigram distribution.

    It is the cross-entropy of the best model that knows only token frequencies (and knows them on this very
    data), so a validation loss well below it means the model learned context, not just frequencies.
    """
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
