"""The architecture family against hand computations and independent references: every variant trains and is
causal; DenseFormer starts as the plain model (Pagliardini et al. 2024); RoPE scores depend on the offset only (Su
et al. 2021); grouped-query attention is multi-head attention with shared key/value heads (Ainslie et al. 2023);
mixture-of-experts routing, capacity and losses by hand (Switch, GShard, ST-MoE); block patterns; parameter counts
against the published figures; logits against Hugging Face LLaMA and GPT-2 built from local configs in float64."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from lm_lab.errors import ConfigError
from lm_lab.hf import hf_to_lab
from lm_lab.models import (
    GPT,
    ModelConfig,
    active_param_count,
    chinchilla_flops_per_token,
    component_params,
    flops_per_token,
    next_token_loss,
    param_count,
)
from lm_lab.models.gpt import Block
from lm_lab.models.layers import MLP, CausalSelfAttention, LayerNorm, RMSNorm, SwiGLU, apply_rotary, rotary_tables
from lm_lab.models.moe import MoE, capacity
from lm_lab.models.presets import PRESETS
from tests.test_models import PARITY_TOL, hf_gpt2_and_ours

# float64 models: our RMSNorm runs torch's rms_norm on a float32 input with a float64 gain, which warns that it
# cannot use the fused kernel (see test_parity_with_huggingface_llama)
pytestmark = pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")

V = 97  # vocabulary of the tiny models (padded to 128 logits unless pad_vocab_multiple=1)
LLAMA_STYLE = {
    "norm": "rmsnorm",
    "mlp": "swiglu",
    "positions": "rope",
    "bias": False,
    "tie_embeddings": False,
    "n_kv_head": 2,
    "d_ff_multiple": 32,
}
MOE = {"mlp": "moe", "moe_experts": 4, "d_ff": 64}


def tiny(**overrides) -> ModelConfig:
    """d_model 32, 4 heads of 8, 2 blocks, context 16: every variant below is this plus overrides."""
    return ModelConfig(
        **{"name": "test", "n_layer": 2, "n_head": 4, "d_model": 32, "block_size": 16, "vocab_size": V, **overrides}
    )


VARIANTS = {
    "gpt2": {},
    "llama": LLAMA_STYLE,
    "no_positions": {"positions": "none"},
    "denseformer": {"denseformer": True, "n_layer": 3},
    "denseformer_dilated": {"denseformer": True, "n_layer": 4, "dwa_dilation": 2, "dwa_period": 2},
    "moe_top1": {**MOE, "moe_top_k": 1},
    "moe_top2": {**MOE, "moe_top_k": 2},
    "brainformer": {"block_pattern": "A,E,F,E,F,E", "moe_experts": 4, "d_ff": 64},
    "attn_scale_by_layer": {"attn_scale_by_layer": True, "n_layer": 3},
}


# -- every variant trains and is causal -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_trains_on_a_fixed_batch(variant):
    """The loss falls, and the first step gives every parameter tensor a gradient: a sublayer that is built but
    not wired into forward (or a DWA weight, an expert, a router left out) has none."""
    model = GPT(tiny(**VARIANTS[variant]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.randint(0, V, (4, 17))
    losses = []
    for step in range(8):
        loss = next_token_loss(model, batch).total
        opt.zero_grad()
        loss.backward()
        if step == 0:
            dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not dead, f"parameters without gradient: {dead}"
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(128), abs=0.15)  # near uniform over the 128 padded logits
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_is_causal(variant):
    """Changing token t changes no logit before t, and does change those from t on. MoE variants without a
    capacity limit: with one, routing couples tokens (the tests under "capacity" below)."""
    model = GPT(tiny(**VARIANTS[variant], moe_capacity_factor=None)).double().eval()
    idx = torch.randint(0, V, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (idx[:, 10] + 1) % V
    with torch.no_grad():
        a, b = model(idx), model(changed)
    # not bit-exact: an expert's matmul sees a different number of rows when routing after t changes
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=1e-12)
    assert (a[:, 10:] - b[:, 10:]).abs().amax(dim=-1).min() > 1e-6  # every later position sees the change


def test_top1_moe_with_capacity_is_causal_within_the_last_sequence():
    """Top-1 with a capacity limit: an expert's queue is in flattened (batch-major, then time) order, so a token's
    slot depends only on the tokens before it. Changing a token of the last sequence changes nothing earlier in
    it, nor anything in the sequence before it. (Changing the first sequence can evict tokens of the second: see
    test_capacity_couples_the_sequences_of_a_batch.)"""
    model = GPT(tiny(**MOE, moe_top_k=1, moe_capacity_factor=0.5)).double().train()  # capacity binds in training
    idx = torch.randint(0, V, (2, 16))
    changed = idx.clone()
    changed[1, 6] = (idx[1, 6] + 1) % V
    with torch.no_grad():
        a = model(idx)
        assert all(m.aux["dropped"] > 0.4 for m in model.moe_layers())  # capacity 0.5: at least half dropped
        b = model(changed)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(a[1, :6], b[1, :6], rtol=0, atol=1e-12)
    assert (a[1, 6:] - b[1, 6:]).abs().amax() > 1e-6


def test_evaluation_routes_every_token_whatever_the_capacity():
    """In eval mode nothing is dropped, so a sequence's logits do not depend on the others in its batch."""
    model = GPT(tiny(**MOE, moe_top_k=2, moe_capacity_factor=0.5)).double().eval()
    idx = torch.randint(0, V, (2, 16))
    changed = idx.clone()
    changed[0, 3] = (idx[0, 3] + 1) % V
    with torch.no_grad():
        a = model(idx)
        assert all(m.aux["dropped"] == 0 for m in model.moe_layers())
        b = model(changed)
        alone = model(idx[1:])
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(a[1], alone[0], rtol=0, atol=1e-12)
    model.train()
    with torch.no_grad():
        model(idx)
    assert all(m.aux["dropped"] > 0 for m in model.moe_layers())


