"""Local corpus files: what a folder holds, which split each file belongs to, and its documents, read file by
file with one-line errors that name the file, the row and the fix.

A folder is read as what it holds. Each file is read by its own format — `.txt` (one document per file, line
or blank-line paragraph: `data.txt_split`), `.jsonl`/`.json` and `.csv` (one per row), `.parquet` (one per
row) — each also compressed (`.gz`, `.bz2`, `.xz`, `.zst`; not Parquet, which compresses inside). Which
files form which split follows the Hugging Face Hub's own rules: a README.md whose `configs:` name the files
of each configuration and split (`data.config` picks one, else the default), or, without configs, the
split names in file and folder names (`datasets.data_files.get_data_patterns`: `train/`, `validation/`,
`data/train-00000-of-00002.parquet`, ...). A local snapshot of a hub dataset is therefore read exactly as
the hub reads it, from its own files: no second copy in an Arrow cache.

Documents longer than `LONG_CHARS` are handed on as `LongText`: read (from the file, for `.txt`) and
tokenised in pieces cut where a byte-level BPE's pre-tokenizer would cut anyway, so memory is bounded by
the piece, not by the document, and the tokens equal the unsplit encoding's (see `cut`).
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import hashlib
import io
import json
import logging
import lzma
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lm_lab.errors import ConfigError

log = logging.getLogger(__name__)

FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _zstd_open(path: Path):
    import zstandard

    return zstandard.open(path, "rb")


COMPRESSIONS: dict[str, Callable] = {  # each opens a binary stream; the callers close it
    ".gz": lambda p: gzip.open(p, "rb"),  # noqa: SIM115
    ".bz2": lambda p: bz2.open(p, "rb"),  # noqa: SIM115
    ".xz": lambda p: lzma.open(p, "rb"),  # noqa: SIM115
    ".zst": _zstd_open,
}
# files a dataset folder holds beside its data: never documents
DOC_FILES = re.compile(r"(readme|license|licence|copying|notice|changelog|citation)(\.\w+)?$|.*\.(md|py|ya?ml|cff)$")
DOC_JSON = {"dataset_info.json", "dataset_infos.json", "config.json", "dataset_dict.json", "state.json"}
SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")  # a `datasets.save_to_disk` folder
TXT_SPLITS = ("file", "line", "paragraph")
BAD_DOCUMENT = ("error", "skip")
LONG_CHARS = 1 << 18
"""Documents longer than this (in characters) are read and tokenised in pieces."""
PIECE_CHARS = 1 << 14
"""The pieces' target size: Hugging Face tokenizers encode 16k-character texts ~1.4x faster per token than
256k-character ones (on the embedded corpus, our BPE)."""
SHARD_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.")


def file_format(path: Path) -> tuple[str, str | None] | None:
    """(format, compression suffix or None) of a data file by its name, or None if the lab cannot read it."""
    name = path.name.lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt, None
        for comp in COMPRESSIONS:
            if fmt != "parquet" and name.endswith(suffix + comp):
                return fmt, comp
    return None


def kind(path: Path) -> str:
    """The file's kind as a user sees it: `.txt`, `.jsonl.zst`, `.parquet`, ..."""
    fmt = file_format(path)
    if fmt is None:
        return "".join(path.suffixes[-2:]) or path.name
    name = path.name.lower()
    return next(s + (fmt[1] or "") for s in FORMATS if name.endswith(s + (fmt[1] or "")))


def _is_doc_file(path: Path) -> bool:
    return (
        bool(DOC_FILES.fullmatch(path.name.lower())) or path.name.lower() in DOC_JSON or path.name == ".gitattributes"
    )


def _visible_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def summarize_kinds(files: list[Path]) -> str:
    counts = Counter(kind(f) for f in files)
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# -- which files, which split -------------------------------------------------------------------------------


