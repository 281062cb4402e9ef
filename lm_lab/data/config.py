"""`DataConfig`: which corpus a run reads, how it is split and tokenised, where its token files live."""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass
from pathlib import Path

from lm_lab.data.files import BAD_DOCUMENT, TXT_SPLITS
from lm_lab.errors import raise_if

SOURCES = ("embedded", "local", "hub")
MODES = ("prepared", "streaming")


@dataclass
class DataConfig:
    """A corpus and how the run reads it. Each `conf/data/*.yaml` names one."""

    name: str = "embedded"
    """Label of the corpus, used in cache folder names and logs."""
    source: str = "embedded"
    """`embedded` (the Python standard library), `local` (files on disk) or `hub` (a Hugging Face dataset)."""
    path: str | None = None
    """`hub`: the dataset id (`DKYoon/SlimPajama-6B`), or a folder holding a local copy of it (read by the hub
    dataset's own configs and splits, no network); `local`: a file or folder of .txt, .jsonl/.json, .csv or
    .parquet files (the text ones also .gz/.bz2/.xz/.zst), a `datasets.save_to_disk` folder, or a folder laid
    out like a hub dataset (README.md `configs:`, or split names in file names: data/train-*.parquet)."""
    config: str | None = None
    """The dataset configuration, e.g. `sample-10BT` for FineWeb-Edu: on the hub, or in a local README.md's
    `configs:` (None: the default one)."""
    revision: str | None = None
    """`hub`: a commit or tag to pin the data to (recommended for published results)."""
    split: str = "train"
    """The dataset split the training documents come from."""
    text_field: str = "text"
    """Column (or row field) holding each document's text; a dotted name reads a nested field (`meta.text`)."""
    txt_split: str = "file"
    """`.txt` files: `file` (each file is one document), `line` (each line) or `paragraph` (each run of
    non-blank lines)."""
    encoding: str = "utf-8"
    """Text encoding of local files (Parquet stores its own)."""
    encoding_errors: str = "strict"
    """`strict`: an undecodable byte stops the read with the file and offset named; `replace`: read it as U+FFFD."""
    on_bad_document: str = "error"
    """A row that cannot be read (invalid JSON, no text field, a text that is not a string): `error` stops with
    the file and row named; `skip` counts and skips it (reported, and recorded in meta.json)."""
    mode: str = "prepared"
    """`prepared`: tokenise once into sharded memory-mapped files (`lm-lab prepare-data`, or automatically
    at the first run) and train from them; `streaming`: tokenise on the fly from a `datasets` stream."""
    val_fraction: float = 0.1
    """Probability that a document is held out for validation, decided by a hash of its text: the same on
    every run, machine and world size, and exact duplicates always fall on the same side."""
    val_split_tokens: int | None = None
    """Cap on the validation split in tokens (held-out documents are taken in corpus order until it is
    reached; later ones are left out of both splits); None keeps every held-out document."""
    val_from: str | None = None
    """Take validation documents from this split of the dataset (e.g. `validation`) instead of holding
    documents out of the training split; `val_split_tokens` still caps it."""
    download_first: bool = False
    """Preparing a hub dataset: False streams it through (no second copy on disk); True downloads it into the
    `datasets` cache first (a broken connection resumes, and HF_DATASETS_OFFLINE=1 works afterwards)."""
    cache_dir: str | None = None
    """Token files and trained tokenizers live here, one folder per corpus, split rule and tokenizer; None:
    $LM_LAB_CACHE, else ~/.cache/lm_lab."""
    hf_cache_dir: str | None = None
    """Where `datasets` caches downloads; None uses its default (HF_HOME / HF_DATASETS_CACHE)."""
    num_proc: int | None = None
    """Processes that tokenise while preparing; None uses every CPU core."""
    shard_tokens: int = 2**27
    """Tokens per shard file when preparing (2^27 = 134M tokens, 256 MiB as uint16)."""
    shuffle_buffer: int = 10_000
    """`streaming`: documents in the shuffle buffer."""
    num_workers: int = 0
    """DataLoader worker processes; reading windows from memory maps is cheap, so 0 is usually right."""

    def __post_init__(self) -> None:
        if self.cache_dir is None:
            self.cache_dir = os.environ.get("LM_LAB_CACHE") or "~/.cache/lm_lab"
        problems = []
        if self.source not in SOURCES:
            problems.append(f"data.source={self.source!r} is unknown; choose one of {list(SOURCES)}")
        if self.mode not in MODES:
            problems.append(f"data.mode={self.mode!r} is unknown; choose one of {list(MODES)}")
        if self.source in ("local", "hub") and not self.path:
            problems.append(f"data.path is required for data.source={self.source!r}")
        if self.source == "local" and self.path and not Path(self.path).expanduser().exists():
            problems.append(f"data.path={self.path!r} does not exist; point it at a folder or file of documents")
        if self.source == "hub" and self.path and self.path.startswith(("/", ".", "~")) and not self.is_local:
            problems.append(
                f"data.path={self.path!r} does not exist; point it at the folder holding the local copy of the dataset"
            )
        for name, allowed in (("txt_split", TXT_SPLITS), ("on_bad_document", BAD_DOCUMENT)):
            if getattr(self, name) not in allowed:
                problems.append(f"data.{name}={getattr(self, name)!r} is unknown; choose one of {list(allowed)}")
        try:
            codecs.lookup(self.encoding)
        except (LookupError, TypeError):
            problems.append(f"data.encoding={self.encoding!r} is not an encoding Python knows; e.g. utf-8 or latin-1")
        try:
            codecs.lookup_error(self.encoding_errors)
        except (LookupError, TypeError):
            problems.append(f"data.encoding_errors={self.encoding_errors!r} is unknown; choose strict or replace")
        if self.mode == "streaming" and self.val_split_tokens is None:
            problems.append(
                "data.mode=streaming needs data.val_split_tokens (how much validation text to hold out), e.g. 3000000"
            )
        if self.source == "embedded" and self.val_from is not None:
            problems.append(
                "data.val_from needs a dataset with named splits; the embedded corpus holds out data.val_fraction"
            )
        if self.source == "embedded" and self.mode == "streaming":
            problems.append(
                "data.mode=streaming needs a `datasets` source (local or hub); the embedded corpus is prepared"
            )
        if not (isinstance(self.val_fraction, float | int) and 0 < self.val_fraction < 1) and self.val_from is None:
            problems.append(f"data.val_fraction={self.val_fraction!r} must be in (0, 1), e.g. 0.01")
        if self.val_split_tokens is not None and not (
            isinstance(self.val_split_tokens, int) and self.val_split_tokens > 0
        ):
            problems.append(f"data.val_split_tokens={self.val_split_tokens!r} must be a positive integer or null")
        for name in ("num_workers", "shuffle_buffer", "shard_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "num_workers" else 1):
                problems.append(
                    f"data.{name}={value!r} must be a {'non-negative' if name == 'num_workers' else 'positive'} integer"
                )
        if self.num_proc is not None and not (isinstance(self.num_proc, int) and self.num_proc >= 1):
            problems.append(f"data.num_proc={self.num_proc!r} must be a positive integer or null (all cores)")
        raise_if(problems)

    @property
    def is_local(self) -> bool:
        """Whether the documents come from files on this machine: a local source, or a hub dataset whose
        `path` is a folder holding its local copy (read with the hub's own configs and splits)."""
        if self.source == "local":
            return True
        return self.source == "hub" and bool(self.path) and Path(self.path).expanduser().is_dir()

    @property
    def processes(self) -> int:
        """Tokenising processes: `num_proc`, or the cores this process may run on (cgroup/affinity aware)."""
        if self.num_proc:
            return self.num_proc
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    @property
    def split_key(self) -> str:
        """A folder name for the split rule: token files made under another rule are never reused."""
        held_out = f"from-{self.val_from}" if self.val_from else f"val{self.val_fraction:g}"
        return held_out + (f"-cap{self.val_split_tokens}" if self.val_split_tokens else "")