# -- DenseFormer ------------------------------------------------------------------------------------------------

DWA_SHAPES = [(3, 1, 1), (4, 2, 2), (4, 3, 1)]  # (n_layer, dilation, period)


@pytest.mark.parametrize(("n_layer", "dilation", "period"), DWA_SHAPES)
def test_denseformer_at_init_is_the_plain_model(n_layer, dilation, period):
    """The DWA weights start as one on the latest output and zero elsewhere, and drawing them takes nothing from
    the RNG: the same seed gives the plain model's weights and exactly its logits. Moving one weight moves them."""
    shape = {"n_layer": n_layer, "dwa_dilation": dilation, "dwa_period": period}
    torch.manual_seed(1)
    plain = GPT(tiny(**shape))
    torch.manual_seed(1)
    dense = GPT(tiny(**shape, denseformer=True))
    plain_state, dense_state = plain.state_dict(), dense.state_dict()
    assert sorted(set(dense_state) - set(plain_state)) == sorted(f"dwa.alphas.{k}" for k in dense.dwa.alphas)
    for name, tensor in plain_state.items():
        assert torch.equal(dense_state[name], tensor), name  # init order unchanged by the DWA
    for alpha in dense.dwa.alphas.values():
        assert alpha.tolist() == [0.0] * (len(alpha) - 1) + [1.0]
    idx = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        assert torch.equal(dense(idx), plain(idx))
        first = next(iter(dense.dwa.alphas.values()))
        first[0] += 0.1
        assert (dense(idx) - plain(idx)).abs().amax() > 1e-3  # the DWA is wired in


