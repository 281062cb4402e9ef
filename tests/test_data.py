"""Data building blocks: the held-out rule, tokenizers, token shards, window order, resume position, streaming."""

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lm_lab.data.config import DataConfig
from lm_lab.data.datamodule import LMDataModule
from lm_lab.data.embedded import embedded_documents
from lm_lab.data.prepare import ShardWriter, ordered_map
from lm_lab.data.shards import TokenShards, held_out, token_dtype, unigram_entropy
from lm_lab.data.tokenizers import BPETokenizer, ByteTokenizer, TiktokenTokenizer, TokenizerConfig, tokenizer_from_spec
from lm_lab.data.windows import EpochPlan, TrainWindows, ValWindows
from lm_lab.errors import ConfigError
from lm_lab.fileio import atomic_write_json

TEXTS = [
    "def f(x):\n    return x * 2  # doubles\n",
    "Ünïcödé tëxt — with em dashes… and emoji 🎉\n",
    "class A:\n    '''A docstring.'''\n    pass\n",
    "\t\ttabs and  double  spaces\r\n",
]


def test_held_out_is_a_pure_function_of_the_text():
    texts = [f"document number {i}\n" for i in range(5000)]
    flags = [held_out(t, 0.1) for t in texts]
    assert flags == [held_out(t, 0.1) for t in reversed(texts)][::-1]  # order does not matter
    assert 0.08 < sum(flags) / len(flags) < 0.12
    # a larger fraction only moves documents from train to validation, never back
    assert all(held_out(t, 0.2) for t, f in zip(texts, flags, strict=True) if f)
    # pinned: another rule with the same fraction would silently re-split every cached corpus (and move the
    # golden losses); these are the held-out documents among the embedded corpus's first 200 at 10%
    docs = [d.text for d in list(embedded_documents())[:200]]
    pinned = [4, 8, 11, 33, 41, 44, 49, 55, 56, 83, 96, 108, 124, 130, 132, 145, 150, 176, 189]
    assert [i for i, d in enumerate(docs) if held_out(d, 0.1)] == pinned


def tiny_tiktoken():
    import tiktoken

    ranks = {bytes([i]): i for i in range(256)}
    for pair in (b"de", b"f(", b"  ", b"re"):
        ranks[pair] = len(ranks)
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    enc = tiktoken.Encoding(
        "tiny", pat_str=pattern, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)}
    )
    return TiktokenTokenizer(enc)


@pytest.mark.parametrize(
    "make",
    [ByteTokenizer, lambda: BPETokenizer.train([t * 20 for t in TEXTS], 300), tiny_tiktoken],
    ids=["bytes", "bpe", "tiktoken"],
)
def test_tokenizer_round_trip_and_document_encoding(make):
    tok = make()
    for text in TEXTS + ["".join(TEXTS)]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids) and tok.eot_id not in ids
    tokens, lengths = tok.encode_docs(TEXTS, np.dtype(np.uint16))
    assert lengths.tolist() == [len(tok.encode(t)) + 1 for t in TEXTS]
    expected = [i for t in TEXTS for i in (*tok.encode(t), tok.eot_id)]
    assert tokens.tolist() == expected


@pytest.mark.parametrize(
    "make",
    [ByteTokenizer, lambda: BPETokenizer.train([t * 20 for t in TEXTS], 300), tiny_tiktoken],
    ids=["bytes", "bpe", "tiktoken"],
)
def test_token_bytes_add_up_to_the_texts_utf8_bytes(make):
    """Bits per byte divide by these: every text's tokens' byte counts sum to its UTF-8 length (multi-byte
    characters split across tokens included), end-of-text counts 0."""
    tok = make()
    lengths = tok.token_bytes()
    assert lengths.shape == (tok.vocab_size,) and lengths[tok.eot_id] == 0
    for text in TEXTS + ["".join(TEXTS)]:
        assert lengths[tok.encode(text)].sum() == len(text.encode("utf-8"))
    assert lengths[tok.encode("🎉")].sum() == 4 and len(tok.encode("🎉")) >= (4 if make is ByteTokenizer else 1)


def test_bpe_save_load_keeps_identity(tmp_path):
    tok = BPETokenizer.train([t * 20 for t in TEXTS], 300)
    tok.save(tmp_path / "t.json")
    again = BPETokenizer.load(tmp_path / "t.json")
    assert again.name == tok.name and again.encode("".join(TEXTS)) == tok.encode("".join(TEXTS))
    worker_copy = tokenizer_from_spec(tok.spec)  # what a tokenising process rebuilds
    assert worker_copy.encode("".join(TEXTS)) == tok.encode("".join(TEXTS)) and worker_copy.eot_id == tok.eot_id


