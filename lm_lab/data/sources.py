"""Where documents come from: the embedded corpus, local files, or a Hugging Face dataset, all read in one
fixed (canonical) order, in batches of texts, through Hugging Face `datasets` for everything but the
embedded corpus. Nothing here downloads by hand: hub data goes through `datasets` and its cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from lm_lab.data.config import DataConfig
from lm_lab.data.embedded import embedded_documents
from lm_lab.data.tokenizers import offline, reachable
from lm_lab.errors import ConfigError

TEXT_SUFFIXES = {".txt"}
ROW_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
DATA_SUFFIXES = TEXT_SUFFIXES | set(ROW_FORMATS) | {".arrow", ".csv", ".gz", ".zst", ".bz2", ".xz"}
SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


def _offline() -> bool:
    return offline("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def _data_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def fingerprint(cfg: DataConfig) -> str:
    """Identity of the corpus for cache folder names, computed without reading the documents.

    embedded: a hash of its content (it is small); local: the files' paths, sizes and modification times;
    hub: the dataset id, configuration and revision (pin `data.revision` for data that cannot change).
    """
    h = hashlib.sha256()
    if cfg.source == "embedded":
        for doc in embedded_documents():
            h.update(doc.doc_id.encode() + b"\0" + doc.text.encode("utf-8") + b"\0")
    elif cfg.source == "local":
        root = Path(cfg.path).expanduser().resolve()
        for f in _data_files(root):
            st = f.stat()
            h.update(f"{f.relative_to(root) if root.is_dir() else f.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    else:
        h.update(f"{cfg.path}\0{cfg.config}\0{cfg.revision}".encode())
    h.update(f"\0{cfg.split}\0{cfg.val_from}\0{cfg.text_field}".encode())
    return h.hexdigest()[:12]


def _one_split(cfg: DataConfig, split: str, what: str) -> None:
    """Sources without named splits hold only `train`: asking for another would silently read the same documents."""
    if split != "train":
        raise ConfigError(
            f"data.path={cfg.path!r} is {what} with no named splits, so split {split!r} does not exist; "
            f"leave data.split=train and data.val_from=null (validation is then held out by data.val_fraction)"
        )


def open_dataset(cfg: DataConfig, split: str, streaming: bool = True):
    """The `datasets` dataset of a local or hub source's `split`: iterable when `streaming` (except for a hub
    dataset with HF_DATASETS_OFFLINE set, which is read from the `datasets` cache)."""
    import datasets

    if cfg.source == "hub":
        if not _offline() and not reachable("huggingface.co"):
            raise ConfigError(
                f"data.path={cfg.path!r}: huggingface.co cannot be reached; prepare the data on a machine with internet "
                f"(`lm-lab prepare-data data={cfg.name}`) and copy data.cache_dir here, or, if `datasets` has downloaded "
                f"it already (data.download_first=true), set HF_DATASETS_OFFLINE=1"
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
    root = Path(cfg.path).expanduser()
    if root.is_dir() and any((root / m).exists() for m in SAVED_MARKERS):  # datasets.save_to_disk
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
    files = [f for f in _data_files(root) if f.suffix in DATA_SUFFIXES]  # README.md, LICENSE ... are not data
    if not files:
        raise ConfigError(f"data.path={cfg.path!r} holds no data files ({', '.join(sorted(DATA_SUFFIXES))})")
    try:
        if {f.suffix for f in files} <= TEXT_SUFFIXES:  # each .txt file is one document
            _one_split(cfg, split, "a folder of text files")
            return datasets.load_dataset(
                "text", data_files=[str(f) for f in files], sample_by="document", split="train", streaming=streaming
            )
        if root.is_file():
            _one_split(cfg, split, "a single file")
            return datasets.load_dataset(
                ROW_FORMATS[root.suffix], data_files=[str(root)], split="train", streaming=streaming
            )
        # a folder of row files, or laid out like a hub dataset: let `datasets` infer format and splits
        return datasets.load_dataset(str(root), split=split, streaming=streaming)
    except ValueError as e:  # e.g. an unknown split name
        raise ConfigError(f"data.path={cfg.path!r} could not be read as a dataset: {e}") from e


def iter_texts(cfg: DataConfig, split: str | None = None, batch_size: int = 256) -> Iterator[list[str]]:
    """The documents of `split` (default `cfg.split`) in canonical order, in batches of texts."""
    split = split or cfg.split
    if cfg.source == "embedded":
        texts = [d.text for d in embedded_documents()]
        for i in range(0, len(texts), batch_size):
            yield texts[i : i + batch_size]
        return
    ds = open_dataset(cfg, split, streaming=not cfg.download_first)
    yield from texts_of(ds, cfg, batch_size)


def texts_of(ds, cfg: DataConfig, batch_size: int = 256) -> Iterator[list[str]]:
    """Batches of the `text_field` of a `datasets` dataset, with a clear error when the field is missing or empty."""
    seen_text = False
    for n, batch in enumerate(ds.iter(batch_size=batch_size)):
        if cfg.text_field not in batch:
            raise ConfigError(
                f"data.text_field={cfg.text_field!r} is not a column of data.path={cfg.path!r}; "
                f"its columns are {sorted(batch)}: set data.text_field"
            )
        texts = [t for t in batch[cfg.text_field] if t]
        seen_text = seen_text or bool(texts)
        if not seen_text and n * batch_size >= 1000:
            break
        yield texts
    if not seen_text:
        raise ConfigError(
            f"data.text_field={cfg.text_field!r} of data.path={cfg.path!r} is empty in the first documents; "
            f"set data.text_field to the column that holds the text"
        )