@pytest.mark.parametrize(
    ("n_layer", "dilation", "period", "sources"),
    [
        (3, 1, 1, {0: [0, 1], 1: [0, 1, 2], 2: [0, 1, 2, 3]}),
        (4, 2, 2, {1: [0, 2], 3: [0, 2, 4]}),
        (4, 3, 1, {0: [1], 1: [2], 2: [0, 3], 3: [1, 4]}),
    ],
)
def test_denseformer_sources_follow_the_reference(n_layer, dilation, period, sources):
    """epfml/DenseFormer's DWAModules: a DWA after block i iff (i + 1) % period == 0, over the X_j with
    j = i + 1 (mod dilation), j <= i + 1: (i + 1 + dilation) // dilation weights. Hand-enumerated."""
    cfg = tiny(n_layer=n_layer, denseformer=True, dwa_dilation=dilation, dwa_period=period)
    with torch.device("meta"):
        model = GPT(cfg)
    assert {int(k): len(a) for k, a in model.dwa.alphas.items()} == {i: len(s) for i, s in sources.items()}
    assert {i: list(model.config.dwa_sources(i)) for i in sources} == sources
    assert {i: len(s) for i, s in sources.items()} == {i: (i + 1 + dilation) // dilation for i in sources}
    assert component_params(cfg)["denseformer"] == sum(len(s) for s in sources.values())


def test_denseformer_forward_by_hand():
    """n_layer 4, dilation 2, period 2 with random weights: X_1 = b0(X_0), X_2 = b1(X_1), y = a0 X_0 + a1 X_2,
    X_3 = b2(y), X_4 = b3(X_3), y = a0' X_0 + a1' X_2 + a2' X_4: the averages take the blocks' own outputs X_j,
    not the averaged inputs that replaced them."""
    model = GPT(tiny(n_layer=4, denseformer=True, dwa_dilation=2, dwa_period=2)).double().eval()
    with torch.no_grad():
        for alpha in model.dwa.alphas.values():
            alpha.copy_(torch.randn(alpha.shape, dtype=alpha.dtype))
        a1, a3 = model.dwa.alphas["1"], model.dwa.alphas["3"]
        idx = torch.randint(0, V, (2, 16))
        b = model.blocks
        x0 = model.wte(idx) + model.wpe(torch.arange(16))
        x1 = b[0](x0)
        x2 = b[1](x1)
        x3 = b[2](a1[0] * x0 + a1[1] * x2)
        x4 = b[3](x3)
        y = a3[0] * x0 + a3[1] * x2 + a3[2] * x4
        torch.testing.assert_close(model(idx), model.lm_head(model.ln_f(y)), rtol=0, atol=1e-12)


# -- RoPE -------------------------------------------------------------------------------------------------------


def test_rope_scores_depend_only_on_the_offset():
    cfg = tiny(positions="rope", n_head=2)  # head_dim 16
    T, D = 16, cfg.head_dim
    cos, sin = rotary_tables(cfg, T, torch.device("cpu"))
    assert cos.shape == sin.shape == (T, D) and cos.dtype == torch.float32
    q, k = torch.randn(2, D)
    Q = apply_rotary(q.expand(1, 1, T, D), cos, sin)[0, 0]  # q at every position
    K = apply_rotary(k.expand(1, 1, T, D), cos, sin)[0, 0]
    torch.testing.assert_close(Q.norm(dim=-1), q.norm().expand(T))  # a rotation
    scores = Q @ K.T  # (T, T): q at position m against k at n
    by_offset = []
    for offset in range(-(T - 1), T):  # m - n = -offset
        diagonal = torch.diagonal(scores, offset=offset)
        torch.testing.assert_close(diagonal, diagonal[0].expand_as(diagonal), rtol=0, atol=1e-5)
        by_offset.append(diagonal[0].item())
    gaps = torch.tensor(by_offset)[:, None] - torch.tensor(by_offset)[None, :]
    assert (gaps.abs() + torch.eye(len(by_offset))).min() > 1e-4  # every offset gives its own score
    assert scores[0, 0] == pytest.approx((q @ k).item(), abs=1e-5)  # position 0 is not rotated


def test_rope_rotates_the_half_split_pairs_at_llama_frequencies():
    """GPT-NeoX / Hugging Face layout: frequency theta^(-2i/D) rotates the pair (i, i + D/2), so e_i at position p
    becomes cos(p w_i) e_i + sin(p w_i) e_{i + D/2} (not the interleaved pairs (2i, 2i + 1) of Su et al.'s code)."""
    cfg = tiny(positions="rope", n_head=2, rope_theta=500.0)
    T, D = 16, cfg.head_dim
    cos, sin = rotary_tables(cfg, T, torch.device("cpu"))
    x = torch.eye(D).expand(1, T, D, D).transpose(1, 2)  # (1, D, T, D): "head" i holds e_i at every position
    rotated = apply_rotary(x, cos, sin)[0]  # (D, T, D)
    for i in (0, 3, D // 2 - 1):
        for p in (1, 5, 15):
            w = 500.0 ** (-2 * i / D)
            expected = torch.zeros(D)
            expected[i], expected[i + D // 2] = math.cos(p * w), math.sin(p * w)
            torch.testing.assert_close(rotated[i, p], expected, rtol=0, atol=1e-5)


# -- grouped-query attention ------------------------------------------------------------------------------------


def test_n_kv_head_equal_to_n_head_is_multi_head_attention():
    torch.manual_seed(2)
    default = GPT(tiny())
    torch.manual_seed(2)
    explicit = GPT(tiny(n_kv_head=4))
    assert default.blocks[0].attn.qkv.weight.shape == (3 * 32, 32)
    idx = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        assert torch.equal(default(idx), explicit(idx))


def expand_kv(gqa: GPT, mha: GPT, interleave: bool = True) -> None:
    """Load `gqa`'s weights into the multi-head `mha`, each key/value head copied to the query heads of its group:
    query head h reads key/value head h // (n_head // n_kv_head) (SDPA's enable_gqa, HF's repeat_kv)."""
    H, KV, D = gqa.config.n_head, gqa.config.n_kv_head, gqa.config.head_dim
    state = gqa.state_dict()
    for name in list(state):
        if not re.fullmatch(r"blocks\.\d+\.attn\.qkv\.(weight|bias)", name):
            continue
        q, k, v = state[name].split(gqa.blocks[0].attn.qkv_sizes)
        rest = q.shape[1:]
        if interleave:
            k, v = (t.view(KV, D, *rest).repeat_interleave(H // KV, dim=0).reshape(H * D, *rest) for t in (k, v))
        else:  # the wrong grouping: head h reads kv head h % n_kv_head
            k, v = (t.view(KV, D, *rest).repeat(H // KV, *[1] * (1 + len(rest))).reshape(H * D, *rest) for t in (k, v))
        state[name] = torch.cat((q, k, v))
    mha.load_state_dict(state)


@pytest.mark.parametrize(("style", "n_kv_head"), [("gpt2", 1), ("gpt2", 2), ("llama", 1), ("llama", 2)])
def test_grouped_query_attention_is_mha_with_repeated_kv_heads(style, n_kv_head):
    base = {**VARIANTS[style], "n_kv_head": n_kv_head}
    gqa = GPT(tiny(**base)).double().eval()
    mha = GPT(tiny(**{**base, "n_kv_head": 4})).double().eval()
    assert gqa.blocks[0].attn.qkv.weight.shape == ((4 + 2 * n_kv_head) * 8, 32)
    idx = torch.randint(0, V, (2, 16))
    expand_kv(gqa, mha)
    with torch.no_grad():
        torch.testing.assert_close(gqa(idx), mha(idx), rtol=0, atol=1e-10)
        if n_kv_head > 1:  # the grouping matters: consecutive query heads share a kv head
            expand_kv(gqa, mha, interleave=False)
            assert (gqa(idx) - mha(idx)).abs().amax() > 1e-3


# -- mixture of experts -----------------------------------------------------------------------------------------


def moe_layer(top_k: int, factor: float | None = None, experts: int = 4, **overrides) -> MoE:
    """One float64 MoE layer of `experts` GELU experts (d_model 32, d_ff 64) with random weights, router std 0.5."""
    cfg = tiny(**{**MOE, "moe_experts": experts, "moe_top_k": top_k, "moe_capacity_factor": factor, **overrides})
    moe = MoE(cfg).double()
    moe.init_weights(0.5)
    return moe


def steer(moe: MoE, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Make the router read its logits off the first E features of x, and write `logits` (N, E) there."""
    E = moe.cfg.moe_experts
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, :E] = torch.eye(E)
    x = x.clone()
    x[:, :E] = logits
    return x


def by_hand(moe: MoE, x: torch.Tensor, gates: torch.Tensor, experts: torch.Tensor, kept: torch.Tensor):
    """sum over a token's kept assignments j of gate_j * expert_j(x), one token at a time."""
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for j in range(experts.shape[1]):
            if kept[n, j]:
                out[n] += gates[n, j].double() * moe.experts[int(experts[n, j])](x[n : n + 1])[0]
    return out


@pytest.mark.parametrize("top_k", [1, 2])
def test_moe_routes_every_token_to_k_experts(top_k):
    """Without a capacity limit: k distinct experts per token, the router's top-k; top-1's gate is the router
    probability (Switch), top-2's are renormalised to sum to one (GShard); the output is the gated sum of the
    token's experts, computed here one token at a time."""
    moe = moe_layer(top_k)
    x = torch.randn(12, 32, dtype=torch.float64)
    logits, gates, experts, kept = moe.route(x)
    probs = (x @ moe.router.weight.T).softmax(dim=-1)  # float64 reference
    top, chosen = probs.topk(top_k, dim=-1)
    assert kept.all() and experts.shape == gates.shape == (12, top_k)
    assert torch.equal(experts, chosen)
    assert all(len(set(row)) == top_k for row in experts.tolist())
    if top_k == 1:
        torch.testing.assert_close(gates.double(), probs.max(dim=-1, keepdim=True).values, rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(gates.sum(dim=-1), torch.ones(12), rtol=0, atol=1e-6)
        torch.testing.assert_close(gates.double(), top / top.sum(dim=-1, keepdim=True), rtol=0, atol=1e-6)
        assert (gates[:, 0] >= gates[:, 1]).all()
    with torch.no_grad():
        torch.testing.assert_close(moe(x), by_hand(moe, x, gates, experts, kept), rtol=0, atol=1e-12)
    assert moe.aux["dropped"] == 0.0
    torch.testing.assert_close(moe.aux["load"], F.one_hot(chosen, 4).sum(dim=(0, 1)).float() / (12 * top_k))


@pytest.mark.parametrize("top_k", [1, 2])
def test_balance_loss_is_one_at_uniform_routing_and_more_when_skewed(top_k):
    """Switch eq. 4, E * sum_i f_i P_i: 1 when the router's probabilities are uniform (zero router), 1 when every
    expert gets exactly N k / E assignments, E * P_0 (here > 3 of a maximum 4) when all go to expert 0."""
    moe = moe_layer(top_k)
    x = torch.randn(8, 32, dtype=torch.float64)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe(x)
    assert moe.aux["balance"].item() == pytest.approx(1.0, abs=1e-6)
    assert moe.aux["z"].item() == pytest.approx(math.log(4) ** 2, abs=1e-6)  # logsumexp of 4 zeros is ln 4

    first, second = torch.arange(8) % 4, (torch.arange(8) + 1) % 4  # each expert: 2 firsts and 2 seconds
    logits = 4.0 * F.one_hot(first, 4) + 2.0 * F.one_hot(second, 4)
    with torch.no_grad():
        moe(steer(moe, x, logits))
    torch.testing.assert_close(moe.aux["load"], torch.full((4,), 0.25))
    assert moe.aux["balance"].item() == pytest.approx(1.0, abs=1e-6)

    logits = torch.zeros(8, 4)
    logits[:, 0], logits[:, 1] = 6.0, 3.0
    with torch.no_grad():
        moe(steer(moe, x, logits))
    probs = logits.softmax(dim=-1).mean(dim=0)
    load = torch.tensor([1.0, 0.0, 0.0, 0.0]) if top_k == 1 else torch.tensor([0.5, 0.5, 0.0, 0.0])
    torch.testing.assert_close(moe.aux["load"], load)
    assert moe.aux["balance"].item() == pytest.approx(4 * (load * probs).sum().item(), rel=1e-6)
    assert moe.aux["balance"].item() > (3.0 if top_k == 1 else 1.9)


def test_router_z_loss_by_hand():
    """ST-MoE eq. 5: mean over tokens of logsumexp(router logits)^2."""
    moe = moe_layer(2)
    x = torch.randn(10, 32, dtype=torch.float64)
    with torch.no_grad():
        moe(x)
    z = torch.logsumexp(x @ moe.router.weight.T, dim=-1).square().mean()
    assert z.item() > 1.0  # router std 0.5: far from zero
    assert moe.aux["z"].item() == pytest.approx(z.item(), rel=1e-6)
    expected = 0.01 * moe.aux["balance"] + 0.001 * z
    assert moe.aux["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_capacity_formula():
    """ceil(factor * k * tokens / experts) assignments per expert."""
    assert capacity(tiny(**MOE, moe_top_k=1, moe_capacity_factor=1.0), 10) == 3  # ceil(2.5)
    assert capacity(tiny(**MOE, moe_top_k=2, moe_capacity_factor=1.25), 10) == 7  # ceil(6.25)
    assert capacity(tiny(**{**MOE, "moe_top_k": 2, "moe_capacity_factor": 1.0, "moe_experts": 8}), 64) == 16
    assert capacity(tiny(**MOE, moe_top_k=2, moe_capacity_factor=None), 10) is None


def test_capacity_overflow_drops_the_later_tokens():
    """Top-1, factor 1, 10 tokens, 4 experts, all routed to expert 0: it keeps ceil(10 / 4) = 3, the first three;
    the other 7 are dropped (output exactly zero: the block's residual passes them through)."""
    moe = moe_layer(1, factor=1.0)
    logits = torch.zeros(10, 4)
    logits[:, 0] = 5.0
    x = steer(moe, torch.randn(10, 32, dtype=torch.float64), logits)
    _, gates, experts, kept = moe.route(x)
    assert (experts == 0).all()
    assert kept[:, 0].tolist() == [True] * 3 + [False] * 7
    with torch.no_grad():
        out = moe(x)
    assert moe.aux["dropped"].item() == pytest.approx(1 - 3 / 10)
    assert torch.equal(out[3:], torch.zeros_like(out[3:]))
    torch.testing.assert_close(out[:3], gates[:3].double() * moe.experts[0](x[:3]), rtol=0, atol=1e-12)
    assert out[:3].abs().amin(dim=-1).min() > 0


def test_top2_capacity_queues_first_choices_before_second_choices():
    """GShard: every token's first choice is queued before any second choice. Tokens 0-4 prefer experts (0, 1),
    tokens 5-9 (1, 0); capacity ceil(2 * 10 / 4) = 5. Expert 1 fills with tokens 5-9's first choices, so tokens
    0-4's second choices are dropped (and symmetrically for expert 0): every token keeps exactly its first choice.
    Queuing token by token instead would keep tokens 0-4's seconds and drop tokens 5-9's firsts."""
    moe = moe_layer(2, factor=1.0)
    logits = torch.zeros(10, 4)
    logits[:5, 0], logits[:5, 1] = 4.0, 3.0
    logits[5:, 1], logits[5:, 0] = 4.0, 3.0
    x = steer(moe, torch.randn(10, 32, dtype=torch.float64), logits)
    _, gates, experts, kept = moe.route(x)
    assert experts.tolist() == [[0, 1]] * 5 + [[1, 0]] * 5
    assert kept.tolist() == [[True, False]] * 10
    with torch.no_grad():
        out = moe(x)
    assert moe.aux["dropped"].item() == pytest.approx(0.5)
    torch.testing.assert_close(out, by_hand(moe, x, gates, experts, kept), rtol=0, atol=1e-12)


def test_top2_capacity_lets_a_later_token_evict_an_earlier_second_choice():
    """What the queue order implies for a decoder: with top-2 and a capacity, routing is not causal. Token 0
    chooses (0, 1), token 1 (2, 3); capacity ceil(2 * 2 / 4) = 1. When token 1 switches its first choice to expert
    1 it takes the slot token 0's second choice held, so token 0's output changes. (Top-1 cannot: a token's only
    choice is queued behind the earlier tokens' alone.)"""
    moe = moe_layer(2, factor=1.0)
    x = torch.randn(2, 32, dtype=torch.float64)
    before = steer(moe, x, torch.tensor([[4.0, 3.0, 0.0, 0.0], [0.0, 0.0, 4.0, 3.0]]))
    after = steer(moe, x, torch.tensor([[4.0, 3.0, 0.0, 0.0], [0.0, 4.0, 0.0, 3.0]]))
    assert moe.route(before)[3].tolist() == [[True, True], [True, True]]
    assert moe.route(after)[3].tolist() == [[True, False], [True, True]]
    with torch.no_grad():
        assert (moe(before)[0] - moe(after)[0]).abs().amax() > 1e-3


def test_capacity_couples_the_sequences_of_a_batch():
    """Tokens are queued batch-major: with a capacity, the last token of sequence 0 can decide whether the first
    tokens of sequence 1 are kept. 2 x 4 tokens all to expert 0, top-1, capacity ceil(1.25 * 8 / 2) = 5 of 2
    experts: sequence 0 and sequence 1's first token are kept. Sequence 0's last token choosing expert 1 frees a
    slot for sequence 1's second token."""
    moe = moe_layer(1, factor=1.25, experts=2)
    x = torch.randn(8, 32, dtype=torch.float64)
    logits = torch.zeros(8, 2)
    logits[:, 0] = 3.0
    before = steer(moe, x, logits)
    logits[3] = torch.tensor([0.0, 3.0])
    after = steer(moe, x, logits)
    assert moe.route(before)[3][:, 0].tolist() == [True] * 5 + [False] * 3
    assert moe.route(after)[3][:, 0].tolist() == [True] * 6 + [False] * 2
    with torch.no_grad():
        b, a = moe(before.view(2, 4, 32)), moe(after.view(2, 4, 32))
    torch.testing.assert_close(b[0, :3], a[0, :3], rtol=0, atol=1e-12)  # the same experts, other row counts
    assert torch.equal(b[1, 2:], a[1, 2:])
    assert torch.equal(b[1, 1], torch.zeros(32)) and a[1, 1].abs().min() > 0


def test_aux_loss_sums_the_weighted_moe_losses():
    """GPT.aux_loss() is the sum over every MoE layer (3 per Brainformer block, 6 here) of balance_coef * balance
    + z_coef * z, with distinct coefficients so a swap shows; next_token_loss's total is lm + aux and lm the plain
    cross-entropy; a dense model has no aux."""
    model = GPT(tiny(**VARIANTS["brainformer"], moe_balance_coef=0.3, moe_z_coef=0.05))
    batch = torch.randint(0, V, (2, 17))
    loss = next_token_loss(model, batch)
    layers = model.moe_layers()
    assert len(layers) == 6
    expected = sum(0.3 * m.aux["balance"] + 0.05 * m.aux["z"] for m in layers)
    assert loss.aux.item() == pytest.approx(expected.item(), rel=1e-6)
    assert model.aux_loss().item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.aux.requires_grad  # the aux loss trains the routers
    lm = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
    assert loss.lm.item() == pytest.approx(lm.item(), rel=1e-6)
    assert loss.total.item() == pytest.approx((lm + expected).item(), rel=1e-6)
    assert loss.aux.item() > 0.3 * 6 * 0.99  # balance >= 1 near-uniform routing: not a no-op
    dense = next_token_loss(GPT(tiny()), batch)
    assert dense.aux is None and torch.equal(dense.total, dense.lm)


# -- block patterns and validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, [("ln_1", LayerNorm), ("attn", CausalSelfAttention), ("ln_2", LayerNorm), ("mlp", MLP)]),
        ({"mlp": "moe"}, [("ln_1", LayerNorm), ("attn", CausalSelfAttention), ("ln_2", LayerNorm), ("moe", MoE)]),
        (
            {"block_pattern": "A,E,F,E,F,E", "mlp": "swiglu", "norm": "rmsnorm"},
            [
                ("ln_1", RMSNorm),
                ("attn", CausalSelfAttention),
                ("ln_2", RMSNorm),
                ("moe", MoE),
                ("ln_3", RMSNorm),
                ("mlp", SwiGLU),
                ("ln_4", RMSNorm),
                ("moe_2", MoE),
                ("ln_5", RMSNorm),
                ("mlp_2", SwiGLU),
                ("ln_6", RMSNorm),
                ("moe_3", MoE),
            ],
        ),
        (
            {"block_pattern": "a, F, A, f"},
            [
                ("ln_1", LayerNorm),
                ("attn", CausalSelfAttention),
                ("ln_2", LayerNorm),
                ("mlp", MLP),
                ("ln_3", LayerNorm),
                ("attn_2", CausalSelfAttention),
                ("ln_4", LayerNorm),
                ("mlp_2", MLP),
            ],
        ),
    ],
    ids=["gpt2", "moe", "brainformer", "lowercase_spaced"],
)
def test_block_pattern_builds_the_named_sublayers(overrides, expected):
    cfg = tiny(**overrides)
    with torch.device("meta"):
        block = Block(cfg, layer_idx=0)
    assert [(n, type(m)) for n, m in block.named_children()] == expected
    assert block.sublayers == [(expected[i][0], expected[i + 1][0]) for i in range(0, len(expected), 2)]
    assert cfg.n_residual_layers == cfg.n_layer * len(expected) // 2


def test_moe_experts_are_their_configured_kind():
    with torch.device("meta"):
        moe = MoE(tiny(**MOE, moe_expert_mlp="swiglu"))
    assert len(moe.experts) == 4 and all(type(e) is SwiGLU for e in moe.experts)
    assert moe.router.weight.shape == (4, 32) and moe.router.bias is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"block_pattern": "A,X"}, "model.block_pattern"),
        ({"block_pattern": ""}, "model.block_pattern"),
        ({"norm": "batchnorm"}, "model.norm"),
        ({"mlp": "relu"}, "model.mlp"),
        ({"positions": "alibi"}, "model.positions"),
        ({"n_kv_head": 3}, r"model.n_kv_head=3 does not divide model.n_head=4"),
        ({"n_kv_head": 0}, "model.n_kv_head"),
        ({**MOE, "moe_top_k": 3}, "model.moe_top_k"),
        ({"block_pattern": "A,E", "moe_top_k": 0}, "model.moe_top_k"),
        ({**MOE, "moe_capacity_factor": 0}, "model.moe_capacity_factor"),
        ({**MOE, "moe_balance_coef": -1}, "model.moe_balance_coef"),
        ({"positions": "rope", "d_model": 36}, "model.positions=rope needs an even head dimension"),  # head_dim 9
        ({"rope_theta": 1}, "model.rope_theta"),
        ({"dwa_dilation": 0, "denseformer": True}, "model.dwa_dilation"),
        ({"dwa_period": 0, "denseformer": True}, "model.dwa_period"),
    ],
)
def test_invalid_architecture_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        tiny(**overrides)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        tiny(norm="batchnorm", block_pattern="A,X", rope_theta=0.5, dwa_period=0)
    for field in ("model.norm", "model.block_pattern", "model.rope_theta", "model.dwa_period"):
        assert field in str(info.value)


# -- parameter counts and FLOPs ---------------------------------------------------------------------------------


def module_components(model: GPT) -> dict[str, int]:
    """The real model's parameters per `component_params` key, classified by name (tied tensors counted once)."""
    parts = dict.fromkeys(component_params(model.config), 0)
    for name, p in model.named_parameters():
        sublayer = re.match(r"blocks\.\d+\.([a-z]+)(_\d+)?\.", name)
        kind = sublayer.group(1) if sublayer else name.split(".")[0]
        if kind == "moe":
            kind = "experts" if ".experts." in name else "routers" if ".router." in name else name
        key = {
            "wte": "embedding",
            "wpe": "positions",
            "attn": "attention",
            "mlp": "feed_forward",
            "ln": "norms",
            "ln_f": "norms",
            "dwa": "denseformer",
            "lm_head": "head",
            "experts": "experts",
            "routers": "routers",
        }[kind]
        parts[key] += p.numel()
    return parts


def meta_model(cfg: ModelConfig) -> GPT:
    with torch.device("meta"):
        return GPT(cfg)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_counts_equal_module_counts(name):
    cfg = ModelConfig.preset(name, vocab_size=50257)
    model = meta_model(cfg)
    assert param_count(cfg) == sum(p.numel() for p in model.parameters())
    assert component_params(cfg) == module_components(model)


COUNT_VARIANTS = {
    **VARIANTS,
    "gqa_untied_no_bias": {"n_kv_head": 1, "tie_embeddings": False, "bias": False},
    "moe_swiglu_experts": {**MOE, "moe_expert_mlp": "swiglu", "d_ff": None, "d_ff_multiple": 16, "bias": False},
    "llama_brainformer_denseformer": {
        **LLAMA_STYLE,
        "block_pattern": "A,E,F,E",
        "denseformer": True,
        "dwa_dilation": 2,
        "n_layer": 3,
    },
}


@pytest.mark.parametrize("variant", sorted(COUNT_VARIANTS))
def test_variant_counts_equal_module_counts(variant):
    cfg = tiny(**COUNT_VARIANTS[variant])
    model = meta_model(cfg)
    parts = module_components(model)
    assert component_params(cfg) == parts
    assert param_count(cfg) == sum(p.numel() for p in model.parameters())


# Hägele et al. 2024, Table 1, from their flops.ipynb: vocab * d + L * (4 d^2 + 3 d ffw), vocab 50257 unpadded,
# tied head, norms not counted
HAGELE_TABLE_1 = {
    "hagele_33m": 33_454_464,
    "hagele_53m": 52_994_560,
    "hagele_60m": 59_810_304,
    "hagele_93m": 93_112_960,
    "hagele_124m": 123_532_032,
    "hagele_151m": 151_843_584,
    "hagele_166m": 166_140_800,
    "hagele_210m": 208_466_688,
    "hagele_360m": 359_744_512,
}


@pytest.mark.parametrize("name", sorted(HAGELE_TABLE_1))
def test_hagele_sizes_match_their_table(name):
    cfg = ModelConfig.preset(name, vocab_size=50257, pad_vocab_multiple=1)
    ffw = 256 * math.ceil(int(8 * cfg.d_model / 3) / 256)  # their SwiGLU width
    assert cfg.d_ff == ffw
    parts = component_params(cfg)
    assert parts["positions"] == parts["head"] == 0  # rotary positions, tied head
    assert param_count(cfg) - parts["norms"] == HAGELE_TABLE_1[name]
    assert parts["norms"] == (2 * cfg.n_layer + 1) * cfg.d_model  # RMSNorm gains only


def test_published_llama_and_gpt2_counts():
    """openlm-research/open_llama_3b (3,426,473,600 with its 32000 tokens) and HF gpt2 (124,439,808)."""
    llama = ModelConfig.preset("openllama_3b", vocab_size=32000)
    assert param_count(llama) == 3_426_473_600 == sum(p.numel() for p in meta_model(llama).parameters())
    gpt2 = ModelConfig.preset("gpt2_small", vocab_size=50257, pad_vocab_multiple=1)
    assert param_count(gpt2) == 124_439_808


@pytest.mark.parametrize("variant", ["moe_top1", "moe_top2", "brainformer"])
def test_moe_active_params_and_flops(variant):
    """Active = total - (E - k) experts per MoE layer, the expert's size taken from the real module; the FLOPs
    per token are a dense model's with the same active parameters: the k experts as one feed-forward k times as
    wide (no biases, so the widths add exactly), plus the router's d x E matmul."""
    overrides = {**VARIANTS[variant], "bias": False, "moe_experts": 8}
    cfg = tiny(**overrides)
    model = meta_model(cfg)
    moe = model.moe_layers()
    expert = sum(p.numel() for p in moe[0].experts[0].parameters())
    k = cfg.moe_top_k
    assert active_param_count(cfg) == param_count(cfg) - len(moe) * (8 - k) * expert
    assert active_param_count(cfg) < param_count(cfg)

    T, d, L = 16, cfg.d_model, cfg.n_layer
    n_attention = L * cfg.layer_kinds().count("A")
    matmul = active_param_count(cfg) - component_params(cfg)["positions"]  # the tied embedding is the head
    assert flops_per_token(cfg, T) == 6 * matmul + 12 * n_attention * T * d
    routers = len(moe) * d * 8
    if variant != "brainformer":  # every sublayer's feed-forward is an MoE: the dense twin is k experts wide
        dense = tiny(**{**overrides, "mlp": "gelu", "d_ff": k * 64})
        assert flops_per_token(cfg, T) == flops_per_token(dense, T) + 6 * routers
        # Hägele et al.'s count: the same matmuls plus 3 T E for each gate (softmax-like), per token 3 x forward
        assert chinchilla_flops_per_token(cfg, T) == pytest.approx(
            chinchilla_flops_per_token(dense, T) + 3 * len(moe) * 3 * 8, rel=1e-12
        )


# -- parity with Hugging Face -----------------------------------------------------------------------------------


def hf_llama_and_ours():
    """A tiny Hugging Face LLaMA (GQA 4/2 heads, untied head, no biases) with every parameter random, and our
    LLaMA-style GPT with its weights, both in float64."""
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).double().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():  # norm gains random too, so a skipped or swapped norm shows
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5)
    cfg = ModelConfig(
        **LLAMA_STYLE,
        n_layer=2,
        n_head=4,
        d_model=64,
        d_ff=192,
        block_size=16,
        vocab_size=V,
        pad_vocab_multiple=1,
        layer_norm_eps=1e-5,
        rope_theta=10000.0,
    )
    ours = GPT(cfg).double().eval()
    ours.load_state_dict(hf_to_lab("llama", hf.state_dict(), cfg))  # lm_lab.hf's converter: q, k, v rows stacked
    return hf, ours


def test_parity_with_huggingface_llama(monkeypatch):
    """Both compute RoPE's tables in float32 (identical tables) and RMSNorm in float32 even for float64 inputs,
    but HF multiplies the gain after casting back to float64 and ours inside torch's rms_norm: the logits (of size
    ~20) differ by ~1e-5, all of it from that rounding. With both norms in float64 they agree to ~1e-13: a wrong
    rotate_half layout, kv grouping, eps or SwiGLU wiring moves them by far more than 1e-10."""
    hf, ours = hf_llama_and_ours()
    idx = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, rtol=0, atol=1e-4)
        llama = type(hf.model.norm)

        def float64_rms_norm(self, x):
            return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)

        monkeypatch.setattr(llama, "forward", float64_rms_norm)
        monkeypatch.setattr(RMSNorm, "forward", torch.nn.RMSNorm.forward)
        torch.testing.assert_close(ours(idx), hf(idx).logits, rtol=0, atol=PARITY_TOL)


