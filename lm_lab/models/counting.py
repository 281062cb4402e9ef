"""Parameter and FLOP counts from a `ModelConfig` alone: pure arithmetic, no model is built.

Tests check every component's count against the real module built on the meta device, so the formulas and the
model cannot drift apart. "Active" counts a mixture of experts' k routed experts instead of all of them: the
parameters one token is multiplied by.
"""

from __future__ import annotations

from lm_lab.models.config import ModelConfig


def _norm(cfg: ModelConfig) -> int:
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.bias else 1)  # LayerNorm weight (+ bias); RMSNorm g


def _attention(cfg: ModelConfig) -> int:
    d, q, kv = cfg.d_model, cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    return d * (q + 2 * kv) + q * d + ((q + 2 * kv + d) if cfg.bias else 0)  # fused qkv + output projection


def _feed_forward(cfg: ModelConfig, kind: str) -> int:
    d, ff = cfg.d_model, cfg.d_ff
    if kind == "swiglu":
        return 3 * d * ff + ((2 * ff + d) if cfg.bias else 0)  # gate, up, proj
    return 2 * d * ff + ((ff + d) if cfg.bias else 0)  # fc, proj


def component_params(cfg: ModelConfig, active: bool = False) -> dict[str, int]:
    """Parameters per component over the whole model (tied weights counted once). `active`: per token, i.e.
    `moe_top_k` of the `moe_experts` experts of every MoE layer."""
    kinds = cfg.layer_kinds()
    n_attn, n_dense, n_moe = (cfg.n_layer * kinds.count(k) for k in ("A", "F", "E"))
    experts = cfg.moe_top_k if active else cfg.moe_experts
    dwa = sum(len(cfg.dwa_sources(i)) for i in range(cfg.n_layer))  # one weight per averaged output
    return {
        "embedding": cfg.padded_vocab_size * cfg.d_model,
        "positions": cfg.block_size * cfg.d_model if cfg.positions == "learned" else 0,
        "attention": n_attn * _attention(cfg),
        "feed_forward": n_dense * _feed_forward(cfg, cfg.mlp),
        "experts": n_moe * experts * _feed_forward(cfg, cfg.moe_expert_mlp),
        "routers": n_moe * cfg.d_model * cfg.moe_experts,
        "norms": (cfg.n_layer * len(kinds) + 1) * _norm(cfg),
        "denseformer": dwa,
        "head": 0 if cfg.tie_embeddings else cfg.padded_vocab_size * cfg.d_model,
    }


VOCABULARY = ("embedding", "positions", "head")


def embedding_params(cfg: ModelConfig) -> int:
    """Token (padded) plus position embedding parameters (and an untied output head's)."""
    parts = component_params(cfg)
    return sum(parts[k] for k in VOCABULARY)


def non_embedding_params(cfg: ModelConfig, active: bool = False) -> int:
    """Everything but the vocabulary and position matrices: blocks, the final norm and DenseFormer's weights
    (Kaplan et al. 2020 §2.1's N, exactly)."""
    return sum(v for k, v in component_params(cfg, active).items() if k not in VOCABULARY)


def param_count(cfg: ModelConfig) -> int:
    """Total trainable parameters, tied weights counted once."""
    return sum(component_params(cfg).values())


def active_param_count(cfg: ModelConfig) -> int:
    """Parameters one token is multiplied by or looks up: `param_count` with k experts per MoE layer."""
    return sum(component_params(cfg, active=True).values())


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token: 6N + 12 * n_attention_layers * seq_len * d_attention.

    6N: forward and backward cost 6 FLOPs per parameter per token (Kaplan et al. 2020 §2.1). The attention
    term counts the scores QK^T and the weighted sum AV, 2 * seq_len * d_attention FLOPs each per attention layer
    forward (d_attention = n_head * head_dim = d_model), times 3 for training, with no discount for the causal mask
    (PaLM App. B; Chinchilla App. F; Kaplan's Table 1 halves it for the mask). N counts every parameter a token is
    multiplied by: the active non-embedding parameters (k experts, the routers) and the output head; the embedding
    lookups cost no matmul. Equal to nanoGPT's `estimate_mfu` count for GPT-2.
    """
    return sum(component_flops_per_token(cfg, seq_len).values())


def component_flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """`flops_per_token` split by component: 6 x the active parameters each multiplies a token by (the output head
    once, tied or not), plus `attention_scores` (QK^T and AV). The values sum to `flops_per_token`."""
    parts = component_params(cfg, active=True)
    out = {k: 6 * v for k, v in parts.items() if k not in VOCABULARY}
    out["head"] = 6 * cfg.padded_vocab_size * cfg.d_model
    out["attention_scores"] = 12 * cfg.n_layer * cfg.layer_kinds().count("A") * seq_len * cfg.n_head * cfg.head_dim
    return out


def chinchilla_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token counted op by op as in Hoffmann et al. 2022, Appendix F (biases, norms and
    DenseFormer's averages ignored), with Hägele et al.'s extensions (epfml/schedules-and-scaling flops.ipynb):
    SwiGLU's third matrix, grouped-query projections and a mixture of experts as k dense feed-forwards plus
    3 * seq_len * experts for the gate.

    Backward is twice the forward pass; the embedding is counted as a one-hot matmul like the paper does.
    """
    d, v, t, h = cfg.d_model, cfg.padded_vocab_size, seq_len, cfg.n_head
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    embeddings = 2 * t * v * d
    attention = (
        2 * t * d * (q + 2 * kv)  # key, query, value projections
        + 2 * t * t * q  # key @ query logits
        + 3 * h * t * t  # softmax
        + 2 * t * t * q  # softmax @ value reduction
        + 2 * t * q * d  # final linear
    )

    def dense(kind: str) -> int:
        return 2 * t * (d * cfg.d_ff * (3 if kind == "swiglu" else 2))

    layer = {
        "A": attention,
        "F": dense(cfg.mlp),
        "E": cfg.moe_top_k * dense(cfg.moe_expert_mlp) + 3 * t * cfg.moe_experts,
    }
    logits = 2 * t * d * v
    forward = embeddings + cfg.n_layer * sum(layer[k] for k in cfg.layer_kinds()) + logits
    return 3 * forward / t
