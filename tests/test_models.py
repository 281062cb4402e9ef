"""The model against independent references: published GPT-2 parameter counts, Hugging Face GPT-2 logits in
float64, GPT-2 init statistics, FLOP formulas, causal masking, dropout sites, weight-decay groups."""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lm_lab.config import compose
from lm_lab.errors import ConfigError
from lm_lab.hf import hf_to_lab
from lm_lab.models import (
    GPT,
    ModelConfig,
    chinchilla_flops_per_token,
    flops_per_token,
    next_token_loss,
    non_embedding_params,
    param_count,
)
from lm_lab.optim import OptimizerConfig, build_optimizer, param_groups

CONF = Path(__file__).resolve().parent.parent / "conf"

# Radford et al. 2019, Table 2, as exact counts of the released checkpoints (vocab 50257, context 1024, tied head)
PUBLISHED = {
    "gpt2_small": (124e6, 124_439_808),
    "gpt2_medium": (355e6, 354_823_168),
    "gpt2_large": (774e6, 774_030_080),
    "gpt2_xl": (1558e6, 1_557_611_200),
}


def named(name: str, **overrides) -> ModelConfig:
    """The model `run.py model=NAME` builds, with field overrides."""
    values = OmegaConf.to_container(compose([f"model={name}"]).model, resolve=True)
    return ModelConfig(**{**values, **overrides})


