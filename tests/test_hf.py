"""Hugging Face models in and out (`lm_lab.hf`) and zero-shot evaluation through lm-evaluation-harness
(`lm_lab.evaluate`): exported lab models load in `transformers` with the lab's logits; tiny HF GPT-2 and LLaMA
models built from local configs, read back, give HF's logits; HF -> lab -> HF returns the same tensors; lm-eval's
accuracy on a local task equals the one computed from the lab model's own log-likelihoods. Nothing touches the
network (every socket connection is refused)."""

from __future__ import annotations

import importlib.util
import json
import socket
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from lm_lab.data.config import DataConfig
from lm_lab.data.prepare import corpus_root
from lm_lab.data.tokenizers import BPETokenizer, TokenizerConfig
from lm_lab.errors import ConfigError
from lm_lab.hf import config_from_hf, export, export_kind, hf_to_lab, load_any, read_hf, read_source
from lm_lab.models import GPT, ModelConfig

transformers = pytest.importorskip("transformers")

V = 97  # padded to 128 embedding rows in lab models (pad_vocab_multiple 64): export must drop 31 of them
LLAMA_STYLE = {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "n_head": 4, "n_kv_head": 2}
TOL = 1e-5  # float32 logits of size ~5 agree to ~5e-7; a wrong norm eps moves them by ~1e-3, a wrong tensor by ~10


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every outgoing connection fails at once, and the hub libraries are told they are offline."""

    def refuse(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"test_hf: network access to {address} refused")
        return real_connect(self, address, *args, **kwargs)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")


def tiny(**overrides) -> ModelConfig:
    return ModelConfig(
        **{"name": "t", "n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 16, "vocab_size": V, **overrides}
    )


def randomized(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Every parameter random, norm gains and biases too (a skipped, swapped or zeroed one shows in the logits)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = name.endswith("weight") and p.ndim == 1  # LayerNorm and RMSNorm gains: around 1
            p.copy_(torch.randn(p.shape, generator=g) * std + gain)
    return model.eval()


def lab_checkpoint(path: Path, model: GPT, tokenizer: dict | None = None, data: dict | None = None) -> Path:
    """A checkpoint as the lab's Trainer writes it: the LightningModule's `model.` tensors and hyper-parameters."""
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "global_step": 0,
            "loops": {},
            "optimizer_states": [],
            "hyper_parameters": {"model": asdict(model.config), "tokenizer": tokenizer, "data": data},
        },
        path,
    )
    return path


def hf_load(folder: Path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, info  # no missing, unexpected or mismatched weights
    return model.eval()


IDX = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(1))


# -- export ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"bias": False},
        {"tie_embeddings": False},
        {
            "bias": False,
            "tie_embeddings": False,
            "n_layer": 3,
            "attn_scale_by_layer": True,
            "d_ff": 48,
            "layer_norm_eps": 1e-3,
        },
    ],
    ids=["biases-tied", "no-biases-tied", "biases-untied", "no-biases-untied-layer-scaled"],
)
def test_a_lab_gpt2_exports_as_gpt2lmheadmodel_with_equal_logits(tmp_path, overrides):
    cfg = tiny(**overrides)
    ours = randomized(GPT(cfg))
    out = export(lab_checkpoint(tmp_path / "run.ckpt", ours), tmp_path / "hf")
    theirs = hf_load(out)
    assert type(theirs).__name__ == "GPT2LMHeadModel"
    assert theirs.config.tie_word_embeddings == cfg.tie_embeddings
    assert theirs.config.scale_attn_by_inverse_layer_idx == cfg.attn_scale_by_layer
    assert theirs.lm_head.weight.shape == (V, 32)  # the real vocabulary only
    with torch.no_grad():
        logits = theirs(IDX).logits
        torch.testing.assert_close(logits, ours(IDX)[..., :V], rtol=0, atol=TOL)
    if not cfg.bias:  # Hugging Face's GPT-2 always has biases: zeros compute the lab's logits
        biases = [p for n, p in theirs.named_parameters() if n.endswith(".bias")]
        assert len(biases) == 6 * cfg.n_layer + 1 and all(torch.equal(b, torch.zeros_like(b)) for b in biases)
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        names = list(f.keys())  # safe_open has no __contains__
    assert ("lm_head.weight" in names) == (not cfg.tie_embeddings)  # a tied head is the embedding, in no file


@pytest.mark.parametrize(
    "overrides", [{"bias": False, "tie_embeddings": False}, {"bias": True, "tie_embeddings": True, "rope_theta": 500.0}]
)
def test_a_lab_llama_exports_as_llamaforcausallm_with_equal_logits(tmp_path, overrides):
    cfg = tiny(**LLAMA_STYLE, **overrides, d_ff=80)
    ours = randomized(GPT(cfg))
    theirs = hf_load(export(lab_checkpoint(tmp_path / "run.ckpt", ours), tmp_path / "hf"))
    c = theirs.config
    assert type(theirs).__name__ == "LlamaForCausalLM"
    assert (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == (4, 2, 80)
    assert (c.tie_word_embeddings, c.attention_bias, c.mlp_bias) == (cfg.tie_embeddings, cfg.bias, cfg.bias)
    assert c.rope_parameters["rope_theta"] == cfg.rope_theta and c.vocab_size == V
    with torch.no_grad():
        torch.testing.assert_close(theirs(IDX).logits, ours(IDX)[..., :V], rtol=0, atol=TOL)


# -- import -----------------------------------------------------------------------------------------------------


def hf_gpt2(**config) -> transformers.GPT2LMHeadModel:
    cfg = transformers.GPT2Config(
        **{
            "vocab_size": V,
            "n_positions": 16,
            "n_embd": 32,
            "n_layer": 3,
            "n_head": 2,
            "layer_norm_epsilon": 1e-3,
            **config,
        },
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    return randomized(transformers.GPT2LMHeadModel(cfg), seed=2)


def hf_llama(**config) -> transformers.LlamaForCausalLM:
    cfg = transformers.LlamaConfig(
        **{
            "vocab_size": V,
            "hidden_size": 32,
            "intermediate_size": 80,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 16,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500.0,
            "tie_word_embeddings": False,
            **config,
        },
        bos_token_id=None,
        eos_token_id=None,
    )
    return randomized(transformers.LlamaForCausalLM(cfg), seed=3)


def test_a_sharded_hf_gpt2_folder_reads_as_the_lab_model_with_equal_logits(tmp_path):
    theirs = hf_gpt2(scale_attn_by_inverse_layer_idx=True, n_inner=48)
    theirs.save_pretrained(tmp_path / "gpt2", max_shard_size="20KB")
    assert (tmp_path / "gpt2" / "model.safetensors.index.json").is_file()  # sharded: several files
    cfg, ours = load_any(tmp_path / "gpt2")
    assert (cfg.name, cfg.pad_vocab_multiple, cfg.d_ff, cfg.attn_scale_by_layer, cfg.layer_norm_eps) == (
        "hf:gpt2:gpt2",
        1,
        48,
        True,
        1e-3,
    )
    assert (cfg.norm, cfg.mlp, cfg.positions, cfg.bias, cfg.tie_embeddings) == (
        "layernorm",
        "gelu",
        "learned",
        True,
        True,
    )
    assert ours.lm_head.weight is ours.wte.weight and not ours.training
    with torch.no_grad():
        torch.testing.assert_close(ours(IDX), theirs(IDX).logits, rtol=0, atol=TOL)


def test_an_hf_llama_reads_as_the_lab_model_with_equal_logits(tmp_path):
    """The lab's RoPE is HF LLaMA's half-split layout: q and k rows map as they are (a permuted layout moves
    these logits by ~10). Read here from a `pytorch_model.bin` (plain tensors, weights_only)."""
    theirs = hf_llama()
    (tmp_path / "llama").mkdir()
    theirs.config.save_pretrained(tmp_path / "llama")
    torch.save(theirs.state_dict(), tmp_path / "llama" / "pytorch_model.bin")
    cfg, ours = load_any(tmp_path / "llama")
    assert (cfg.n_head, cfg.n_kv_head, cfg.d_ff, cfg.rope_theta, cfg.layer_norm_eps) == (4, 2, 80, 500.0, 1e-5)
    assert (cfg.norm, cfg.mlp, cfg.positions, cfg.bias, cfg.tie_embeddings) == (
        "rmsnorm",
        "swiglu",
        "rope",
        False,
        False,
    )
    with torch.no_grad():
        torch.testing.assert_close(ours(IDX), theirs(IDX).logits, rtol=0, atol=TOL)


@pytest.mark.parametrize("make", [hf_gpt2, lambda: hf_llama(tie_word_embeddings=True)], ids=["gpt2", "llama-tied"])
def test_hf_to_lab_to_hf_gives_back_the_same_tensors_and_config(tmp_path, make):
    original = make()
    original.save_pretrained(tmp_path / "original")
    cfg, state = read_source(tmp_path / "original")
    model = GPT(cfg)
    model.load_state_dict(state)
    back = export(lab_checkpoint(tmp_path / "lab.ckpt", model), tmp_path / "back")
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "original" / "model.safetensors"), load_file(back / "model.safetensors")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    before, after = (json.loads((f / "config.json").read_text()) for f in (tmp_path / "original", back))
    keys = ("model_type", "vocab_size", "tie_word_embeddings", "n_embd", "n_inner", "hidden_size", "head_dim")
    assert {k: after.get(k) for k in keys} == {k: before.get(k) for k in keys}


def test_read_source_takes_a_checkpoint_a_run_directory_or_an_hf_folder(tmp_path):
    model = randomized(GPT(tiny()))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    lab_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", model)
    for source in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.ckpt"):
        cfg, state = read_source(source)
        assert cfg == model.config and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    hf_gpt2().save_pretrained(tmp_path / "hf")
    assert read_source(tmp_path / "hf")[0].name == "hf:gpt2:hf"


# -- refusals, one line each -----------------------------------------------------------------------------------


GPT2_JSON = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": V}
LLAMA_JSON = {
    "model_type": "llama",
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "hidden_size": 32,
    "intermediate_size": 80,
    "vocab_size": V,
}


@pytest.mark.parametrize(
    "config, message",
    [
        ({**GPT2_JSON, "activation_function": "relu"}, "activation_function='relu'"),
        ({**GPT2_JSON, "reorder_and_upcast_attn": True}, "reorder_and_upcast_attn=True"),
        ({**GPT2_JSON, "scale_attn_weights": False}, "scale_attn_weights=False"),
        ({**LLAMA_JSON, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling"),
        ({**LLAMA_JSON, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope scaling"),
        ({**LLAMA_JSON, "head_dim": 16}, "head_dim=16"),
        ({**LLAMA_JSON, "attention_bias": True, "mlp_bias": False}, "one `bias` flag"),
        ({**LLAMA_JSON, "hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({**LLAMA_JSON, "model_type": "mistral"}, "model_type='mistral' cannot be imported"),
    ],
)
def test_hf_configs_the_lab_would_compute_differently_are_refused(config, message):
    with pytest.raises(ConfigError, match=message) as e:
        config_from_hf(config)
    assert len(e.value.problems) == 1 and "\n" not in str(e.value)


def test_hf_configs_as_the_lab_reads_them():
    """Both RoPE spellings (transformers >= 5's rope_parameters; older rope_theta) and the dropout sites."""
    old = config_from_hf({**LLAMA_JSON, "rope_theta": 500.0, "rope_scaling": None, "attention_dropout": 0.1})
    new = config_from_hf({**LLAMA_JSON, "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}})
    assert old.rope_theta == new.rope_theta == 500.0 and old.n_kv_head == 4 and old.layer_norm_eps == 1e-6
    assert (old.attn_dropout, old.resid_dropout, old.embd_dropout) == (0.1, 0.0, 0.0)
    gpt2 = config_from_hf({**GPT2_JSON, "embd_pdrop": 0.1, "attn_pdrop": 0.2, "resid_pdrop": 0.3})
    assert (gpt2.embd_dropout, gpt2.attn_dropout, gpt2.resid_dropout, gpt2.block_size, gpt2.d_ff) == (
        0.1,
        0.2,
        0.3,
        1024,
        128,
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mlp": "moe", "moe_experts": 2, "moe_top_k": 1, "d_ff": 32}, "mixture-of-experts"),
        ({"denseformer": True}, "DenseFormer"),
        ({"block_pattern": "A,F,F"}, "block_pattern='A,F,F'"),
        ({"n_head": 4, "n_kv_head": 2}, r"model.n_kv_head=2 \(GPT-2 has no grouped-query"),
        ({"norm": "rmsnorm"}, "model.norm='rmsnorm': Hugging Face GPT-2 needs norm=layernorm"),
        ({**LLAMA_STYLE, "attn_scale_by_layer": True}, "LLaMA has no inverse-layer"),
        ({"positions": "none"}, "model.positions='none'"),
    ],
)
def test_lab_models_without_a_hugging_face_form_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        export_kind(tiny(**overrides))
    assert len(e.value.problems) == 1 and "\n" not in str(e.value)


def test_broken_folders_and_occupied_targets_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json: not a Hugging Face model folder"):
        read_hf(tmp_path / "empty")
    hf_gpt2().save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="holds no model.safetensors or pytorch_model.bin"):
        read_hf(tmp_path / "hf")
    state = hf_gpt2().state_dict()
    cfg = config_from_hf(hf_gpt2().config.to_dict())
    with pytest.raises(ConfigError, match=r"lack transformer\.h\.2\.mlp\.c_fc\.weight|lack h\.2\.mlp\.c_fc\.weight"):
        hf_to_lab("gpt2", {k: v for k, v in state.items() if k != "transformer.h.2.mlp.c_fc.weight"}, cfg)
    with pytest.raises(ConfigError, match=r"no place for: \['h\.0\.attn\.extra'\]"):
        hf_to_lab("gpt2", {**state, "transformer.h.0.attn.extra": torch.zeros(1)}, cfg)
    ckpt = lab_checkpoint(tmp_path / "run.ckpt", GPT(tiny()))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not an empty folder"):
        export(ckpt, tmp_path / "taken")
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["notes.txt"]


# -- tokenizers -------------------------------------------------------------------------------------------------

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "red green blue yellow", "one two three four five"]


