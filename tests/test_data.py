import math

import numpy as np
import pytest

from lm_lab.data.config import DataConfig
from lm_lab.data.datamodule import LMDataModule
from lm_lab.data.embedded import Document, embedded_documents
from lm_lab.data.tokenizers import BPETokenizer, ByteTokenizer, TokenizerConfig
from lm_lab.data.tokens import open_split, read_meta, split_of, unigram_entropy, write_token_dir
from lm_lab.data.windows import EpochWindowSampler, TokenWindows, sequential_starts
from lm_lab.errors import ConfigError

TEXTS = [
    "def f(x):\n    return x * 2  # doubles\n",
    "Ünïcödé tëxt — with em dashes… and emoji 🎉\n",
    "class A:\n    '''A docstring.'''\n    pass\n",
    "",
    "\t\ttabs and  double  spaces\r\n",
]


def small_docs(n=60):
    return [Document(f"doc/{i:03d}.py", f"# file {i}\n" + TEXTS[i % len(TEXTS)] * (1 + i % 4)) for i in range(n)]


def test_split_is_a_pure_function_of_the_doc_id():
    ids = [f"stdlib/mod{i}.py" for i in range(5000)]
    first = [split_of(i, 0.1) for i in ids]
    assert first == [split_of(i, 0.1) for i in reversed(ids)][::-1]  # order does not matter
    frac = first.count("val") / len(ids)
    assert 0.08 < frac < 0.12
    # growing the fraction only moves documents from train to val, never the other way
    assert all(split_of(i, 0.2) == "val" for i, s in zip(ids, first, strict=True) if s == "val")


@pytest.mark.parametrize("make", [ByteTokenizer, lambda: BPETokenizer.train([t * 20 for t in TEXTS], 300)])
def test_tokenizer_round_trip(make):
    tok = make()
    for text in TEXTS + ["".join(TEXTS)]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.eot_id < tok.vocab_size
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]


def test_bpe_save_load_keeps_identity(tmp_path):
    tok = BPETokenizer.train([t * 20 for t in TEXTS], 300)
    tok.save(tmp_path / "t.json")
    again = BPETokenizer.load(tmp_path / "t.json")
    assert again.name == tok.name and again.encode("".join(TEXTS)) == tok.encode("".join(TEXTS))


def test_token_dir_counts_split_and_content(tmp_path):
    docs = small_docs()
    tok = ByteTokenizer()
    meta = write_token_dir(tmp_path / "tok", docs, tok, 0.2, info={"source": "test"})
    assert meta == read_meta(tmp_path / "tok")
    for split in ("train", "val"):
        mine = [d for d in docs if split_of(d.doc_id, 0.2) == split]
        tokens = open_split(tmp_path / "tok", split)
        assert meta["splits"][split]["documents"] == len(mine) > 0
        expected = [b for d in mine for b in (*d.text.encode(), tok.eot_id)]
        assert tokens.dtype == np.uint16 and tokens.tolist() == expected
    assert meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"] == sum(
        len(d.text.encode()) + 1 for d in docs
    )


def test_truncated_token_file_is_refused(tmp_path):
    write_token_dir(tmp_path / "tok", small_docs(), ByteTokenizer(), 0.2, info={})
    path = tmp_path / "tok" / "train.bin"
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(ConfigError, match=r"train\.bin .* missing or truncated"):
        open_split(tmp_path / "tok", "train")


def test_unigram_entropy_exact():
    assert unigram_entropy(np.array([0, 1, 2, 3] * 5), 10) == pytest.approx(math.log(4))
    assert unigram_entropy(np.array([7] * 9), 10) == 0.0
    p = np.array([0.5, 0.25, 0.25])
    assert unigram_entropy(np.array([0, 0, 1, 2]), 3) == pytest.approx(-(p * np.log(p)).sum())


def test_epoch_sampler_visits_disjoint_windows_deterministically():
    tokens = np.arange(1000)
    sampler = EpochWindowSampler(len(tokens), seq_len=16, seed=3)
    windows = TokenWindows(tokens, 16)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        starts = list(sampler)
        assert starts == list(EpochWindowSampler(len(tokens), 16, 3).starts(epoch))  # rebuilt anywhere
        assert len(starts) == len(sampler) == 1000 // 16 - 1
        assert len({s % 16 for s in starts}) == 1  # one phase per epoch: windows tile the stream
        assert sorted(starts) == list(range(starts[0] % 16, starts[0] % 16 + 16 * len(starts), 16))
        for s in starts:
            w = windows[s]
            assert w.tolist() == list(range(s, s + 17))  # contiguous seq_len + 1 tokens, in bounds
    sampler.set_epoch(0)
    e0 = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != e0


def test_an_epoch_is_a_whole_number_of_global_batches():
    sampler = EpochWindowSampler(1000, seq_len=16, seed=3, multiple_of=8)
    assert len(sampler) == 56  # 61 windows fit, rounded down to 7 batches of 8
    left_out = []
    for epoch in range(4):
        starts = sampler.starts(epoch)
        assert len(starts) == 56 and len(set(starts.tolist())) == 56
        phase = starts[0] % 16
        left_out.append(set(range(phase, phase + 16 * 61, 16)) - set(starts.tolist()))
        assert all(len(x) == 5 for x in left_out[-1:])
    assert len({frozenset((s - s % 16) for s in x) for x in left_out}) > 1  # not the same text left out each epoch


def test_sequential_starts_cover_each_target_once():
    assert sequential_starts(100, 10) == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    assert sequential_starts(100, 10, max_tokens=25) == [0, 10]


def test_embedded_corpus_is_real_and_stable():
    docs = list(embedded_documents())
    assert docs == list(embedded_documents())
    ids = [d.doc_id for d in docs]
    assert len(set(ids)) == len(ids) > 300
    assert "stdlib/json/decoder.py" in ids and any(i.startswith("pydoc/") for i in ids)
    assert not any("/test/" in i or "site-packages" in i for i in ids)
    assert sum(len(d.text) for d in docs) > 5_000_000


def test_datamodule_on_the_embedded_corpus(cache_dir):
    dm = LMDataModule(
        DataConfig(cache_dir=str(cache_dir)), TokenizerConfig(name="bytes", vocab_size=257),
        seq_len=64, micro_batch_size=4, val_tokens=4096, seed=0,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    train_batch = next(iter(dm.train_dataloader()))
    assert train_batch.shape == (4, 65)
    val = list(dm.val_dataloader())
    assert sum(b.shape[0] for b in val) == 4096 // 64
    text = dm.tokenizer.decode(val[0][0].tolist())
    assert len(text) > 30  # real text, not random ids
    n_train, n_val = len(dm.splits["train"]), len(dm.splits["val"])
    assert 0.05 < n_val / (n_train + n_val) < 0.2
    h = dm.val_unigram_entropy()
    assert 2.5 < h < math.log(257)  # Python source bytes: far from uniform
    # a second module finds the cached files and agrees exactly
    dm2 = LMDataModule(dm.cfg, dm.tokenizer_cfg, seq_len=64, micro_batch_size=4, val_tokens=4096, seed=0)
    dm2.prepare_data()
    dm2.setup("fit")
    assert np.array_equal(dm2.splits["val"], dm.splits["val"]) and dm2.val_unigram_entropy() == h


def test_data_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"data\.name='owt' is unknown"):
        DataConfig(name="owt")
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size=300 but the bytes tokenizer has 257"):
        TokenizerConfig(name="bytes", vocab_size=300)
