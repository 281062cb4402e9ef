"""Real corpus formats end to end, with no network: small corpora the tests write in each format the lab reads
(.txt, .jsonl, .parquet, `save_to_disk`, a folder laid out like a hub dataset), prepared, streamed, trained
on and resumed."""

import json
import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lm_lab.data.config import DataConfig
from lm_lab.data.embedded import embedded_documents
from lm_lab.data.prepare import prepare, token_dir
from lm_lab.data.shards import TokenShards, held_out, read_meta
from lm_lab.data.streaming import StreamWindows
from lm_lab.data.tokenizers import ByteTokenizer, TokenizerConfig
from lm_lab.data.windows import TrainWindows
from lm_lab.errors import ConfigError
from tests.helpers import read_records

ROOT = Path(__file__).resolve().parent.parent
BYTES = TokenizerConfig(name="bytes", vocab_size=257)


@pytest.fixture(scope="module")
def documents() -> list[str]:
    """120 real documents (standard-library code, up to 1.5 kB each), one exact duplicate, one empty."""
    docs = [d.text[:1500] for d in list(embedded_documents())[:120]]
    return [*docs, docs[3], ""]


def write_corpus(kind: str, docs: list[str], root: Path) -> Path:
    import datasets

    root.mkdir(parents=True)
    rows = {"text": docs, "id": list(range(len(docs)))}
    if kind == "txt":
        for i, d in enumerate(docs):
            (root / f"doc{i:04d}.txt").write_text(d, encoding="utf-8")
        (root / "README.md").write_text("not a document\nof the corpus\n")  # ignored: not a data file
    elif kind == "jsonl":
        half = len(docs) // 2
        for part, (a, b) in enumerate([(0, half), (half, len(docs))]):
            with open(root / f"part{part}.jsonl", "w", encoding="utf-8") as f:
                for i in range(a, b):
                    f.write(json.dumps({"text": docs[i], "id": i}) + "\n")
    elif kind == "parquet":
        datasets.Dataset.from_dict(rows).to_parquet(str(root / "corpus.parquet"))
    elif kind == "save_to_disk":
        datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(root))
    elif kind == "hub_folder":
        (root / "data").mkdir()
        half = len(docs) // 2
        for i, (a, b) in enumerate([(0, half), (half, len(docs))]):
            datasets.Dataset.from_dict({k: v[a:b] for k, v in rows.items()}).to_parquet(
                str(root / "data" / f"train-{i:05d}-of-00002.parquet")
            )
        (root / "README.md").write_text("# a corpus laid out like a hub dataset\n")
    return root


def split_documents(folder: Path, split: str) -> list[bytes]:
    tokens = TokenShards(folder, split).concatenated()
    out, start = [], 0
    for end in np.flatnonzero(tokens == ByteTokenizer.eot_id):
        out.append(bytes(tokens[start:end].astype(np.uint8).tolist()))
        start = end + 1
    return out


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet", "save_to_disk", "hub_folder"])
def test_prepare_each_format(kind, documents, tmp_path):
    corpus = write_corpus(kind, documents, tmp_path / "corpus")
    cfg = DataConfig(
        name=kind, source="local", path=str(corpus), val_fraction=0.2, cache_dir=str(tmp_path / "cache"), num_proc=1
    )
    folder = prepare(cfg, BYTES, progress=False)
    meta = read_meta(folder)
    nonempty = [d for d in documents if d]
    # every non-empty document once, in one split, with its end-of-text; counts in meta.json match the files
    train, val = split_documents(folder, "train"), split_documents(folder, "val")
    assert sorted(train + val) == sorted(d.encode() for d in nonempty)
    assert sorted(val) == sorted(d.encode() for d in nonempty if held_out(d, 0.2))
    assert not set(train) & set(val)  # the duplicate fell on one side only
    assert meta["splits"]["train"]["documents"] == len(train) and meta["splits"]["val"]["documents"] == len(val)
    assert meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"] == sum(
        len(d.encode()) + 1 for d in nonempty
    )
    assert meta["tokenizer"] == "bytes" and meta["dtype"] == "uint16"
    # training reads from the shards resume exactly, whatever the format they came from
    shards = TokenShards(folder, "train")
    full = list(islice(TrainWindows(shards, 64, 2, 4, seed=0), 40))
    resumed = list(islice(TrainWindows(shards, 64, 2, 4, seed=0, start=26), 14))
    assert all(torch.equal(x, y) for x, y in zip(full[26:], resumed, strict=True))