@dataclass
class Layout:
    """The files of each split of a local corpus, and what its README says about them."""

    root: Path
    splits: dict[str, list[Path]]
    config: str | None = None
    """The README config the splits come from (None: inferred from the file names, or a single file)."""
    patterns: dict[str, list[str]] = field(default_factory=dict)
    """Each split's file patterns from the README config (for messages about missing files)."""
    expected: dict[str, int] = field(default_factory=dict)
    """Documents per split according to the README's `dataset_info` (a full download holds them all)."""
    configs: list[str] = field(default_factory=list)
    single: bool = False
    """`data.path` is one file."""

    def files(self, split: str, where: str) -> list[Path]:
        """The files of `split`, or a one-line error saying which splits exist or which files are missing."""
        if split not in self.splits:
            known = sorted(self.splits)
            if self.config is None and known == ["train"]:
                what = "is a single file with" if self.single else "has no split names in its file or folder names:"
                raise ConfigError(
                    f"{where} {what} no named splits, so split {split!r} does not exist; leave data.split=train and data.val_from=null (validation is then held out "
                    f"by data.val_fraction)"
                )
            raise ConfigError(
                f"{where} has splits {known}{self._which()}, not {split!r}; set data.split / data.val_from"
            )
        files = self.splits[split]
        if not files:
            pattern = ", ".join(self.patterns.get(split, ["?"]))
            others = [c for c in self.configs if c != self.config]
            raise ConfigError(
                f"{where}: README.md's config {self.config!r} names {pattern} for split {split!r}, but no such files "
                f"are here: download them (`hf download REPO --repo-type dataset --include "
                f"'{pattern}' --local-dir {self.root}`)"
                + (f" or choose another data.config ({', '.join(others)})" if others else "")
            )
        return files

    def _which(self) -> str:
        return f" in README.md's config {self.config!r}" if self.config else ""

    def describe(self, split: str) -> str:
        files = self.splits.get(split, [])
        return f"{len(files)} file{'s' * (len(files) != 1)} ({summarize_kinds(files)})"

    def partial(self, split: str) -> str | None:
        """A line saying what a partial download lacks (from `-00003-of-00080` shard names), or None."""
        files = self.splits.get(split, [])
        groups: dict[tuple[Path, str, int], set[int]] = {}
        for f in files:
            m = SHARD_NAME.search(f.name)
            if m:
                groups.setdefault((f.parent, f.name[: m.start()], int(m.group(2))), set()).add(int(m.group(1)))
        missing = []
        for (folder, stem, total), have in sorted(groups.items()):
            if len(have) < total:
                gone = sorted(set(range(total)) - have)
                rel = (folder / stem).relative_to(self.root) if folder.is_relative_to(self.root) else stem
                shown = ", ".join(f"{i:05d}" for i in gone[:5]) + (", ..." if len(gone) > 5 else "")
                missing.append(f"{rel}: {len(have)} of {total} files (missing {shown})")
        if not missing:
            return None
        return f"split {split!r} is a partial download — {'; '.join(missing)}; reading the files that are here"


def _card_configs(readme: Path):
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard.load(readme)
        return MetadataConfigs.from_dataset_card_data(card.data), card.data
    except Exception as e:  # malformed YAML, a config without config_name, ...
        raise ConfigError(f"{readme}: its YAML header could not be read ({e}); fix it or remove README.md") from None


def _expected_examples(card_data, config: str | None) -> dict[str, int]:
    infos = card_data.get("dataset_info") if card_data is not None else None
    if isinstance(infos, dict):
        infos = [infos]
    for info in infos or []:
        if isinstance(info, dict) and info.get("config_name", "default") in (config, None if config else "default"):
            return {
                s["name"]: int(s["num_examples"])
                for s in info.get("splits") or []
                if isinstance(s, dict) and "name" in s and "num_examples" in s
            }
    return {}