def test_offline_hub_tokenizers_fail_at_once_with_instructions(tmp_path, monkeypatch):
    from lm_lab.data.tokenizers import load_hf, load_tiktoken

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("lm_lab.data.tokenizers.reachable", lambda host, timeout=3.0: False)
    with pytest.raises(ConfigError, match=r"vocab.bpe, encoder.json not cached in .* set TIKTOKEN_CACHE_DIR=DIR"):
        load_tiktoken("gpt2")
    with pytest.raises(ConfigError, match=r"not in the Hugging Face cache .*huggingface-cli download"):
        load_hf("some-org/some-tokenizer", None)
    with pytest.raises(ConfigError, match="not a tiktoken encoding"):
        load_tiktoken("gpt5")


def _write_split(folder, split, docs, shard_tokens):
    w = ShardWriter(folder, split, shard_tokens)
    for d in docs:
        w.add(np.asarray(d, dtype=np.uint16))
    return w.close()


def make_shards(folder, train_docs, val_docs, shard_tokens=10**9):
    folder.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": _write_split(folder, "train", train_docs, shard_tokens),
        "val": _write_split(folder, "val", val_docs, shard_tokens),
    }
    atomic_write_json(folder / "meta.json", {"format": 2, "dtype": "uint16", "splits": splits})
    return folder


def test_shard_writer_splits_at_document_boundaries(tmp_path):
    docs = [list(range(i, i + 30)) for i in range(0, 300, 30)]  # 10 documents of 30 tokens
    folder = make_shards(tmp_path / "tok", docs, [[1, 2, 3]], shard_tokens=100)
    shards = TokenShards(folder, "train")
    assert shards.sizes.tolist() == [90, 90, 90, 30]
    assert shards.concatenated().tolist() == list(range(300))
    path = folder / "train-00001.bin"
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(ConfigError, match=r"train-00001\.bin has 174 bytes .* missing or truncated"):
        TokenShards(folder, "train")


def test_unigram_entropy_exact():
    assert unigram_entropy(np.array([0, 1, 2, 3] * 5), 10) == pytest.approx(math.log(4))
    assert unigram_entropy(np.array([7] * 9), 10) == 0.0
    p = np.array([0.5, 0.25, 0.25])
    assert unigram_entropy(np.array([0, 0, 1, 2]), 3) == pytest.approx(-(p * np.log(p)).sum())


def test_token_files_use_the_smallest_dtype_that_holds_every_id():
    assert token_dtype(257) == token_dtype(50257) == token_dtype(2**16) == np.uint16  # ids 0 .. 65535
    assert token_dtype(2**16 + 1) == token_dtype(128256) == np.uint32


def test_epoch_plan_edges():
    # a shard shorter than two windows holds no tile at a random phase; one window in all is enough
    assert EpochPlan(np.array([200, 20, 130]), seq_len=16, seed=0).tiles.tolist() == [11, 0, 7]
    assert EpochPlan(np.array([32]), seq_len=16, seed=0).n_windows == 1  # at any phase < 16, 17 tokens fit
    with pytest.raises(ValueError, match="31 tokens hold 0 windows"):
        EpochPlan(np.array([31]), seq_len=16, seed=0)


def test_epoch_plan_tiles_each_shard_once_per_epoch():
    plan = EpochPlan(np.array([200, 75, 130]), seq_len=16, seed=3, multiple_of=4)
    assert plan.tiles.tolist() == [11, 3, 7] and plan.n_windows == 20  # 21 windows, whole batches of 4

    def windows(epoch):
        phase, order = plan.epoch(epoch)
        return plan.locate(phase, order)

    for epoch in range(3):
        shard, start = windows(epoch)
        again = windows(epoch)
        assert np.array_equal(shard, again[0]) and np.array_equal(start, again[1])  # rebuilt anywhere
        phase = start[0] % 16
        assert (start % 16 == phase).all() and len(set(zip(shard.tolist(), start.tolist(), strict=True))) == 20
        sizes = np.array([200, 75, 130])
        assert (start + 17 <= sizes[shard]).all()  # every window inside its shard
    assert not np.array_equal(windows(0)[1], windows(1)[1])
    # a random phase per epoch: the windows cut the text at other places each time, not only in another order
    phases = [plan.epoch(e)[0] for e in range(8)]
    assert len(set(phases)) >= 4 and all(0 <= p < 16 for p in phases)


def windows_of(dataset, n, workers=0):
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out
    return out


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 250, size=n).tolist() for n in rng.integers(20, 200, size=8)]
    return TokenShards(make_shards(tmp_path / "tok", docs, [[1] * 50], shard_tokens=300), "train")