def bpe_run(tmp_path: Path, vocab_size: int = 300) -> tuple[BPETokenizer, dict, dict]:
    """A trained BPE where the lab keeps it (the run's corpus cache), and the tokenizer and data settings a
    checkpoint of that run records."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS))
    data = DataConfig(source="local", path=str(corpus), cache_dir=str(tmp_path / "cache"))
    tok_cfg = TokenizerConfig(name="bpe", vocab_size=vocab_size)
    tok = BPETokenizer.train(TEXTS * 20, vocab_size)
    path = corpus_root(data) / f"{tok_cfg.cache_key}.tokenizer.json"
    path.parent.mkdir(parents=True)
    tok.save(path)
    return tok, asdict(tok_cfg), asdict(data)


def test_bpe_and_hf_tokenizers_are_saved_beside_the_export_with_the_same_ids(tmp_path):
    tok, tok_cfg, data = bpe_run(tmp_path)
    model = GPT(tiny(vocab_size=tok.vocab_size))
    out = export(lab_checkpoint(tmp_path / "bpe.ckpt", model, tok_cfg, data), tmp_path / "bpe")
    saved = transformers.AutoTokenizer.from_pretrained(out)
    text = "the dog sat in the green park"
    assert saved.encode(text) == tok.encode(text) and len(tok.encode(text)) < len(text.encode())
    assert saved.eos_token_id == tok.eot_id and saved.model_max_length == 16
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == tok.eot_id
    # `hf` kind from a local folder: its own files (here with an unk token the bpe export has not)
    saved.unk_token = "<|endoftext|>"
    saved.save_pretrained(tmp_path / "hf_tok")
    hf_cfg = asdict(TokenizerConfig(name="hf", vocab_size=tok.vocab_size, path=str(tmp_path / "hf_tok")))
    out = export(lab_checkpoint(tmp_path / "hf.ckpt", model, hf_cfg, data), tmp_path / "hf")
    again = transformers.AutoTokenizer.from_pretrained(out)
    assert again.encode(text) == tok.encode(text) and again.unk_token == "<|endoftext|>"


@pytest.mark.parametrize(
    "recorded, note",
    [
        ({"name": "bytes", "vocab_size": 257}, "bytes tokenizer has no Hugging Face form"),
        ({"name": "tiktoken", "vocab_size": 50257, "path": "gpt2"}, "pair it with that one"),
        (None, "does not record its tokenizer"),
    ],
)
def test_tokenizers_without_a_hugging_face_form_are_not_saved(tmp_path, caplog, recorded, note):
    model = GPT(tiny(vocab_size=(recorded or {}).get("vocab_size", V), block_size=8, n_layer=1))
    ckpt = lab_checkpoint(tmp_path / "run.ckpt", model, recorded)
    with caplog.at_level("WARNING", logger="lm_lab.hf"):
        out = export(ckpt, tmp_path / "hf")
    assert note in caplog.text and sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors"] + ["generation_config.json"] * (recorded is not None)
    )


LM_EVAL = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None or importlib.util.find_spec("accelerate") is None,
    reason="needs lm-eval with its hf model: pip install 'lm_eval[hf]'",
)


@LM_EVAL
def test_evaluation_without_a_hugging_face_tokenizer_is_refused_before_any_export(tmp_path, monkeypatch):
    from lm_lab import evaluate as evaluate_module

    ckpt = lab_checkpoint(tmp_path / "run.ckpt", GPT(tiny(vocab_size=257)), {"name": "bytes", "vocab_size": 257})
    monkeypatch.setattr(evaluate_module, "export", lambda *a: pytest.fail("exported before refusing"))
    with pytest.raises(ConfigError, match="cannot be evaluated with lm-eval: .*bytes tokenizer.*evaluate OUT") as e:
        evaluate_module.evaluate(ckpt, ["sciq"])
    assert "\n" not in str(e.value)
    hf_gpt2().save_pretrained(tmp_path / "hf")  # a Hugging Face folder without tokenizer files
    with pytest.raises(ConfigError, match="has no tokenizer files"):
        evaluate_module.evaluate(tmp_path / "hf", ["sciq"])
    with pytest.raises(ConfigError, match="tasks='sciq' must be a non-empty list"):
        evaluate_module.evaluate(tmp_path / "hf", "sciq")


# -- evaluation -------------------------------------------------------------------------------------------------

DOCS = [
    ("what does the cat sit on", ["the mat", "a dog", "blue", "five"]),
    ("which animal ran", ["red", "a dog", "the cat", "three"]),
    ("name a colour", ["green", "two", "the park", "sat"]),
    ("count to three", ["one two three", "yellow", "on the mat", "ran"]),
    ("where did the dog run", ["in the park", "on the mat", "blue", "four"]),
    ("what is red", ["a colour", "a number", "an animal", "a park"]),
    ("say a number", ["five", "cat", "green", "in"]),
    ("what sat on the mat", ["the cat", "the dog", "the park", "one"]),
]


def our_log_likelihoods(model: GPT, tok: BPETokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) by the lab model, tokenised as lm-eval's causal models do (the whole text
    encoded, the continuation being what follows the context's tokens), over the real vocabulary only."""
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1])[0, :, : model.config.vocab_size].double(), dim=-1)
    return sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


