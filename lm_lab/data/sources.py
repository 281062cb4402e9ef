"""Where documents come from: the embedded corpus, local files, or a Hugging Face dataset, all read in one
fixed (canonical) order, in batches of texts, through Hugging Face `datasets` for everything but the
embedded corpus. Nothing here downloads by hand: hub data goes through `datasets` and its cache.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

from lm_lab.data.config import DataConfig
from lm_lab.data.embedded import embedded_documents
from lm_lab.data.files import (
    SAVED_MARKERS,
    Document,
    Layout,
    ReadSettings,
    Tally,
    file_format,
    read_documents,
    resolve,
)
from lm_lab.data.tokenizers import offline, reachable
from lm_lab.errors import ConfigError

log = logging.getLogger(__name__)


def _offline() -> bool:
    return offline("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def _saved_to_disk(root: Path) -> bool:
    return root.is_dir() and any((root / m).exists() for m in SAVED_MARKERS)


def read_settings(cfg: DataConfig) -> ReadSettings:
    return ReadSettings(cfg.text_field, cfg.txt_split, cfg.encoding, cfg.encoding_errors, cfg.on_bad_document)


def layout(cfg: DataConfig) -> Layout:
    """Which local files form which split (`files.resolve`): a local source or a hub dataset's local copy."""
    return resolve(cfg.path, cfg.config)


def splits_read(cfg: DataConfig) -> list[str]:
    """The splits a run reads: validation first when it comes from its own split."""
    return [cfg.val_from, cfg.split] if cfg.val_from else [cfg.split]


@functools.lru_cache(maxsize=1)
def _embedded_fingerprint() -> bytes:  # the interpreter's standard library does not change under a process
    h = hashlib.sha256()
    for doc in embedded_documents():
        h.update(doc.doc_id.encode() + b"\0" + doc.text.encode("utf-8") + b"\0")
    return h.digest()


def fingerprint(cfg: DataConfig) -> str:
    """Identity of the corpus for cache folder names, computed without reading the documents.

    embedded: a hash of its content; local files (a local source, or a hub dataset's local copy): the README
    config and the names, sizes and modification times of the files of the splits read; hub: the dataset id, configuration and
    revision (pin `data.revision` for data that cannot change). Every field that changes how files become
    documents is part of it too.
    """
    h = hashlib.sha256()
    if cfg.source == "embedded":
        h.update(_embedded_fingerprint())
    elif cfg.is_local:
        root = Path(cfg.path).expanduser().resolve()
        if _saved_to_disk(root):
            files = [f for f in sorted(root.rglob("*")) if f.is_file()]
        else:
            found = layout(cfg)
            root = found.root
            h.update(f"config={found.config}\0".encode())
            files = [f for split in splits_read(cfg) for f in found.splits.get(split, [])]
        for f in files:  # a copy that keeps modification times (rsync -a, cp -p) keeps its cache
            st = f.stat()
            h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    else:
        h.update(f"{cfg.path}\0{cfg.config}\0{cfg.revision}".encode())
    h.update(f"\0{cfg.split}\0{cfg.val_from}\0{cfg.text_field}".encode())
    if cfg.source != "embedded":
        h.update(f"\0{cfg.txt_split}\0{cfg.encoding}\0{cfg.encoding_errors}\0{cfg.on_bad_document}".encode())
    return h.hexdigest()[:12]


def _one_split(cfg: DataConfig, split: str, what: str) -> None:
    """Sources without named splits hold only `train`: asking for another would silently read the same documents."""
    if split != "train":
        raise ConfigError(
            f"data.path={cfg.path!r} is {what} with no named splits, so split {split!r} does not exist; "
            f"leave data.split=train and data.val_from=null (validation is then held out by data.val_fraction)"
        )


def _generate(files: list[str], settings: dict) -> Iterator[dict]:
    """Rows of a local stream (`datasets.IterableDataset.from_generator`: one shard per file)."""
    for doc in read_documents([Path(f) for f in files], ReadSettings(**settings), Tally()):
        yield {"text": doc if isinstance(doc, str) else doc.text()}