def test_parity_with_huggingface_gpt2_scaled_by_inverse_layer():
    """Inheritune App. C.1 as Hugging Face's GPT-2 `scale_attn_by_inverse_layer_idx` computes it (3 layers: the
    scales 1, 1/2, 1/3); without it the logits differ."""
    hf, plain = hf_gpt2_and_ours(scale_attn_by_inverse_layer_idx=True, n_layer=3)
    ours = GPT(tiny(n_layer=3, n_head=2, attn_scale_by_layer=True, pad_vocab_multiple=1)).double().eval()
    ours.load_state_dict(plain.state_dict())
    idx = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        expected = hf(idx).logits
        torch.testing.assert_close(ours(idx), expected, rtol=0, atol=PARITY_TOL)
        assert (plain(idx) - expected).abs().amax() > 1e-3


def test_router_and_denseformer_averages_stay_float32_under_bf16_autocast():
    """ST-MoE's selective precision: the router in float32; DWA's running sum is no matmul, so the residual stream
    it returns keeps float32 (an einsum over a stack would run in bf16 under autocast)."""
    moe = MoE(tiny(**MOE))
    x = torch.randn(12, moe.cfg.d_model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = moe.route(x)[0]
        model = GPT(tiny(n_layer=3, denseformer=True))
        with torch.no_grad():
            for alpha in model.dwa.alphas.values():
                alpha.uniform_()
            outputs = [torch.randn(2, 4, model.config.d_model) for _ in range(4)]
            averaged = model.dwa(outputs, 2)
    assert logits.dtype == torch.float32 and torch.equal(logits, x @ moe.router.weight.t())
    alpha = model.dwa.alphas["2"]
    assert averaged.dtype == torch.float32
    torch.testing.assert_close(
        averaged, sum(a * outputs[j] for a, j in zip(alpha, range(4), strict=True)), rtol=0, atol=1e-6
    )