def test_prepare_data_command(documents, tmp_path, capsys):
    from lm_lab.cli import main

    corpus = write_corpus("txt", documents[:30], tmp_path / "corpus")
    args = [
        "prepare-data",
        "data=local",
        f"data.path={corpus}",
        "tokenizer=bytes",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.num_proc=1",
        "data.val_fraction=0.2",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokenizer"] == "bytes" and out["splits"]["train"]["documents"] + out["splits"]["val"]["documents"] == 30
    assert Path(out["folder"], "meta.json").exists()
    assert main(args) == 0  # a second call finds the files


def test_single_split_sources_refuse_other_splits(documents, tmp_path):
    corpus = write_corpus("parquet", documents[:20], tmp_path / "corpus")
    cfg = DataConfig(
        name="c",
        source="local",
        path=str(corpus / "corpus.parquet"),
        val_from="validation",
        cache_dir=str(tmp_path / "cache"),
        num_proc=1,
    )
    with pytest.raises(
        ConfigError, match=r"is a single file with no named splits, so split 'validation' does not exist"
    ):
        prepare(cfg, BYTES, progress=False)


def test_prepare_is_deterministic_whatever_the_process_count(documents, tmp_path):
    corpus = write_corpus("jsonl", documents, tmp_path / "corpus")
    folders = []
    for n, procs in enumerate((1, 2)):
        cfg = DataConfig(
            name="c",
            source="local",
            path=str(corpus),
            val_fraction=0.1,
            cache_dir=str(tmp_path / f"cache{n}"),
            num_proc=procs,
            shard_tokens=20_000,
        )
        folders.append(prepare(cfg, BYTES, progress=False))
    a, b = (read_meta(f) for f in folders)
    assert a["splits"] == b["splits"] and len(a["splits"]["train"]["shards"]) > 2
    for shard in a["splits"]["train"]["shards"]:
        assert (folders[0] / shard["file"]).read_bytes() == (folders[1] / shard["file"]).read_bytes()


def test_validation_cap_takes_held_out_documents_in_corpus_order(documents, tmp_path):
    corpus = write_corpus("parquet", documents, tmp_path / "corpus")
    cfg = DataConfig(
        name="c",
        source="local",
        path=str(corpus),
        val_fraction=0.3,
        val_split_tokens=3000,
        cache_dir=str(tmp_path / "cache"),
        num_proc=1,
    )
    meta = read_meta(prepare(cfg, BYTES, progress=False))
    candidates = [d for d in documents if d and held_out(d, 0.3)]
    taken, n = [], 0
    for d in candidates:
        if n >= 3000:
            break
        taken.append(d)
        n += len(d.encode()) + 1
    assert meta["splits"]["val"]["documents"] == len(taken) and meta["splits"]["val"]["tokens"] == n
    assert meta["held_out_beyond_cap"]["documents"] == len(candidates) - len(taken) > 0


def test_guard_rails_name_the_file_and_the_fix(documents, tmp_path):
    corpus = write_corpus("jsonl", documents, tmp_path / "corpus")
    base = {"name": "c", "source": "local", "path": str(corpus), "cache_dir": str(tmp_path / "cache"), "num_proc": 1}
    with pytest.raises(
        ConfigError,
        match=r"part0\.jsonl:1: data\.text_field='content' is not a field of this row \(it has \['id', 'text'\]\)",
    ):
        prepare(DataConfig(**base, text_field="content"), BYTES, progress=False)
    empty = write_corpus("parquet", [""] * 1500, tmp_path / "empty")
    with pytest.raises(
        ConfigError, match=r"split 'train' of data\.path=.* has no documents with text \(1500 blank, 0 bad\)"
    ):
        prepare(DataConfig(**{**base, "path": str(empty)}), BYTES, progress=False)
    # token files made with another tokenizer than the run's are refused
    folder = prepare(DataConfig(**base), BYTES, progress=False)
    from lm_lab.data.datamodule import LMDataModule

    bpe = TokenizerConfig(name="bpe", vocab_size=300)
    other = token_dir(DataConfig(**base), bpe)
    other.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(folder, other)
    dm = LMDataModule(DataConfig(**base), bpe, seq_len=16, micro_batch_size=2, batch_size=2, val_tokens=None, seed=0)
    with pytest.raises(
        ConfigError, match=r"were made with tokenizer bytes \(257 ids\) but this run uses bpe.* rebuilds them"
    ):
        dm.setup("fit")


def test_streaming_resumes_exactly_and_matches_the_prepared_validation(documents, tmp_path):
    docs = documents[:14]
    corpus = write_corpus("hub_folder", docs, tmp_path / "corpus")
    cfg = DataConfig(
        name="c",
        source="local",
        path=str(corpus),
        mode="streaming",
        val_fraction=0.2,
        val_split_tokens=10**6,
        shuffle_buffer=4,
        cache_dir=str(tmp_path / "cache"),
        num_proc=1,
    )
    val_folder = prepare(cfg, BYTES, val_only=True, progress=False)
    prepared = prepare(DataConfig(**{**cfg.__dict__, "mode": "prepared"}), BYTES, progress=False)
    assert split_documents(val_folder, "val") == split_documents(prepared, "val")  # same validation in both modes

    def stream(start=0, workers=0, n=60):
        ds = StreamWindows(cfg, ("bytes", None), 257, seq_len=128, micro=4, seed=5, start=start)
        out = []
        for batch in DataLoader(ds, batch_size=None, num_workers=workers):
            out.append(batch)
            if len(out) == n:
                return out

    full = stream(workers=2)
    train_docs = [d.encode() for d in docs if d and not held_out(d, 0.2)]
    assert 60 * 4 * 128 > 1.5 * sum(len(d) + 1 for d in train_docs)  # the stream wraps into later epochs
    resumed = stream(start=23, workers=2, n=37)
    assert all(torch.equal(a, b) for a, b in zip(full[23:], resumed, strict=True))
    text = b"".join(bytes(r.tolist()) for r in torch.cat(full) if 256 not in r)
    for d in docs:
        if d and held_out(d, 0.2) and len(d) > 300:
            assert d.encode()[100:200] not in text  # validation text never trains


# -- through run.py: prepare -> train -> resume, and two DDP processes ---------------------------------------


def run(args, cache, timeout=300):
    env = {**os.environ, "LM_LAB_CACHE": str(cache), "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def tiny_run(corpus: Path, out: Path, record: Path, *extra: str) -> list[str]:
    return [
        "experiment=smoke",
        "data=local",
        f"data.path={corpus}",
        "data.val_fraction=0.1",
        "tokenizer=bytes",
        "model.n_layer=1",
        "model.d_model=32",
        "model.n_head=2",
        "model.block_size=64",
        "train.seq_len=64",
        "train.batch_size=4",
        "train.val_every=5",
        "train.val_tokens=1024",
        "scheduler.warmup_steps=2",
        "+callbacks.recorder._target_=tests.helpers.BatchRecorder",
        f"+callbacks.recorder.path={record}",
        f"hydra.run.dir={out}",
        *extra,
    ]


def small_corpus(documents: list[str], root: Path) -> Path:
    """40 snippets of 150 characters: ~15 optimizer steps per epoch for `tiny_run`, so runs cross epochs."""
    return write_corpus("jsonl", [d[:150] for d in documents[:40]], root)


def test_bad_corpus_fails_with_one_line_before_training(documents, tmp_path):
    corpus = write_corpus("jsonl", documents[:30], tmp_path / "corpus")
    env = {**os.environ, "LM_LAB_CACHE": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": ""}
    args = [
        "experiment=smoke",
        "data=local",
        f"data.path={corpus}",
        "data.text_field=content",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "part0.jsonl:1: data.text_field='content' is not a field" in proc.stderr and "Traceback" not in proc.stderr
    assert any(line.startswith("error: ") for line in proc.stderr.splitlines())  # not glued to a progress bar
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_resumed_run_reads_exactly_the_batches_of_an_uninterrupted_one(documents, tmp_path):
    corpus = small_corpus(documents, tmp_path / "corpus")
    accumulate = "train.micro_batch_size=2"  # 2 micro-batches per optimizer step
    run(tiny_run(corpus, tmp_path / "a", tmp_path / "a_rec", "train.max_steps=24", accumulate), tmp_path / "cache")
    run(tiny_run(corpus, tmp_path / "b", tmp_path / "b_rec", "train.max_steps=10", accumulate), tmp_path / "cache")
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    run(
        tiny_run(corpus, tmp_path / "b2", tmp_path / "b_rec", "train.max_steps=24", accumulate, f"ckpt_path={last}"),
        tmp_path / "cache",
    )
    a, b = read_records(tmp_path / "a_rec"), read_records(tmp_path / "b_rec")
    assert [r["step"] for r in b] == [s for s in range(24) for _ in range(2)]  # no batch repeated, none skipped
    assert a == b
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert 1 < results["epochs"] < 3  # it crossed an epoch boundary
    state = torch.load(last, weights_only=True)["LMDataModule"]
    assert state["global_step"] == 10 and state["micro_batches"] == 20 and state["tokenizer"] == "bytes"


@pytest.mark.slow
def test_two_ddp_processes_read_disjoint_halves_of_the_single_process_stream(documents, tmp_path):
    corpus = small_corpus(documents, tmp_path / "corpus")
    steps = "train.max_steps=6"
    run(tiny_run(corpus, tmp_path / "one", tmp_path / "one_rec", steps, "train.micro_batch_size=2"), tmp_path / "cache")
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.precision=32-true"]
    run(tiny_run(corpus, tmp_path / "ddp", tmp_path / "ddp_rec", steps, *ddp), tmp_path / "cache", timeout=600)
    single = read_records(tmp_path / "one_rec")  # 2 micro-batches per step: global micro-batches 2s, 2s + 1
    ranks = [read_records(tmp_path / "ddp_rec", r) for r in range(2)]
    assert len(single) == 12 and [len(r) for r in ranks] == [6, 6]
    for step in range(6):
        r0, r1 = ranks[0][step]["rows"], ranks[1][step]["rows"]
        assert not set(r0) & set(r1)  # disjoint
        assert r0 == single[2 * step]["rows"] and r1 == single[2 * step + 1]["rows"]  # together: the single stream