def open_dataset(cfg: DataConfig, split: str, streaming: bool = True):
    """The `datasets` dataset of a local or hub source's `split`: iterable when `streaming` (except for a hub
    dataset with HF_DATASETS_OFFLINE set, which is read from the `datasets` cache). Local files stream from the
    files themselves, one shard per file, so shuffling and splitting across ranks work on whole files."""
    import datasets

    if cfg.is_local:
        root = Path(cfg.path).expanduser()
        if _saved_to_disk(root):  # datasets.save_to_disk
            ds = datasets.load_from_disk(str(root))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ConfigError(
                        f"data.path={cfg.path!r} has splits {list(ds)}, not {split!r}; set data.split / data.val_from"
                    )
                ds = ds[split]
            else:
                _one_split(cfg, split, "a saved dataset")
            return ds.to_iterable_dataset() if streaming else ds
        files = layout(cfg).files(split, f"data.path={cfg.path!r}")
        settings = vars(read_settings(cfg))
        return datasets.IterableDataset.from_generator(
            _generate, gen_kwargs={"files": [str(f) for f in files], "settings": settings}
        )
    if not _offline() and not reachable("huggingface.co"):
        raise ConfigError(
            f"data.path={cfg.path!r}: huggingface.co cannot be reached; download the dataset on a machine with "
            f"internet (`hf download {cfg.path} --repo-type dataset --local-dir DIR`, see the README's "
            f"Data section) and set data.path=DIR, or copy a prepared data.cache_dir here"
        )
    try:
        return datasets.load_dataset(
            cfg.path,
            cfg.config,
            split=split,
            revision=cfg.revision,
            cache_dir=cfg.hf_cache_dir,
            streaming=streaming and not _offline(),
        )
    except ImportError as e:  # e.g. .jsonl.zst files without zstandard
        raise ConfigError(f"data.path={cfg.path!r} needs a package to decompress its files: {e}") from e
    except RuntimeError as e:
        if "scripts are no longer supported" not in str(e):
            raise
        raise ConfigError(
            f"data.path={cfg.path!r} is a script-based dataset, which `datasets` no longer runs; use a Parquet "
            f"mirror, or data.revision=refs/convert/parquet (the Hub's automatic conversion, partial for large datasets)"
        ) from e
    except (ConnectionError, FileNotFoundError, ValueError) as e:
        raise ConfigError(
            f"data.path={cfg.path!r} (config {cfg.config!r}, split {split!r}) could not be loaded: {e}"
        ) from e


def describe(cfg: DataConfig, split: str) -> dict | None:
    """What a local split holds, logged before it is read: its files (names and sizes, for meta.json) and,
    for a partial download, what is missing. None for the embedded corpus and hub streams."""
    if not cfg.is_local or _saved_to_disk(Path(cfg.path).expanduser()):
        return None
    found = layout(cfg)
    files = found.files(split, f"data.path={cfg.path!r}")
    rule = f"; .txt as one document per {cfg.txt_split}" if any(file_format(f)[0] == "text" for f in files) else ""
    config = f" (README.md config {found.config!r})" if found.config else ""
    log.info("reading split %r of %s%s: %s%s", split, cfg.path, config, found.describe(split), rule)
    partial = found.partial(split)
    if partial:
        log.warning("data.path=%r: %s", cfg.path, partial)
    return {
        "config": found.config,
        "files": [[str(f.relative_to(found.root)), f.stat().st_size] for f in files],
        "expected_documents": found.expected.get(split),
        "partial": partial,
    }


def documents(cfg: DataConfig, split: str | None = None, tally: Tally | None = None) -> Iterator[Document]:
    """The documents of `split` (default `cfg.split`) in canonical order: str, or `LongText` for long ones."""
    split = split or cfg.split
    tally = tally if tally is not None else Tally()
    if cfg.source == "embedded":
        for d in embedded_documents():
            tally.documents += 1
            yield d.text
        return
    if cfg.is_local and not _saved_to_disk(Path(cfg.path).expanduser()):
        yield from read_documents(layout(cfg).files(split, f"data.path={cfg.path!r}"), read_settings(cfg), tally)
        return
    ds = open_dataset(cfg, split, streaming=not cfg.download_first)
    yield from _dataset_documents(ds, cfg, tally)


def _dataset_documents(ds, cfg: DataConfig, tally: Tally, batch_size: int = 256) -> Iterator[str]:
    """The texts of a `datasets` dataset's `text_field` (dotted for nested fields), each checked to be a string."""
    top = cfg.text_field.split(".")[0]
    row = 0
    for batch in ds.iter(batch_size=batch_size):
        column = cfg.text_field if cfg.text_field in batch else top
        if column not in batch:
            raise ConfigError(
                f"data.text_field={cfg.text_field!r} is not a column of data.path={cfg.path!r}; "
                f"its columns are {sorted(batch)}: set data.text_field"
            )
        for value in batch[column]:
            row += 1
            if column != cfg.text_field:
                for part in cfg.text_field.split(".")[1:]:
                    value = value.get(part) if isinstance(value, dict) else None
            if value is not None and not isinstance(value, str):
                reason = (
                    f"data.path={cfg.path!r} row {row}: data.text_field={cfg.text_field!r} holds {repr(value)[:40]} "
                    f"({type(value).__name__}), not a string"
                )
                if cfg.on_bad_document == "skip":
                    tally.skip(reason)
                    continue
                raise ConfigError(f"{reason}; set data.text_field, or data.on_bad_document=skip")
            if not value or not value.strip():
                tally.blank += 1
                if tally.documents == 0 and row >= 1000:
                    raise ConfigError(
                        f"data.text_field={cfg.text_field!r} of data.path={cfg.path!r} is empty in the first {row} rows; "
                        f"set data.text_field to the column that holds the text"
                    )
                continue
            tally.documents += 1
            yield value


def batched(docs: Iterator, size: int) -> Iterator[list]:
    batch = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def texts_of(ds, cfg: DataConfig, batch_size: int = 256) -> Iterator[list[str]]:
    """Batches of the texts of a `datasets` dataset (a stream), checked as `documents` checks them."""
    yield from batched(_dataset_documents(ds, cfg, Tally(), batch_size), batch_size)