def _readable(files: list[Path], where: str, what: str) -> list[Path]:
    """The data files among `files`; files of a format the lab cannot read are refused, documentation skipped."""
    data = [f for f in files if file_format(f) is not None]
    unknown = [f for f in files if file_format(f) is None and not _is_doc_file(f)]
    if unknown:
        names = ", ".join(f.name for f in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise ConfigError(
            f"{where}: {what} holds {len(unknown)} file(s) the lab cannot read ({summarize_kinds(unknown)}: {names}); "
            f"it reads {', '.join(FORMATS)} (txt, jsonl, json and csv also as .gz/.bz2/.xz/.zst): remove or convert them"
        )
    return data


def resolve(path: str, config: str | None) -> Layout:
    """The splits of a local file or folder (see the module docstring for the rules)."""
    from datasets.data_files import DataFilesDict, get_data_patterns, sanitize_patterns

    root = Path(path).expanduser().resolve()
    where = f"data.path={path!r}"
    if root.is_file():
        if config:
            raise ConfigError(f"data.config={config!r} but {where} is a single file, which has no configs; unset it")
        if file_format(root) is None:
            raise ConfigError(
                f"{where}: {root.name} is not a format the lab reads ({', '.join(FORMATS)}, the text ones also "
                f"compressed .gz/.bz2/.xz/.zst)"
            )
        return Layout(root.parent, {"train": [root]}, single=True)
    readme = root / "README.md"
    with_header = readme.is_file() and readme.read_bytes()[:3] == b"---"  # a YAML header: the hub's dataset card
    configs, card = _card_configs(readme) if with_header else ({}, None)
    if configs:
        name = config or configs.get_default_config_name()
        if name is None or name not in configs:
            raise ConfigError(
                f"{where}: README.md has configs {list(configs)}"
                + (f", not {config!r}" if config else " and none is the default")
                + "; set data.config to one of them"
            )
        entry = configs[name]
        base = root / entry["data_dir"] if entry.get("data_dir") else root
        patterns = sanitize_patterns(entry["data_files"]) if entry.get("data_files") else get_data_patterns(str(base))
        resolved = DataFilesDict.from_patterns(patterns, base_path=str(base))
        splits = {
            str(s): _readable([Path(f) for f in files], where, f"config {name!r} split {s!r}")
            for s, files in resolved.items()
        }
        return Layout(
            root,
            splits,
            config=name,
            patterns={str(s): list(p) for s, p in patterns.items()},
            expected=_expected_examples(card, name),
            configs=list(configs),
        )
    if config:
        raise ConfigError(
            f"data.config={config!r} but {where} has no README.md with `configs:`; unset data.config (null) or "
            f"download the dataset's README.md too"
        )
    every = [f for f in _visible_files(root) if not _is_doc_file(f)]
    data = _readable(every, where, "the folder")
    if not data:
        raise ConfigError(f"{where} holds no data files ({', '.join(FORMATS)}, or their .gz/.bz2/.xz/.zst)")
    try:
        patterns = get_data_patterns(str(root))
        resolved = DataFilesDict.from_patterns(patterns, base_path=str(root))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{where}: its split layout could not be inferred ({e})") from None
    splits = {str(s): sorted(Path(f) for f in files if file_format(Path(f))) for s, files in resolved.items()}
    assigned = {f for files in splits.values() for f in files}
    left = [f for f in data if f not in assigned]
    if left:
        names = ", ".join(str(f.relative_to(root)) for f in left[:3]) + (", ..." if len(left) > 3 else "")
        raise ConfigError(
            f"{where}: split names in its file names ({', '.join(f'{s}: {len(v)} files' for s, v in splits.items())}) "
            f"leave {len(left)} file(s) in no split ({names}); rename them (e.g. train-*.jsonl) or move them out"
        )
    return Layout(root, splits)


# -- reading ------------------------------------------------------------------------------------------------


@dataclass
class ReadSettings:
    """How files become documents: the DataConfig fields that change what is read."""

    text_field: str = "text"
    txt_split: str = "file"
    encoding: str = "utf-8"
    encoding_errors: str = "strict"
    on_bad_document: str = "error"


@dataclass
class Tally:
    """What reading skipped, for the log and meta.json."""

    documents: int = 0
    blank: int = 0
    bad: int = 0
    empty_files: int = 0
    examples: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.bad += 1
        if len(self.examples) < 5:
            self.examples.append(reason)

    def no_text(self, cfg, split: str) -> ConfigError:
        """The error for a split that yielded no document with text."""
        first = f": {self.examples[0]}" if self.examples else ""
        return ConfigError(
            f"split {split!r} of data.path={cfg.path!r} has no documents with text ({self.blank} blank, "
            f"{self.bad} bad{first}); check data.path, data.config and data.text_field"
        )

    def as_dict(self) -> dict:
        return {
            "documents": self.documents,
            "blank_dropped": self.blank,
            "bad_skipped": self.bad,
            "bad_examples": self.examples,
            "empty_files": self.empty_files,
        }


def cut(text: str, limit: int) -> int:
    """A position <= `limit` where `text` splits into two texts whose encodings concatenate to the whole's, or 0.

    Byte-level BPEs (ours, GPT-2's, tiktoken's cl100k/o200k, LLaMA 3's) pre-tokenise with regexes that end a
    pre-token at a lone newline between two non-space characters, and start one at a lone space between two
    non-space characters; BPE merges stay inside pre-tokens, so cutting there changes no token. (A cut inside
    a run of whitespace would: `\\s+(?!\\S)` splits a run's last character off only when text follows.)
    Preferred: after such a newline; else before such a space; searched in the second half of the window first.
    """
    for lo in (max(limit // 2, 1), 1):
        for sep, after in (("\n", 1), (" ", 0)):
            i = text.rfind(sep, lo, limit - after)
            while i >= lo:
                if i + 1 < len(text) and not text[i - 1].isspace() and not text[i + 1].isspace():
                    return i + after
                i = text.rfind(sep, lo, i)
    return 0


def split_pieces(text: str, limit: int = 0) -> Iterator[str]:
    """`text` in pieces of about `limit` characters, cut by `cut` (hard cuts only inside runs of more than
    LONG_CHARS characters with no cut point, where tokens may differ from the unsplit encoding's)."""
    limit = limit or PIECE_CHARS
    start = 0
    while len(text) - start > limit:
        width = limit
        while True:  # no cut point in the window: widen it (up to LONG_CHARS) before cutting hard
            window = text[start : start + width + 1]
            at = cut(window, width)
            if at or width >= max(LONG_CHARS, limit) or len(window) <= width:
                break
            width *= 4
        at = at or min(width, len(window))
        yield window[:at]
        start += at
    if start < len(text) or not text:
        yield text[start:]


class LongText:
    """A document too long to hold or encode in one piece: its text as pieces (see `split_pieces`).

    `opener` returns an iterator of decoded chunks of the document (re-readable: the held-out hash and the
    tokenizer each take a pass), or the text itself when it is in memory already.
    """

    def __init__(self, opener: Callable[[], Iterator[str]] | str, origin: str):
        self._opener = opener
        self.origin = origin
        self._scan: tuple[int, bool, int] | None = None

    def pieces(self) -> Iterator[str]:
        if isinstance(self._opener, str):
            yield from split_pieces(self._opener)
            return
        carry = ""
        for chunk in self._opener():
            carry += chunk
            if len(carry) > 2 * PIECE_CHARS:
                *whole, carry = split_pieces(carry)
                yield from whole
        if carry:
            yield from split_pieces(carry)

    def text(self) -> str:
        return self._opener if isinstance(self._opener, str) else "".join(self.pieces())

    def scan(self) -> tuple[int, bool, int]:
        """(blake2b-64 of the UTF-8 text as an integer, whether it is blank, UTF-8 bytes), in one pass."""
        if self._scan is None:
            h, blank, size = hashlib.blake2b(digest_size=8), True, 0
            for piece in self.pieces():
                data = piece.encode("utf-8")
                h.update(data)
                size += len(data)
                blank = blank and not piece.strip()
            self._scan = (int.from_bytes(h.digest(), "big"), blank, size)
        return self._scan

    def __len__(self) -> int:  # UTF-8 bytes: what the budget of a BPE's training text counts
        return self.scan()[2]


Document = str | LongText


def _open_binary(path: Path):
    fmt = file_format(path)
    return COMPRESSIONS[fmt[1]](path) if fmt and fmt[1] else open(path, "rb")  # noqa: SIM115 - caller closes


def _decoded(path: Path, rs: ReadSettings, block: int = 1 << 20) -> Iterator[str]:
    """The file's text in chunks, decoded with `data.encoding`; an undecodable byte is one line naming the
    file, the byte's offset and the fix."""
    try:
        decoder = codecs.getincrementaldecoder(rs.encoding)(rs.encoding_errors)
    except LookupError:
        raise ConfigError(
            f"data.encoding={rs.encoding!r} is not an encoding Python knows (e.g. utf-8, latin-1)"
        ) from None
    offset = 0
    with _open_binary(path) as f:
        while True:
            data = f.read(block)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                at = offset - len(decoder.getstate()[0]) + e.start
                raise ConfigError(
                    f"{path}: byte 0x{e.object[e.start]:02x} at offset {max(at, 0):,} is not {rs.encoding}: set "
                    f"data.encoding to the file's encoding (e.g. latin-1), or data.encoding_errors=replace to "
                    f"read undecodable bytes as U+FFFD"
                ) from None
            offset += len(data)
            if text:
                yield text
            if not data:
                return


def _lines(chunks: Iterator[str]) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) of a text given in chunks; `\\r\\n` ends a line like `\\n`."""
    carry, number = "", 0
    for chunk in chunks:
        carry += chunk
        *whole, carry = carry.split("\n")
        for line in whole:
            number += 1
            yield number, line[:-1] if line.endswith("\r") else line
    if carry:
        yield number + 1, carry


def _text_documents(path: Path, rs: ReadSettings) -> Iterator[tuple[Document | None, str]]:
    if rs.txt_split == "file":
        chunks = _decoded(path, rs, block=LONG_CHARS)
        first = next(chunks, "")
        second = next(chunks, None)
        if second is None:  # fits in one piece
            yield first, str(path)
        else:
            yield LongText(lambda: _decoded(path, rs, block=LONG_CHARS), str(path)), str(path)
        return
    paragraph: list[str] = []
    start = 0
    for number, line in _lines(_decoded(path, rs)):
        if rs.txt_split == "line":
            yield line, f"{path}:{number}"
        elif line.strip():
            if not paragraph:
                start = number
            paragraph.append(line)
        elif paragraph:
            yield "\n".join(paragraph), f"{path}:{start}"
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph), f"{path}:{start}"


def _field(row, name: str):
    """`row[name]`, or for a dotted name (`meta.text`) the nested value; KeyError when it is absent."""
    if not isinstance(row, dict):
        raise KeyError(name)
    if name in row:
        return row[name]
    value = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def _json_rows(path: Path, rs: ReadSettings) -> Iterator[tuple[object, str]]:
    with _open_binary(path) as f:
        head = f.read(1 << 16)
        rest = f.read() if head.lstrip()[:1] == b"[" else None
        if rest is not None:  # a .json file holding one list of rows
            try:
                rows = json.loads((head + rest).decode(rs.encoding, rs.encoding_errors))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"{path}: not valid JSON ({e}); fix the file") from None
            for i, row in enumerate(rows, 1):
                yield row, f"{path} row {i}"
            return
        stream = io.BufferedReader(_Prefixed(head, f), 1 << 20)
        for number, raw in enumerate(stream, 1):
            if not raw.strip():
                continue
            try:
                yield json.loads(raw.decode(rs.encoding, rs.encoding_errors)), f"{path}:{number}"
            except UnicodeDecodeError as e:
                yield (
                    _Bad(
                        f"{path}:{number}: byte 0x{e.object[e.start]:02x} is not {rs.encoding}: set data.encoding, or "
                        f"data.encoding_errors=replace"
                    ),
                    "",
                )
            except json.JSONDecodeError as e:
                yield _Bad(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno}; a truncated line?)"), ""


class _Prefixed(io.RawIOBase):
    """A binary stream with `head` (already read) put back in front."""

    def __init__(self, head: bytes, f):
        self.head, self.f = head, f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n], self.head = self.head[:n], self.head[n:]
            return n
        data = self.f.read(len(b))
        b[: len(data)] = data
        return len(data)


class _Bad(str):
    """A row that could not be parsed; its text is the one-line reason."""


def _csv_rows(path: Path, rs: ReadSettings) -> Iterator[tuple[object, str]]:
    csv.field_size_limit(sys.maxsize)
    with io.TextIOWrapper(_open_binary(path), encoding=rs.encoding, errors=rs.encoding_errors, newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                yield row, f"{path}:{reader.line_num}"
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"{path} near line {reader.line_num}: byte 0x{e.object[e.start]:02x} is not {rs.encoding}: set "
                f"data.encoding, or data.encoding_errors=replace"
            ) from None


def _parquet_rows(path: Path, rs: ReadSettings) -> Iterator[tuple[object, str]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid for a file that is not Parquet or is truncated
        raise ConfigError(f"{path}: not a readable Parquet file ({e}); download it again") from None
    names = pf.schema_arrow.names
    top = rs.text_field if rs.text_field in names else rs.text_field.split(".")[0]
    if top not in names:
        raise ConfigError(
            f"data.text_field={rs.text_field!r} is not a column of {path}; its columns are {names}: set data.text_field"
        )
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=[top]):
        for value in batch.column(0).to_pylist():
            row += 1
            yield {top: value}, f"{path} row {row}"


ROW_READERS = {"json": _json_rows, "csv": _csv_rows, "parquet": _parquet_rows}


def _row_documents(path: Path, fmt: str, rs: ReadSettings) -> Iterator[tuple[Document | None, str]]:
    for row, where in ROW_READERS[fmt](path, rs):
        if isinstance(row, _Bad):
            yield None, str(row)
            continue
        try:
            text = _field(row, rs.text_field)
        except KeyError:
            fields = sorted(row) if isinstance(row, dict) else type(row).__name__
            yield None, f"{where}: data.text_field={rs.text_field!r} is not a field of this row (it has {fields})"
            continue
        if text is not None and not isinstance(text, str):
            shown = repr(text)[:40]
            yield (
                None,
                f"{where}: data.text_field={rs.text_field!r} holds {shown} ({type(text).__name__}), not a string",
            )
            continue
        yield text or "", where


def read_documents(files: list[Path], rs: ReadSettings, tally: Tally) -> Iterator[Document]:
    """The documents of `files` in order. Blank documents are dropped and counted; a bad row stops the read with
    one line naming the file and row (or, with `on_bad_document=skip`, is counted and skipped)."""
    for path in files:
        fmt, _ = file_format(path)
        before = tally.documents + tally.blank + tally.bad
        docs = _text_documents(path, rs) if fmt == "text" else _row_documents(path, fmt, rs)
        for doc, where in docs:
            if doc is None:
                if rs.on_bad_document == "skip":
                    tally.skip(where)
                    continue
                raise ConfigError(
                    f"{where}: fix the row (or data.text_field / data.encoding), or set data.on_bad_document=skip "
                    f"to count and skip such rows"
                )
            if isinstance(doc, LongText):
                blank = doc.scan()[1]
            else:
                blank = not doc.strip()
                if len(doc) > LONG_CHARS:
                    doc = LongText(doc, where)
            if blank:
                tally.blank += 1
                continue
            tally.documents += 1
            yield doc
        if tally.documents + tally.blank + tally.bad == before:
            tally.empty_files += 1
            log.warning("%s holds no documents", path)
