"""Any corpus, offline, without surprises: the hub's own layouts read from a local copy (README `configs:`,
split folders, a partial download), folders read as what they hold, one line for every bad file, documents
larger than the process's memory, and a token cache that repairs itself. All on data the tests write."""

import bz2
import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lm_lab.data import files as files_mod
from lm_lab.data.config import DataConfig
from lm_lab.data.files import LongText, cut, resolve, split_pieces
from lm_lab.data.prepare import corpus_root, get_tokenizer, prepare, remove_dead_temps, token_dir
from lm_lab.data.shards import TokenShards, held_out, read_meta
from lm_lab.data.sources import fingerprint
from lm_lab.data.tokenizers import BPETokenizer, ByteTokenizer, TokenizerConfig
from lm_lab.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
BYTES = TokenizerConfig(name="bytes", vocab_size=257)


def texts(n: int, tag: str = "doc") -> list[str]:
    return [f"{tag} {i}: " + " ".join(f"w{(i * 7 + j) % 31}" for j in range(20 + i % 9)) + "\n" for i in range(n)]


def parquet(path: Path, docs: list[str], **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs, "id": list(range(len(docs))), **extra}), path)


def jsonl(path: Path, rows: list, compress: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if compress == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    elif compress == "gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def cfg(path, tmp_path, **kw) -> DataConfig:
    base = {"name": "c", "source": "local", "path": str(path), "cache_dir": str(tmp_path / "cache"), "num_proc": 1}
    return DataConfig(**{"val_fraction": 0.3, **base, **kw})


def decoded(folder: Path, split: str) -> list[str]:
    tokens = TokenShards(folder, split).concatenated()
    out, start = [], 0
    for end in np.flatnonzero(tokens == ByteTokenizer.eot_id):
        out.append(bytes(tokens[start:end].astype(np.uint8).tolist()).decode())
        start = end + 1
    return out


def both(folder: Path) -> list[str]:
    return decoded(folder, "train") + decoded(folder, "val")


FINEWEB_README = """---
license: odc-by
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*/*
- config_name: sample-10BT
  data_files:
  - split: train
    path: sample/10BT/*
- config_name: sample-100BT
  data_files:
  - split: train
    path: sample/100BT/*
---
# FineWeb-Edu (a replica in miniature)
"""


@pytest.fixture
def fineweb(tmp_path) -> Path:
    """FineWeb-Edu's layout: `sample/10BT/*.parquet` and `data/CC-MAIN-*/*.parquet` beside a README whose configs
    map `default` to `data/*/*` (and a `.cache/` as `huggingface-cli download --local-dir` leaves)."""
    root = tmp_path / "fineweb-edu"
    for k in range(3):
        parquet(root / "sample" / "10BT" / f"{k:03d}_00000.parquet", texts(20, f"sample{k}"))
    parquet(root / "data" / "CC-MAIN-2024-10" / "000_00000.parquet", texts(12, "crawl"))
    (root / ".cache" / "huggingface").mkdir(parents=True)
    (root / ".cache" / "huggingface" / "stale.parquet").write_bytes(b"not read")
    (root / "README.md").write_text(FINEWEB_README)
    return root


def test_a_local_copy_of_a_hub_dataset_is_read_by_its_readme_configs(fineweb, tmp_path, capsys):
    from lm_lab.cli import main

    sample = cfg(fineweb, tmp_path, source="hub", name="fineweb_edu", config="sample-10BT")
    folder = prepare(sample, BYTES, progress=False)
    assert sorted(both(folder)) == sorted(t for k in range(3) for t in texts(20, f"sample{k}"))
    meta = read_meta(folder)
    assert meta["read"]["train"]["config"] == "sample-10BT" and meta["read"]["train"]["documents"] == 60
    assert [f for f, _ in meta["read"]["train"]["files"]] == [f"sample/10BT/{k:03d}_00000.parquet" for k in range(3)]
    default = cfg(fineweb, tmp_path, source="hub", name="fineweb_edu", config=None)
    assert sorted(both(prepare(default, BYTES, progress=False))) == sorted(texts(12, "crawl"))
    assert fingerprint(sample) != fingerprint(default)  # the config is part of the cache's identity
    # the obvious offline command: the hub corpus's own config (sample-10BT), path pointing at the copy
    args = ["prepare-data", "data=fineweb_edu", f"data.path={fineweb}", "tokenizer=bytes"]
    args += [f"data.cache_dir={tmp_path / 'cli'}", "data.num_proc=1", "data.val_fraction=0.3"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["splits"]["train"]["documents"] + out["splits"]["val"]["documents"] == 60
    # a config the README names whose files were not downloaded: one line with the download command
    with pytest.raises(
        ConfigError, match=r"config 'sample-100BT' names sample/100BT/\* for split 'train', but no such"
    ):
        prepare(cfg(fineweb, tmp_path, source="hub", config="sample-100BT"), BYTES, progress=False)
    with pytest.raises(
        ConfigError, match=r"README.md has configs \['default', 'sample-10BT', 'sample-100BT'\], not 'x'"
    ):
        resolve(str(fineweb), "x")


SLIMPAJAMA_README = """---
task_categories:
- text-generation
dataset_info:
  splits:
  - name: train
    num_examples: 90
  - name: validation
    num_examples: 40
---
# SlimPajama-627B (a replica in miniature)
"""


def val_texts(k: int) -> list[str]:
    return [t * 600 for t in texts(10, f"val-{k}")]  # ~100 kB each: the 1 MB tasks show where reading stops


@pytest.fixture
def slimpajama(tmp_path) -> Path:
    """SlimPajama-627B's layout: `train/chunkN/*.jsonl.zst`, `validation/chunkN/`, `test/chunkN/`, no configs."""
    root = tmp_path / "SlimPajama-627B"
    meta = {"redpajama_set_name": "RedPajamaC4"}
    for c in (1, 2):
        for k in range(3):
            rows = [{"text": t, "meta": meta} for t in texts(15, f"train-c{c}-{k}")]
            jsonl(root / "train" / f"chunk{c}" / f"example_train_{k}.jsonl.zst", rows, "zst")
    for k in range(4):
        rows = [{"text": t, "meta": meta} for t in val_texts(k)]
        jsonl(root / "validation" / "chunk1" / f"example_holdout_{k}.jsonl.zst", rows, "zst")
    jsonl(root / "test" / "chunk1" / "example_holdout_0.jsonl.zst", [{"text": "test doc", "meta": meta}], "zst")
    (root / "README.md").write_text(SLIMPAJAMA_README)
    (root / ".gitattributes").write_text("*.zst filter=lfs\n")
    return root


def test_slimpajama_split_folders_stream_and_stop_reading_validation_at_its_cap(slimpajama, tmp_path):
    from lm_lab.data.streaming import StreamWindows

    layout = resolve(str(slimpajama), None)
    assert {s: len(f) for s, f in layout.splits.items()} == {"train": 6, "validation": 4, "test": 1}
    val_docs = [t for k in range(4) for t in val_texts(k)]
    cap = sum(len(t) + 1 for t in val_docs[:5])  # five documents' tokens (bytes + end-of-text)
    streaming = cfg(slimpajama, tmp_path, source="hub", mode="streaming", val_from="validation", val_split_tokens=cap)
    folder = prepare(streaming, BYTES, val_only=True, progress=False)
    assert decoded(folder, "val") == val_docs[:5]
    assert read_meta(folder)["read"]["validation"]["documents"] < 20  # stopped in the first file or two, not 40
    windows = StreamWindows(streaming, ("bytes", None), 257, seq_len=32, micro=2, seed=0)
    batch = next(iter(windows))
    text = bytes(batch[0].numpy().astype(np.uint8)[batch[0].numpy() < 256].tolist()).decode()
    assert "train-c" in text and "val-" not in text
    # prepared mode: the validation pass also stops at the cap, and the training split is read whole
    prepared = cfg(slimpajama, tmp_path, val_from="validation", val_split_tokens=cap)
    folder = prepare(prepared, BYTES, progress=False)
    meta = read_meta(folder)
    assert meta["read"]["validation"]["documents"] < 20 and meta["splits"]["val"]["documents"] == 5
    assert sorted(decoded(folder, "train")) == sorted(
        t for c in (1, 2) for k in range(3) for t in texts(15, f"train-c{c}-{k}")
    )


def test_a_partial_download_is_read_with_a_line_saying_what_is_missing(tmp_path, caplog):
    """OpenWebText's Parquet upload: `plain_text/train-000NN-of-00080.parquet`; 3 of the 80 files are here."""
    root = tmp_path / "openwebtext"
    for k in range(3):
        parquet(root / "plain_text" / f"train-{k:05d}-of-00080.parquet", texts(10, f"owt{k}"))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: plain_text\n  data_files:\n  - split: train\n    path: plain_text/train-*\n"
        "  default: true\ndataset_info:\n  config_name: plain_text\n  splits:\n  - name: train\n"
        "    num_examples: 8013769\n---\n"
    )
    with caplog.at_level(logging.INFO, logger="lm_lab"):
        folder = prepare(cfg(root, tmp_path, source="hub"), BYTES, progress=False)
    assert len(both(folder)) == 30
    assert "plain_text/train: 3 of 80 files (missing 00003, 00004, 00005, 00006, 00007, ...)" in caplog.text
    assert "read 30 documents, the README's dataset_info counts 8,013,769" in caplog.text
    assert "3 of 80 files" in read_meta(folder)["read"]["train"]["partial"]


def test_a_folder_is_read_as_what_it_holds(tmp_path, caplog):
    mixed = tmp_path / "mixed"
    jsonl(mixed / "a.jsonl", [{"text": t} for t in texts(50, "ja")])
    jsonl(mixed / "b.jsonl", [{"text": t} for t in texts(50, "jb")])
    txt = texts(3, "t")
    for i, t in enumerate(txt):
        (mixed / f"note{i}.txt").write_text(t + "second line\n")
    (mixed / "README.md").write_text("# my notes\n")
    with caplog.at_level(logging.INFO, logger="lm_lab"):
        folder = prepare(cfg(mixed, tmp_path), BYTES, progress=False)
    assert sorted(both(folder)) == sorted(texts(50, "ja") + texts(50, "jb") + [t + "second line\n" for t in txt])
    assert "5 files (3 .txt, 2 .jsonl); .txt as one document per file" in caplog.text
    assert len(read_meta(folder)["read"]["train"]["files"]) == 5
    # a folder of compressed text files: one document per file, or per line / paragraph when asked
    gz = tmp_path / "gz"
    gz.mkdir()
    for i in range(60):
        (gz / f"d{i:02d}.txt.gz").write_bytes(gzip.compress(f"title {i}\nline a\n\nline b {i}\n".encode()))
    assert len(both(prepare(cfg(gz, tmp_path), BYTES, progress=False))) == 60
    by_line = both(prepare(cfg(gz, tmp_path, txt_split="line"), BYTES, progress=False))
    assert len(by_line) == 180 and "line b 7" in by_line  # the blank line of each file is dropped
    by_paragraph = both(prepare(cfg(gz, tmp_path, txt_split="paragraph"), BYTES, progress=False))
    assert sorted(by_paragraph) == sorted(
        [f"title {i}\nline a" for i in range(60)] + [f"line b {i}" for i in range(60)]
    )
    # files that the split names in file names leave in no split are named, not dropped
    named = tmp_path / "named"
    for name in ("train.jsonl", "test.jsonl", "notes.jsonl"):
        jsonl(named / name, [{"text": t} for t in texts(3, name)])
    with pytest.raises(ConfigError, match=r"leave 1 file\(s\) in no split \(notes\.jsonl\); rename them"):
        prepare(cfg(named, tmp_path), BYTES, progress=False)
    # what the lab cannot read is named, not skipped
    (mixed / "scan.pdf").write_bytes(b"%PDF")
    with pytest.raises(ConfigError, match=r"holds 1 file\(s\) the lab cannot read \(1 .pdf: scan.pdf\)"):
        prepare(cfg(mixed, tmp_path), BYTES, progress=False)


@pytest.mark.parametrize("name", ["docs.jsonl.gz", "docs.jsonl.zst", "docs.jsonl.bz2", "docs.txt.xz"])
def test_a_single_compressed_file(name, tmp_path):
    docs = texts(40)
    path = tmp_path / name
    if ".txt" in name:
        import lzma

        path.write_bytes(lzma.compress("".join(docs).encode()))
        got = both(prepare(cfg(path, tmp_path, txt_split="line"), BYTES, progress=False))
        assert sorted(got) == sorted(d.rstrip("\n") for d in docs)
        return
    raw = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    comp = {"gz": gzip.compress, "zst": zstandard.ZstdCompressor().compress, "bz2": bz2.compress}[name.rsplit(".")[-1]]
    path.write_bytes(comp(raw))
    assert sorted(both(prepare(cfg(path, tmp_path), BYTES, progress=False))) == sorted(docs)


def test_every_bad_file_gets_one_line_naming_it_and_the_fix(tmp_path):
    # a latin-1 byte in a .txt
    latin = tmp_path / "latin"
    latin.mkdir()
    (latin / "a.txt").write_text("plain text\n")
    (latin / "b.txt").write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(ConfigError, match=r"b\.txt: byte 0xe9 at offset 3 is not utf-8: set data\.encoding"):
        prepare(cfg(latin, tmp_path), BYTES, progress=False)
    assert "café au lait\n" in both(
        prepare(cfg(latin, tmp_path, encoding="latin-1", val_fraction=0.5), BYTES, progress=False)
    )
    replaced = both(prepare(cfg(latin, tmp_path, encoding_errors="replace", val_fraction=0.5), BYTES, progress=False))
    assert "caf\ufffd au lait\n" in replaced
    # a number where the text should be, late in the file; and a truncated line
    rows = [{"text": t} for t in texts(2500)]
    rows[1999] = {"text": 12345}
    jsonl(tmp_path / "num" / "a.jsonl", rows)
    with pytest.raises(ConfigError, match=r"a\.jsonl:2000: data\.text_field='text' holds 12345 \(int\), not a string"):
        prepare(cfg(tmp_path / "num", tmp_path), BYTES, progress=False)
    skipped = prepare(cfg(tmp_path / "num", tmp_path, on_bad_document="skip"), BYTES, progress=False)
    read = read_meta(skipped)["read"]["train"]
    assert read["documents"] == 2499 and read["bad_skipped"] == 1 and "a.jsonl:2000" in read["bad_examples"][0]
    assert len(both(skipped)) == 2499
    trunc = tmp_path / "trunc" / "a.jsonl"
    jsonl(trunc, [{"text": t} for t in texts(30)])
    trunc.write_bytes(trunc.read_bytes() + b'{"text": "cut off in the mid')
    with pytest.raises(ConfigError, match=r"a\.jsonl:31: not valid JSON \(Unterminated string .*a truncated line\?\)"):
        prepare(cfg(trunc.parent, tmp_path), BYTES, progress=False)
    # rows without the field, whitespace-only documents, an empty file, nested fields
    nested = tmp_path / "nested"
    jsonl(nested / "a.jsonl", [{"meta": {"text": t}} for t in texts(20)] + [{"meta": {"text": "  \n\t"}}])
    jsonl(nested / "b.jsonl", [])
    folder = prepare(cfg(nested, tmp_path, text_field="meta.text"), BYTES, progress=False)
    read = read_meta(folder)["read"]["train"]
    assert sorted(both(folder)) == sorted(texts(20)) and read["blank_dropped"] == 1 and read["empty_files"] == 1
    parquet(tmp_path / "pq" / "a.parquet", ["x"] * 3, meta=[{"text": t} for t in texts(3)])
    pq_folder = prepare(cfg(tmp_path / "pq", tmp_path, text_field="meta.text", val_fraction=0.5), BYTES, progress=False)
    assert sorted(both(pq_folder)) == sorted(texts(3))
    with pytest.raises(ConfigError, match=r"a\.jsonl:1: data\.text_field='body' is not a field of this row"):
        prepare(cfg(nested, tmp_path, text_field="body"), BYTES, progress=False)


def test_an_empty_validation_split_is_found_before_the_training_split_is_read(tmp_path):
    root = tmp_path / "corpus"
    jsonl(root / "train.jsonl", [{"text": 1}] + [{"text": t} for t in texts(10)])  # a bad first row
    jsonl(root / "validation.jsonl", [{"text": "   "}])
    with pytest.raises(ConfigError, match=r"split 'validation' of data.path=.* has no documents with text \(1 blank"):
        prepare(cfg(root, tmp_path, val_from="validation"), BYTES, progress=False)
    from lm_lab.data.prepare import preflight

    with pytest.raises(ConfigError, match=r"split 'validation' .* has no documents with text"):
        preflight(cfg(root, tmp_path, val_from="validation"), BYTES)


def test_cut_keeps_the_tokens_of_byte_level_bpes(tmp_path):
    """Encoding in pieces equals encoding whole, for GPT-2's pre-tokenizer regex and for cl100k's (LLaMA 3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    sample = "".join(
        f"def f{i}(x):\n    return x  +  {i * 12345}  # it's {i}'s\n\n\n  \t indented\n\nWord. Next{i}!\r\n"
        for i in range(400)
    )
    cl100k = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+"
    )
    gpt2 = BPETokenizer.train([sample[:20000]], 400)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(cl100k), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([sample[:20000]], trainer)
    for bpe in (gpt2, BPETokenizer(tok)):
        pieces = list(split_pieces(sample, 500))
        assert len(pieces) > 50 and "".join(pieces) == sample and max(map(len, pieces)) <= 500
        assert [i for p in pieces for i in bpe.encode(p)] == bpe.encode(sample)
    assert cut("abc def", 6) == 3 and cut("a\n b", 4) == 0 and cut("x\ny", 3) == 2


def test_long_documents_are_tokenised_and_trained_on_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(files_mod, "LONG_CHARS", 5000)
    monkeypatch.setattr(files_mod, "PIECE_CHARS", 1000)
    long_doc = "".join(f"line {i} of a long file, with words\n" for i in range(3000))  # ~110 kB
    small = texts(8, "small")
    root = tmp_path / "long"
    root.mkdir()
    (root / "0big.txt").write_text(long_doc)
    for i, t in enumerate(small):
        (root / f"small{i}.txt").write_text(t)
    docs = list(__import__("lm_lab.data.sources", fromlist=["x"]).documents(cfg(root, tmp_path)))
    assert isinstance(docs[0], LongText) and docs[0].text() == long_doc and docs[1:] == small
    assert held_out(docs[0], 0.5) == held_out(long_doc, 0.5)  # the hash of the pieces is the hash of the text
    config = cfg(root, tmp_path, val_fraction=0.5)
    tok_cfg = TokenizerConfig(name="bpe", vocab_size=300, train_bytes=10**7)
    folder = prepare(config, tok_cfg, progress=False)
    bpe = get_tokenizer(config, tok_cfg)
    # the BPE equals one trained on the unsplit texts of the training split
    train_texts = [t for t in [long_doc, *small] if not held_out(t, 0.5)]
    assert bpe._tok.to_str() == BPETokenizer.train(train_texts, 300)._tok.to_str()
    for split, docs in (("train", train_texts), ("val", [t for t in [long_doc, *small] if held_out(t, 0.5)])):
        expected = [i for t in docs for i in [*bpe.encode(t), bpe.eot_id]]
        assert TokenShards(folder, split).concatenated().tolist() == expected


HUGE = """
import resource, sys, numpy as np
from lm_lab.data.config import DataConfig
from lm_lab.data.prepare import prepare
from lm_lab.data.shards import TokenShards
from lm_lab.data.tokenizers import TokenizerConfig
warm = DataConfig(name="warm", source="local", path=sys.argv[4], cache_dir=sys.argv[2], num_proc=1, val_fraction=0.5)
prepare(warm, TokenizerConfig(name="bytes", vocab_size=257), progress=False)  # every module imported, every cache warm
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
limit = int(status["VmData"].split()[0]) * 1024 + int(sys.argv[3]) * 2**20  # what the imports use, and a margin
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
cfg = DataConfig(name="huge", source="local", path=sys.argv[1], cache_dir=sys.argv[2], num_proc=1, val_fraction=0.5)
folder = prepare(cfg, TokenizerConfig(name="bytes", vocab_size=257), progress=False)
count = eots = checksum = 0
for split in ("train", "val"):
    for m in TokenShards(folder, split).maps:
        for i in range(0, len(m), 2**20):
            part = np.asarray(m[i : i + 2**20], dtype=np.int64)
            count, eots = count + len(part), eots + int((part == 256).sum())
            checksum = (checksum + int(part[part < 256].sum())) % 1000003
print(count, eots, checksum)
"""


def test_a_document_larger_than_the_process_may_hold_is_prepared(tmp_path):
    """A 200 MB single document (beside 20 small ones), prepared by a process allowed 64 MB of memory beyond
    what its imports use."""
    line = "the quick brown fox jumps over the lazy dog, again and again\n"
    n = 200 * 2**20 // len(line) // 1000 * 1000
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with open(corpus / "big.txt", "w") as f:
        for _ in range(n // 1000):
            f.write(line * 1000)
    small = texts(20)
    for i, t in enumerate(small):
        (corpus / f"small{i:02d}.txt").write_text(t)
    warm = tmp_path / "warm"
    jsonl(warm / "a.jsonl", [{"text": t} for t in texts(20)])
    proc = subprocess.run(
        [sys.executable, "-c", HUGE, str(corpus), str(tmp_path / "cache"), "64", str(warm)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    count, eots, checksum = map(int, proc.stdout.split())
    size = (corpus / "big.txt").stat().st_size + sum(len(t.encode()) for t in small)
    assert count == size + 21 and eots == 21
    assert checksum == (sum(line.encode()) * n + sum(sum(t.encode()) for t in small)) % 1000003


def test_a_damaged_token_folder_is_rebuilt_and_dead_temp_folders_removed(tmp_path, caplog):
    root = tmp_path / "c"
    jsonl(root / "a.jsonl", [{"text": t} for t in texts(30)])
    config = cfg(root, tmp_path)
    folder = prepare(config, BYTES, progress=False)
    expected = both(folder)
    (folder / "meta.json").unlink()
    with caplog.at_level(logging.WARNING, logger="lm_lab"):
        assert both(prepare(config, BYTES, progress=False)) == expected
    assert "is damaged" in caplog.text and "meta.json not found" in caplog.text
    shard = folder / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-4])
    assert both(prepare(config, BYTES, progress=False)) == expected
    # a temp folder of a preparation that died on this host, and one of a live process, are told apart
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    host = socket.gethostname().replace(".", "_")
    gone = folder.parent / f".tmp.{dead.stdout.strip()}@{host}.abc123"
    alive = folder.parent / f".tmp.{os.getpid()}@{host}.def456"
    gone.mkdir()
    alive.mkdir()
    assert remove_dead_temps(folder.parent) == [gone] and alive.exists() and not gone.exists()


def test_every_field_that_changes_what_is_read_changes_the_cache(tmp_path):
    root = tmp_path / "c"
    jsonl(root / "a.jsonl", [{"text": t, "body": t.upper()} for t in texts(30)])
    base = cfg(root, tmp_path)
    prints = {
        fingerprint(cfg(root, tmp_path, **kw))
        for kw in [
            {},
            {"text_field": "body"},
            {"txt_split": "line"},
            {"encoding": "latin-1"},
            {"on_bad_document": "skip"},
            {"encoding_errors": "replace"},
        ]
    }
    assert len(prints) == 6
    before = fingerprint(base)
    jsonl(root / "a.jsonl", [{"text": t, "body": t.upper()} for t in texts(31)])  # the file's size changes
    assert fingerprint(base) != before
    small = TokenizerConfig(name="bpe", vocab_size=300, train_bytes=1000)
    large = TokenizerConfig(name="bpe", vocab_size=300, train_bytes=10**6)
    assert token_dir(base, small) != token_dir(base, large)
    assert get_tokenizer(base, small).name != get_tokenizer(base, large).name
    assert TokenizerConfig(name="hf", path="gpt2", vocab_size=50257, eot_token="</s>").cache_key != (
        TokenizerConfig(name="hf", path="gpt2", vocab_size=50257).cache_key
    )


BLOCKING = """
import sys
from lm_lab.data import sources
from lm_lab.data.config import DataConfig
from lm_lab.data.prepare import prepare
from lm_lab.data.tokenizers import TokenizerConfig
real = sources.read_documents
def blocking(*args, **kwargs):
    yield from list(real(*args, **kwargs))[:5]
    print("READY", flush=True)
    sys.stdin.read()  # until the test kills us
sources.read_documents = blocking
cfg = DataConfig(name="c", source="local", path=sys.argv[1], cache_dir=sys.argv[2], num_proc=1, val_fraction=0.3)
prepare(cfg, TokenizerConfig(name="bytes", vocab_size=257), progress=False)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_prepare_leaves_no_temp_folder_behind(sig, tmp_path):
    root = tmp_path / "c"
    jsonl(root / "a.jsonl", [{"text": t} for t in texts(30)])
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKING, str(root), str(tmp_path / "cache")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout.readline().strip() == "READY"
    parent = corpus_root(cfg(root, tmp_path))
    assert len(list(parent.glob(".tmp.*"))) == 1
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode == (128 + sig if sig == signal.SIGTERM else -sig)
    assert len(list(parent.glob(".tmp.*"))) == (0 if sig == signal.SIGTERM else 1)
    prepare(cfg(root, tmp_path), BYTES, progress=False)  # the next prepare removes what a SIGKILL left
    assert list(parent.glob(".tmp.*")) == []


WORKER = """
import sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from lm_lab.data.prepare import _init_worker
ex = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_init_worker,
                         initargs=(("bytes", None), "uint16", None, False, True))
ex.submit(time.sleep, 600)  # a busy worker
pids = list(ex._processes)
print(pids[0], flush=True)
sys.stdin.read()
"""


def test_workers_die_with_their_parent(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    worker = int(proc.stdout.readline())
    os.kill(worker, 0)  # alive
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{worker}").exists() and _state(worker) != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)  # the watcher thread exits the worker as soon as the parent's sentinel closes
    assert not Path(f"/proc/{worker}").exists() or _state(worker) == "Z", f"worker {worker} outlived its parent"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"