def real_count(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        model = GPT(cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_named_sizes_match_published_gpt2(name):
    published, exact = PUBLISHED[name]
    cfg = named(name, vocab_size=50257)  # padded to 50304 rows, as the lab trains it
    assert abs(real_count(cfg) - published) / published < 0.01
    unpadded = named(name, vocab_size=50257, pad_vocab_multiple=1)
    assert real_count(unpadded) == exact == param_count(unpadded)


@pytest.mark.parametrize("path", sorted((CONF / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_formula_counts_equal_module_counts(path):
    for bias in (True, False):
        cfg = named(path.stem, vocab_size=4096, bias=bias)
        assert param_count(cfg) == real_count(cfg)
        with torch.device("meta"):
            model = GPT(cfg)
        vocabulary = [model.wte, getattr(model, "wpe", None), None if cfg.tie_embeddings else model.lm_head]
        embeddings = sum(m.weight.numel() for m in vocabulary if m is not None)  # no wpe with RoPE; untied head
        assert non_embedding_params(cfg) == real_count(cfg) - embeddings


def test_flops_per_token_formula():
    cfg = named("gpt2_small", vocab_size=50257)
    n_matmul = non_embedding_params(cfg) + 50304 * 768
    assert flops_per_token(cfg, 1024) == 6 * n_matmul + 12 * 12 * 1024 * 768
    # Chinchilla App. F counts the input embedding as a one-hot matmul and ignores biases/norms; without the
    # embedding term the two counts agree within 1% at every GPT-2 size.
    for name in PUBLISHED:
        cfg = named(name, vocab_size=50257)
        appendix_f = chinchilla_flops_per_token(cfg, 1024) - 6 * cfg.padded_vocab_size * cfg.d_model
        assert abs(appendix_f / flops_per_token(cfg, 1024) - 1) < 0.01


def test_appendix_f_counts_27_percent_more_than_6n_for_gpt2_small():
    cfg = named("gpt2_small", vocab_size=50257)
    assert chinchilla_flops_per_token(cfg, 1024) / flops_per_token(cfg, 1024) == pytest.approx(1.2717, abs=1e-4)


def test_chinchilla_appendix_f_by_hand():
    """Hoffmann et al. 2022 App. F for d=64, 2 layers, 2 heads, vocab 128, T=16, d_ff=256, term by term."""
    cfg = ModelConfig(n_layer=2, n_head=2, d_model=64, d_ff=256, block_size=16, vocab_size=128)
    embeddings = 2 * 16 * 128 * 64  # 262,144
    attention = 393_216 + 32_768 + 1_536 + 32_768 + 131_072  # qkv, QK^T logits, softmax (3HT^2), AV, output
    dense = 1_048_576  # 2 * T * (d * d_ff * 2)
    logits = 262_144
    forward = embeddings + 2 * (attention + dense) + logits
    assert forward == 3_804_160
    assert chinchilla_flops_per_token(cfg, 16) == 3 * forward / 16 == 713_280
    # 6N + 12 L T d, N = the non-embedding parameters plus the tied head (128 x 64): per layer two LayerNorms
    # (2 x 128), attention 4 x 64^2 + 4 x 64, MLP 2 x 64 x 256 + 256 + 64; then the final LayerNorm (128)
    assert non_embedding_params(cfg) == 2 * (256 + 16_640 + 33_088) + 128 == 100_096
    assert flops_per_token(cfg, 16) == 6 * (100_096 + 8_192) + 12 * 2 * 16 * 64 == 674_304


def test_invalid_shape_names_the_field():
    with pytest.raises(ConfigError, match=r"model\.n_head=5 does not divide model\.d_model=128"):
        ModelConfig(n_head=5, d_model=128)
    with pytest.raises(ConfigError, match=r"model\.attn_dropout"):
        ModelConfig(attn_dropout=1.5)


def test_causal_masking(tiny_config):
    model = GPT(tiny_config).eval()
    idx = torch.randint(0, 97, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (idx[:, 10] + 1) % 97
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=0)  # the past does not see the future
    assert (a[:, 10:] - b[:, 10:]).abs().amax() > 1e-4


@pytest.mark.parametrize("site", ["attn_dropout", "embd_dropout", "resid_dropout"])
def test_dropout_on_in_training_off_in_eval(tiny_config, site):
    from dataclasses import replace

    cfg = replace(tiny_config, dropout=0.0, **{site: 0.5})
    model = GPT(cfg)
    idx = torch.randint(0, 97, (2, 16))
    model.train()
    assert not torch.equal(model(idx), model(idx)), f"{site} must be active in training"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), model(idx), rtol=0, atol=0)
        plain = GPT(replace(cfg, **{site: 0.0}))
        plain.load_state_dict(model.state_dict())
        plain.eval()
        torch.testing.assert_close(model(idx), plain(idx), rtol=0, atol=0)  # eval == no dropout at all


def test_loss_at_init_is_near_uniform(tiny_config):
    model = GPT(tiny_config)
    idx = torch.randint(0, 97, (4, 17))
    loss = next_token_loss(model, idx).total
    assert abs(loss.item() - math.log(128)) < 0.1  # 97 ids padded to 128 logits, all near zero


def test_optimizer_steps_lower_the_loss_on_a_fixed_batch(tiny_config):
    model = GPT(tiny_config)
    opt = build_optimizer(model, OptimizerConfig(lr=3e-3))
    idx = torch.randint(0, 97, (4, 17))
    losses = []
    for _ in range(30):
        loss = next_token_loss(model, idx).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_weight_decay_only_on_matrices(tiny_config):
    model = GPT(tiny_config)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 for p in decay["params"])
    decayed = {names[id(p)] for p in decay["params"]}
    assert "wte.weight" in decayed and "blocks.0.attn.qkv.weight" in decayed
    assert not any("ln" in names[id(p)] or names[id(p)].endswith(".bias") for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def hf_gpt2_and_ours(**shape):
    """A small Hugging Face GPT-2 with every parameter random (LayerNorm gains and biases too, so swapped or skipped
    norms show) and our GPT with its weights, both in float64."""
    transformers = pytest.importorskip("transformers")
    shape = {"vocab_size": 97, "n_positions": 16, "n_embd": 32, "n_layer": 2, "n_head": 2, **shape}
    eot = shape["vocab_size"] - 1
    hf_cfg = transformers.GPT2Config(
        **shape, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=eot, eos_token_id=eot
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg).double().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():  # std 0.5: pre-activations of order 1, where GELU's tanh and erf forms differ
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5)
    cfg = ModelConfig(
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        d_model=shape["n_embd"],
        block_size=shape["n_positions"],
        vocab_size=shape["vocab_size"],
        pad_vocab_multiple=1,
    )
    ours = GPT(cfg).double().eval()
    # lm_lab.hf's converter: Conv1D (in, out) weights transposed to nn.Linear's (out, in), the tied head dropped
    ours.load_state_dict(hf_to_lab("gpt2", hf.state_dict(), cfg))
    return hf, ours


PARITY_TOL = 1e-10  # float64: the two agree to 3e-15 (logits of size ~6); the exact GELU moves them by 5e-4, swapped norms by 3.4


def test_parity_with_huggingface_gpt2():
    hf, ours = hf_gpt2_and_ours()
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, rtol=0, atol=PARITY_TOL)


def test_init_statistics_follow_gpt2():
    """GPT-2's init (openai/gpt-2 src/model.py and §2.3): N(0, 0.02) matrices and token embedding, N(0, 0.01)
    positions, residual projections N(0, 0.02 / sqrt(2 n_layer)), zero biases, unit LayerNorms."""
    cfg = ModelConfig(n_layer=4, n_head=4, d_model=256, block_size=512, vocab_size=1000)
    model = GPT(cfg)
    resid = 0.02 / math.sqrt(2 * cfg.n_layer)
    expected = {"wte.weight": 0.02, "wpe.weight": 0.01}
    for i in range(cfg.n_layer):
        expected |= {f"blocks.{i}.attn.qkv.weight": 0.02, f"blocks.{i}.mlp.fc.weight": 0.02}
        expected |= {f"blocks.{i}.attn.proj.weight": resid, f"blocks.{i}.mlp.proj.weight": resid}
    params = dict(model.named_parameters())
    for name, std in expected.items():
        w = params[name].detach()
        assert abs(w.mean().item()) < 0.05 * std, name  # >= 65k samples each: sampling error of the std < 1%
        assert w.std().item() == pytest.approx(std, rel=0.03), name
    for name, p in params.items():
        if name.endswith(".bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        elif "ln" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert name in expected, f"{name} has no expected init"
    assert model.lm_head.weight is model.wte.weight
