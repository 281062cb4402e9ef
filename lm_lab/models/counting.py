"""Parameter and FLOP counts from a `ModelConfig` alone: pure arithmetic, no model is built.

Tests check `param_count` against the real module built on the meta device, so the formulas and the
model cannot drift apart.
"""

from __future__ import annotations

from lm_lab.models.config import ModelConfig


def embedding_params(cfg: ModelConfig) -> int:
    """Token (padded) plus position embedding parameters; the output head is tied to the token embedding."""
    return cfg.padded_vocab_size * cfg.d_model + cfg.block_size * cfg.d_model


def non_embedding_params(cfg: ModelConfig) -> int:
    """Everything but the embeddings: blocks and the final LayerNorm (Kaplan et al. 2020 §2.1's N, exactly)."""
    d, ff = cfg.d_model, cfg.d_ff
    norm = d * (2 if cfg.bias else 1)  # LayerNorm weight (+ bias)
    attn = 3 * d * d + d * d + (4 * d if cfg.bias else 0)  # qkv + output projection
    mlp = 2 * d * ff + ((ff + d) if cfg.bias else 0)
    return cfg.n_layer * (2 * norm + attn + mlp) + norm


def param_count(cfg: ModelConfig) -> int:
    """Total trainable parameters, tied weights counted once."""
    return non_embedding_params(cfg) + embedding_params(cfg)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token: 6N + 12 * n_layer * seq_len * d_model.

    6N: forward and backward cost 6 FLOPs per parameter per token (Kaplan et al. 2020 §2.1). The attention
    term counts the scores QK^T and the weighted sum AV, 2 * seq_len * d_model FLOPs each per layer forward,
    times 3 for training, with no discount for the causal mask (PaLM App. B; Chinchilla App. F; Kaplan's
    Table 1 halves it for the mask). N counts every parameter multiplied by an activation: the
    non-embedding parameters and the (tied) output head; the embedding lookups cost no matmul. Equal to
    nanoGPT's `estimate_mfu` count.
    """
    n_matmul = non_embedding_params(cfg) + cfg.padded_vocab_size * cfg.d_model
    return 6 * n_matmul + 12 * cfg.n_layer * seq_len * cfg.d_model


def chinchilla_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token counted op by op as in Hoffmann et al. 2022, Appendix F (biases and norms ignored).

    Backward is twice the forward pass; the embedding is counted as a one-hot matmul like the paper does.
    """
    d, v, t, h = cfg.d_model, cfg.padded_vocab_size, seq_len, cfg.n_head
    embeddings = 2 * t * v * d
    attention = (
        2 * 3 * t * d * d  # key, query, value projections
        + 2 * t * t * d  # key @ query logits
        + 3 * h * t * t  # softmax
        + 2 * t * t * d  # softmax @ value reduction
        + 2 * t * d * d  # final linear
    )
    dense = 2 * t * (d * cfg.d_ff * 2)
    logits = 2 * t * d * v
    forward = embeddings + cfg.n_layer * (attention + dense) + logits
    return 3 * forward / t