@LM_EVAL
def test_lm_eval_accuracy_equals_the_accuracy_of_our_own_log_likelihoods(tmp_path, monkeypatch):
    import datasets
    import lm_eval.evaluator

    from lm_lab.evaluate import evaluate

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    # lm-eval's report of the environment runs torch's collect_env in subprocesses: 3 s of nothing tested here
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)
    tok, tok_cfg, data = bpe_run(tmp_path)
    model = randomized(GPT(tiny(vocab_size=tok.vocab_size, block_size=64)), seed=4)  # 300 ids, 320 rows
    ckpt = lab_checkpoint(tmp_path / "run.ckpt", model, tok_cfg, data)
    lls = [[our_log_likelihoods(model, tok, f"Question: {q}\nAnswer:", f" {c}") for c in cs] for q, cs in DOCS]
    # the gold answers: our model's favourite in the first five documents, its least favourite in the other three,
    # so lm-eval must report accuracy 5/8 exactly
    best = [max(range(4), key=lambda i, r=r: r[i]) for r in lls]
    gold = [best[d] if d < 5 else min(range(4), key=lambda i, r=lls[d]: r[i]) for d in range(len(DOCS))]
    acc_norm = sum(
        max(range(4), key=lambda i, d=d: lls[d][i] / len(DOCS[d][1][i])) == gold[d] for d in range(len(DOCS))
    ) / len(DOCS)
    docs = tmp_path / "tasks" / "docs.jsonl"
    docs.parent.mkdir()
    docs.write_text(
        "".join(json.dumps({"q": q, "choices": cs, "gold": g}) + "\n" for (q, cs), g in zip(DOCS, gold, strict=True))
    )
    (tmp_path / "tasks" / "tiny_mc.yaml").write_text(
        f"""task: lab_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{q}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
    )
    result = evaluate(ckpt, ["lab_tiny_mc"], include_path=tmp_path / "tasks", batch_size=4, samples=True)
    metrics = result["lab_tiny_mc"]
    assert metrics["acc"] == 5 / 8 and metrics["acc_norm"] == acc_norm
    assert metrics["acc_stderr"] == pytest.approx((5 / 8 * 3 / 8 / 7) ** 0.5)  # sample std / sqrt(n)
    with pytest.raises(OSError, match="network access to .* refused"):  # and lm-eval ran with the network shut
        socket.create_connection(("192.0.2.1", 443), timeout=1)
    theirs = sorted(result["samples"]["lab_tiny_mc"], key=lambda s: s["doc_id"])
    assert [s["target"] for s in theirs] == gold
    torch.testing.assert_close(
        torch.tensor([s["resps"] for s in theirs], dtype=torch.float64),
        torch.tensor(lls, dtype=torch.float64),
        rtol=0,
        atol=1e-4,
    )


def test_the_export_and_eval_commands(tmp_path, capsys):
    from lm_lab.cli import main

    model = randomized(GPT(tiny()))
    ckpt = lab_checkpoint(tmp_path / "run.ckpt", model, {"name": "bytes", "vocab_size": 257})
    assert main(["export", str(ckpt), str(tmp_path / "out")]) == 0
    assert f"exported to {tmp_path / 'out'}" in capsys.readouterr().out
    hf = hf_load(tmp_path / "out")
    idx = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[..., :V], rtol=0, atol=1e-5)
    assert main(["export", str(ckpt), str(tmp_path / "out")]) == 2  # an occupied folder: one line, exit 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert main(["eval", str(ckpt), "--tasks", ","]) == 2
    assert "--tasks is empty" in capsys.readouterr().err
    assert main(["eval", str(ckpt), "--tasks", "sciq"]) == 2  # the bytes tokenizer has no Hugging Face form
    assert "cannot be evaluated with lm-eval" in capsys.readouterr().err
