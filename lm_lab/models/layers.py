"""The components a block is built from, each chosen by a `ModelConfig` string: norms, positions, attention, MLPs.

Every module owns its initialisation (torchtitan's delegation) in two calls the model makes in order:
`init_weights(std)` draws every weight at the base std (norms to one, biases to zero), and
`init_residual(std)` re-draws the output projection of a residual branch at GPT-2's scaled std. Keeping these two
passes in this order is what keeps the GPT-2 models bit-for-bit the weights they always had.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lm_lab.models.config import ModelConfig

try:  # flash-attn is an optional extra (`pip install lm_lab[gpu]`)
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None


# -- norms ----------------------------------------------------------------------------------------------------


class LayerNorm(nn.LayerNorm):
    """GPT-2's LayerNorm (Ba et al. 2016), with an optional bias."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)

    def init_weights(self, std: float) -> None:
        self.reset_parameters()


class RMSNorm(nn.RMSNorm):
    """RMSNorm (Zhang & Sennrich 2019), LLaMA's norm: x / rms(x) * g, half-precision inputs computed in float32 as
    LLaMA does."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)

    def init_weights(self, std: float) -> None:
        self.reset_parameters()


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


# -- positions ------------------------------------------------------------------------------------------------


def rotary_tables(cfg: ModelConfig, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE's cos and sin (T, head_dim) in float32 (Su et al. 2021 §3.4), in the half-split layout of GPT-NeoX and
    Hugging Face LLaMA: the frequency theta^(-2i/D) rotates the pair (i, i + D/2). Computed per call from
    arithmetic alone, so a model built on the meta device has nothing to restore."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)  # (T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, D)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) queries or keys by their positions: x cos + rotate_half(x) sin."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


# -- attention ------------------------------------------------------------------------------------------------


def _use_flash_attn(q: torch.Tensor) -> bool:
    """flash-attn 2 needs CUDA, half precision and an Ampere or newer GPU."""
    return (
        flash_attn_func is not None
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and torch.cuda.get_device_capability(q.device) >= (8, 0)
    )


def sdpa_attention(q, k, v, dropout_p: float, scale: float | None = None) -> torch.Tensor:
    """Causal softmax attention over (B, H, T, D) tensors with PyTorch's fused kernels; k and v may have fewer
    heads (grouped-query attention)."""
    gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}  # torch >= 2.5; plain attention runs on 2.4
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, **gqa)


def flash_attention(q, k, v, dropout_p: float, scale: float | None = None) -> torch.Tensor:
    """The same with flash-attn 2, which wants (B, T, H, D) (and takes fewer key/value heads as they are)."""
    out = flash_attn_func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p, softmax_scale=scale, causal=True
    )
    return out.transpose(1, 2)


def causal_attention(q, k, v, dropout_p: float, scale: float | None = None) -> torch.Tensor:
    """`auto`: flash-attn where it runs (CUDA, half precision, Ampere or newer, installed), else SDPA."""
    return (flash_attention if _use_flash_attn(q) else sdpa_attention)(q, k, v, dropout_p, scale)


ATTENTION = {"auto": causal_attention, "sdpa": sdpa_attention, "flash": flash_attention}


class ResidualBranch(nn.Module):
    """A sublayer whose output `proj` writes into the residual stream: its Linears drawn at the base std, then
    `proj` again at GPT-2's scaled std."""

    def init_weights(self, std: float) -> None:
        _init_linears(self, std)

    def init_residual(self, std: float) -> None:
        nn.init.normal_(self.proj.weight, mean=0.0, std=std)


class CausalSelfAttention(ResidualBranch):
    """Multi-head causal self-attention with one fused q/k/v projection: `n_kv_head` < `n_head` is grouped-query
    attention (Ainslie et al. 2023), RoPE rotates q and k when given its tables."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.attn_dropout = cfg.attn_dropout
        self.attend = ATTENTION[cfg.attn_impl]
        # Inheritune App. C.1 (Hugging Face's scale_attn_by_inverse_layer_idx): logits / (sqrt(D) * (i + 1));
        # None keeps SDPA's own 1/sqrt(D)
        self.scale = 1.0 / (math.sqrt(self.head_dim) * (layer_idx + 1)) if cfg.attn_scale_by_layer else None
        q_rows, kv_rows = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        self.qkv_sizes = (q_rows, kv_rows, kv_rows)  # rows of q, k and v in the fused qkv weight (Muon splits them)
        self.qkv = nn.Linear(cfg.d_model, q_rows + 2 * kv_rows, bias=cfg.bias)
        self.proj = nn.Linear(q_rows, cfg.d_model, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.resid_dropout)
        # Analysis (lm_lab.analysis.attention_probabilities): the fused kernels never materialise the attention
        # matrix, so keep_probs computes it explicitly and keeps it, detached, in `probs` (B, H, T, T)
        self.keep_probs = False
        self.probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.qkv_sizes, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k, v = (t.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2) for t in (k, v))  # (B, KV, T, D)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        # Dropout on attention probabilities only while training: llm-baselines passes dropout_p to SDPA
        # unconditionally, which leaves it on at evaluation and biases every validation loss.
        if self.keep_probs:
            y = self.explicit_attention(q, k, v)
        else:
            y = self.attend(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0, scale=self.scale)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, H * D)
        return self.resid_dropout(self.proj(y))

    def explicit_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """What `attend` computes, step by step, keeping the probabilities in `probs`: the same scale, causal mask
        and grouped-query heads (as SDPA's enable_gqa: key/value head j serves query heads j*H/KV ... (j+1)*H/KV - 1),
        the logits and softmax in float32 at least (as the fused kernels accumulate them, autocast or not)."""
        B, H, T, D = q.shape
        if k.shape[1] != H:
            k, v = (t.repeat_interleave(H // t.shape[1], dim=1) for t in (k, v))  # (B, H, T, D)
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(D)
        dtype = torch.promote_types(q.dtype, torch.float32)  # a float64 model stays float64
        with torch.autocast(q.device.type, enabled=False):
            logits = (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) * scale  # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        probs = logits.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        self.probs = probs.detach()
        if self.training and self.attn_dropout > 0:
            probs = F.dropout(probs, self.attn_dropout)
        return probs.to(v.dtype) @ v  # (B, H, T, D)


# -- feed-forward ---------------------------------------------------------------------------------------------


class MLP(ResidualBranch):
    """GPT-2's MLP: proj(gelu(fc(x))), the tanh approximation of GELU as in GPT-2's code."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.act = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.resid_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class SwiGLU(ResidualBranch):
    """SwiGLU feed-forward (Shazeer 2020; LLaMA): proj(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.resid_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.silu(self.gate(x)) * self.up(x)))


FEED_FORWARD = {"gelu": MLP, "swiglu": SwiGLU}


def _init_linears(module: nn.Module, std: float) -> None:
    """N(0, std) weights and zero biases for every Linear of `module`, in registration order."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