def test_train_windows_resume_and_worker_count_do_not_change_the_order(shards):
    kw = {"seq_len": 16, "micro": 2, "batch_size": 4, "seed": 7}
    full = windows_of(TrainWindows(shards, **kw), 60)
    per_epoch = TrainWindows(shards, **kw).per_epoch
    assert 60 > 2 * per_epoch  # the check runs across two epoch boundaries
    assert all(
        torch.equal(a, b) for a, b in zip(full, windows_of(TrainWindows(shards, **kw), 60, workers=2), strict=True)
    )
    resumed = windows_of(TrainWindows(shards, **kw, start=22), 38, workers=3)
    assert all(torch.equal(a, b) for a, b in zip(full[22:], resumed, strict=True))
    # each epoch reads each of its windows once
    rows = [tuple(r.tolist()) for b in full[:per_epoch] for r in b]
    assert len(set(rows)) == len(rows) == per_epoch * 2
    assert all(b.dtype == torch.int64 and b.shape == (2, 17) for b in full)  # token ids, as the embedding takes them


def test_ranks_read_disjoint_parts_that_make_up_the_single_process_stream(shards):
    kw = {"seq_len": 16, "micro": 2, "batch_size": 8, "seed": 1}
    single = windows_of(TrainWindows(shards, **kw), 24)
    ranks = [windows_of(TrainWindows(shards, **kw, rank=r, world=2), 12) for r in range(2)]
    for j, batch in enumerate(single):  # global micro-batch j lives on rank j % 2
        assert torch.equal(batch, ranks[j % 2][j // 2])
    resumed = windows_of(TrainWindows(shards, **kw, rank=1, world=2, start=8), 8)
    assert all(torch.equal(a, b) for a, b in zip(ranks[1][4:], resumed, strict=True))


def test_val_windows_cover_each_target_once_across_ranks(tmp_path):
    folder = make_shards(tmp_path / "tok", [[0] * 100], [list(range(100)), list(range(100, 150))], shard_tokens=100)
    val = TokenShards(folder, "val")
    whole = ValWindows(val, seq_len=10)
    assert [w for w in whole.windows] == [(0, k * 10) for k in range(9)] + [(1, k * 10) for k in range(4)]
    parts = [ValWindows(val, 10, rank=r, world=3).windows for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(whole.windows)
    assert ValWindows(val, 10, max_tokens=25).windows == [(0, 0), (0, 10)]
    assert whole[1].tolist() == list(range(10, 21))
    assert whole.targets().tolist() == list(range(1, 91)) + list(range(101, 141))
    assert ValWindows(val, 10, max_tokens=5).windows == [(0, 0)]  # fewer tokens than a window: still one
    # a window needs seq_len + 1 tokens: 31 tokens hold 3 windows of 10 targets, 30 only 2
    edge = TokenShards(make_shards(tmp_path / "edge", [[0] * 100], [list(range(31)), list(range(30))], 31), "val")
    assert ValWindows(edge, 10).windows == [(0, 0), (0, 10), (0, 20), (1, 0), (1, 10)]


def test_ordered_map_keeps_order_across_processes():
    from lm_lab.data.prepare import _init_worker, _tokenize, tasks

    batches = list(tasks(TEXTS * 6, 0.5, False, max_chars=40))
    assert len(batches) > 3
    args = (("bytes", None), "uint16", 0.5, False, True)
    one = list(ordered_map(_tokenize, batches, 1, _init_worker, args))
    two = list(ordered_map(_tokenize, batches, 2, _init_worker, args))
    for a, b in zip(one, two, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3], strict=True)) and a[3] == b[3]


def test_embedded_corpus_is_real_and_stable():
    docs = list(embedded_documents())
    assert docs == list(embedded_documents())
    ids = [d.doc_id for d in docs]
    assert len(set(ids)) == len(ids) > 300
    assert "stdlib/json/decoder.py" in ids and any(i.startswith("pydoc/") for i in ids)
    assert not any("/test/" in i or "site-packages" in i for i in ids)
    assert sum(len(d.text) for d in docs) > 5_000_000


def embedded_datamodule(cache_dir, **settings) -> LMDataModule:
    """The embedded corpus in bytes, windows of 64, micro-batches of 4, batches of 8: prepared and set up."""
    settings = {"seq_len": 64, "micro_batch_size": 4, "batch_size": 8, "val_tokens": 4096, "seed": 0, **settings}
    dm = LMDataModule(DataConfig(cache_dir=str(cache_dir)), TokenizerConfig(name="bytes", vocab_size=257), **settings)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_datamodule_on_the_embedded_corpus(cache_dir):
    dm = embedded_datamodule(cache_dir)
    train_batch = next(iter(dm.train_dataloader()))
    assert train_batch.shape == (4, 65)
    val = list(dm.val_dataloader())
    assert sum(b.shape[0] for b in val) == 4096 // 64 and dm.val_token_count() == 4096
    assert len(dm.tokenizer.decode(val[0][0].tolist())) > 30  # real text, not random ids
    n_train, n_val = len(dm.train), len(dm.val)
    assert 0.05 < n_val / (n_train + n_val) < 0.2
    h = dm.val_unigram_entropy()
    assert 2.5 < h < math.log(257)  # Python source bytes: far from uniform
    dm2 = embedded_datamodule(cache_dir)  # a second module finds the cached files and agrees exactly
    assert np.array_equal(dm2.val.concatenated(), dm.val.concatenated()) and dm2.val_unigram_entropy() == h
    assert dm.epochs_at(10) == pytest.approx(10 * 8 / TrainWindows(dm.train, 64, 4, 8, 0).plan.n_windows)


def test_a_run_that_repeats_its_corpus_many_times_is_told_so(cache_dir, caplog):
    dm = embedded_datamodule(cache_dir)
    per_epoch = TrainWindows(dm.train, 64, 4, 8, 0).plan.n_windows / 8  # optimizer steps per pass
    for max_steps, level in (
        (int(0.5 * per_epoch), None),
        (int(3 * per_epoch), "INFO"),
        (int(20 * per_epoch), "WARNING"),
    ):
        dm.val, dm.train = None, None
        dm.trainer = SimpleNamespace(max_steps=max_steps, is_global_zero=True, global_rank=0, world_size=1)
        caplog.clear()
        with caplog.at_level("INFO", logger="lm_lab"):
            dm.setup("fit")
        said = [r for r in caplog.records if "reads the train split" in r.getMessage()]
        if level is None:
            assert not said
        else:
            assert len(said) == 1 and said[0].levelname == level
            assert f"{max_steps / per_epoch:.1f} times" in said[0].getMessage()


def test_data_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.source='owt' is unknown"):
        DataConfig(source="owt")
    with pytest.raises(ConfigError, match=r"data\.path='.*nowhere' does not exist"):
        DataConfig(source="local", path=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"data\.mode=streaming needs data\.val_split_tokens"):
        DataConfig(source="local", path=str(tmp_path), mode="streaming")
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size=300 but the bytes tokenizer has 257"):
        TokenizerConfig(name="bytes", vocab_size=300)
    with pytest.raises(ConfigError, match=r"tokenizer\.path is required"):
        TokenizerConfig(name="hf", vocab_size=100)


def test_bpe_is_trained_on_the_training_documents_only(tmp_path):
    """The lab's BPE equals, byte for byte, one trained on exactly the documents outside the validation split."""
    import json

    from lm_lab.data.prepare import get_tokenizer

    docs = [d.text[:1500] for d in list(embedded_documents())[:150]]
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = DataConfig(name="mine", source="local", path=str(folder), val_fraction=0.3, cache_dir=str(tmp_path / "c"))
    tok = get_tokenizer(cfg, TokenizerConfig(name="bpe", vocab_size=400))
    train_docs = [d for d in docs if not held_out(d, 0.3)]
    assert 80 < len(train_docs) < 130
    assert tok._tok.to_str() == BPETokenizer.train(train_docs, 400)._tok.to_str()
    assert tok._tok.to_str() != BPETokenizer.train(docs, 400)._tok.to_str()  # the held-out documents would matter


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": 1}, "seed: 0 -> 1"),
        ({"batch_size": 16}, "batch_size: 8 -> 16"),
        ({"seq_len": 32}, "seq_len: 64 -> 32"),
        ({"saved": {"tokenizer": "bpe4096-0123456789ab"}}, "tokenizer: 'bpe4096-0123456789ab' -> 'bytes'"),
        ({"saved": {"content": "0" * 16}}, "content: '0000000000000000' -> "),
        ({"saved": {"data": "other"}}, "data: 'other' -> 'embedded'"),
    ],
    ids=["seed", "batch_size", "seq_len", "tokenizer", "token-files", "corpus"],
)
def test_a_resume_that_would_read_other_tokens_is_refused(cache_dir, change, message):
    """The data module's own check, independent of fit's: a restored state from other token files, another
    tokenizer, seed, sequence length or batch size refuses to build the training loader."""

    state = embedded_datamodule(cache_dir).state_dict()
    same = embedded_datamodule(cache_dir)
    same.load_state_dict(state)
    assert next(iter(same.train_dataloader())).shape == (4, 65)  # the same settings resume
    saved = {**state, **change.get("saved", {})}
    other = embedded_datamodule(cache_dir, **{k: v for k, v in change.items() if k != "saved"})
    other.load_state_dict(saved)
    with pytest.raises(ConfigError, match=re.escape(message)):
        other.train_dataloader()
