"""`ModelConfig`: the one dataclass that describes every model of the family.

Named sizes are `ModelConfig.preset(name)` (`presets.py`, mirrored by `conf/model/*.yaml`); this file holds the
defaults (GPT-2 small, Radford et al. 2019) and the validation that runs before anything is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lm_lab.errors import ConfigError, raise_if
from lm_lab.models.presets import PRESETS

CHOICES = {
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "swiglu", "moe"),
    "positions": ("learned", "rope", "none"),
    "moe_expert_mlp": ("gelu", "swiglu"),
}
LAYER_KINDS = {"A": "attention", "F": "feed-forward", "E": "mixture of experts"}


@dataclass
class ModelConfig:
    """A decoder-only transformer. Defaults are GPT-2 small (124M)."""

    name: str = "gpt2_small"
    """Label written to logs and results; not used to build anything."""
    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 12
    """Attention heads per block; must divide `d_model`."""
    d_model: int = 768
    """Residual stream width."""
    d_ff: int | None = None
    """MLP hidden width; None means 4 * d_model (GPT-2)."""
    block_size: int = 1024
    """Context length: the number of learned position embeddings."""
    vocab_size: int | None = None
    """Tokenizer vocabulary size; None until set (run.py takes it from the tokenizer). GPT-2's is 50257."""
    pad_vocab_multiple: int = 64
    """Embedding rows are padded to a multiple of this for fast matmuls (nanoGPT: 50257 -> 50304)."""
    bias: bool = True
    """Biases in linear layers and LayerNorms (GPT-2 has them)."""
    dropout: float = 0.0
    """Default dropout probability for the three sites below when they are left as None."""
    embd_dropout: float | None = None
    """Dropout on the sum of token and position embeddings."""
    attn_dropout: float | None = None
    """Dropout on the attention probabilities (off in eval mode)."""
    resid_dropout: float | None = None
    """Dropout on each block's attention and MLP output before the residual add."""
    attn_impl: str = "auto"
    """Attention kernel: `auto` (flash-attn on CUDA in half precision when installed, else PyTorch SDPA),
    `sdpa` (always PyTorch's scaled_dot_product_attention) or `flash` (always flash-attn: CUDA only)."""
    init_std: float = 0.02
    """Std of the normal init of weight matrices (GPT-2)."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every norm (LayerNorm or RMSNorm)."""

    # -- components (see README "Architectures"): GPT-2 is the default of each ---------------------------------
    norm: str = "layernorm"
    """`layernorm` (GPT-2) or `rmsnorm` (Zhang & Sennrich 2019; LLaMA)."""
    mlp: str = "gelu"
    """What an `F` of `block_pattern` is: `gelu` (GPT-2's 4d MLP), `swiglu` (Shazeer 2020; LLaMA) or `moe` (a
    mixture of `moe_experts` experts of kind `moe_expert_mlp`)."""
    d_ff_multiple: int = 256
    """`swiglu` with `d_ff` unset: the hidden width 8/3 * d rounded up to a multiple of this (LLaMA's
    `multiple_of`; Hägele et al.'s code uses 256)."""
    positions: str = "learned"
    """`learned` (GPT-2's table of `block_size` embeddings), `rope` (rotary, Su et al. 2021) or `none`."""
    rope_theta: float = 10000.0
    """RoPE base: frequencies theta^(-2i/head_dim)."""
    n_kv_head: int | None = None
    """Key/value heads (grouped-query attention, Ainslie et al. 2023); must divide n_head. None means n_head."""
    tie_embeddings: bool = True
    """Output head shares the token embedding's tensor (GPT-2); False gives the head its own weights (LLaMA)."""
    attn_scale_by_layer: bool = False
    """Divide layer i's attention logits by i + 1 besides sqrt(head_dim) (Inheritune App. C.1; Hugging Face's
    GPT-2 `scale_attn_by_inverse_layer_idx`)."""
    block_pattern: str = "A,F"
    """The sublayers of every block, each `x + f(norm(x))`: `A` attention, `F` feed-forward (`mlp`), `E` mixture
    of experts. GPT-2 and LLaMA are `A,F`; Brainformer-style is e.g. `A,E,F,E,F,E`."""

    # -- DenseFormer (Pagliardini et al. 2024) ---------------------------------------------------------------
    denseformer: bool = False
    """After block i, a learned weighted average of the embeddings and every earlier block's output (DWA)."""
    dwa_dilation: int = 1
    """DenseFormer dilation k: block i averages only the outputs j with j = i + 1 (mod k)."""
    dwa_period: int = 1
    """DenseFormer period p: a DWA after every p-th block only."""

    # -- mixture of experts (an `E` in block_pattern, or mlp=moe) --------------------------------------------
    moe_experts: int = 8
    """Experts per MoE layer."""
    moe_top_k: int = 2
    """Experts each token is routed to: 1 (Switch, Fedus et al. 2021) or 2 (GShard, Lepikhin et al. 2020)."""
    moe_capacity_factor: float | None = 1.25
    """Tokens an expert takes per batch: ceil(factor * top_k * tokens / experts); the rest are dropped (they
    pass through the residual). None: no capacity limit, nothing dropped."""
    moe_expert_mlp: str = "gelu"
    """Each expert's feed-forward: `gelu` or `swiglu` (its width is `d_ff`)."""
    moe_balance_coef: float = 0.01
    """Load-balancing loss coefficient (Switch eq. 4: E * sum_i f_i P_i, alpha = 0.01)."""
    moe_z_coef: float = 0.001
    """Router z-loss coefficient (ST-MoE, Zoph et al. 2022, eq. 5)."""

    def __post_init__(self) -> None:
        for site in ("embd_dropout", "attn_dropout", "resid_dropout"):
            if getattr(self, site) is None:
                setattr(self, site, self.dropout)
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None:
            self.d_ff = self.default_d_ff()
        self.validate()

    def default_d_ff(self) -> int:
        """4d for a GELU MLP (GPT-2); for SwiGLU 2/3 of that, rounded up to `d_ff_multiple` (LLaMA's rule, as in
        Hägele et al.'s code: int(2 * 4d / 3) then up to the multiple)."""
        kind = self.moe_expert_mlp if self.mlp == "moe" or "F" not in self.layer_kinds() else self.mlp
        if kind != "swiglu" or not isinstance(self.d_model, int) or not isinstance(self.d_ff_multiple, int):
            return 4 * self.d_model
        m = max(self.d_ff_multiple, 1)
        return m * math.ceil(int(2 * 4 * self.d_model / 3) / m)

    def validate(self) -> None:
        problems = []
        for name in ("n_layer", "n_head", "d_model", "d_ff", "block_size", "vocab_size", "pad_vocab_multiple"):
            value = getattr(self, name)
            if name == "vocab_size" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"model.{name}={value!r} must be a positive integer")
        heads_valid = all(
            isinstance(getattr(self, f), int) and not isinstance(getattr(self, f), bool) and getattr(self, f) >= 1
            for f in ("n_head", "n_kv_head", "d_model")
        )
        if heads_valid and self.d_model % self.n_head:
            divisors = [h for h in range(1, min(self.d_model, 64) + 1) if self.d_model % h == 0]
            problems.append(
                f"model.n_head={self.n_head} does not divide model.d_model={self.d_model}; "
                f"pick n_head from {divisors} or change d_model"
            )
        for site in ("dropout", "embd_dropout", "attn_dropout", "resid_dropout"):
            p = getattr(self, site)
            if not isinstance(p, int | float) or not 0.0 <= p < 1.0:
                problems.append(f"model.{site}={p!r} must be a probability in [0, 1)")
        if self.attn_impl not in ("auto", "sdpa", "flash"):
            problems.append(f"model.attn_impl={self.attn_impl!r} is unknown; choose auto, sdpa or flash")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                problems.append(f"model.{name}={getattr(self, name)!r} is unknown; choose one of {list(choices)}")
        for name in ("n_kv_head", "d_ff_multiple", "dwa_dilation", "dwa_period", "moe_experts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"model.{name}={value!r} must be a positive integer")
        if heads_valid and self.n_head % self.n_kv_head:
            divisors = [h for h in range(1, self.n_head + 1) if self.n_head % h == 0]
            problems.append(
                f"model.n_kv_head={self.n_kv_head} does not divide model.n_head={self.n_head}; pick one of {divisors}"
            )
        if self.positions == "rope" and heads_valid and (self.d_model // self.n_head) % 2:
            problems.append(
                f"model.positions=rope needs an even head dimension; d_model/n_head = {self.d_model // self.n_head}"
            )
        if not (isinstance(self.rope_theta, int | float) and self.rope_theta > 1):
            problems.append(f"model.rope_theta={self.rope_theta!r} must be a number > 1, e.g. 10000")
        kinds = self.layer_kinds()
        if not kinds or any(k not in LAYER_KINDS for k in kinds):
            problems.append(
                f"model.block_pattern={self.block_pattern!r} must be comma-separated letters from "
                f"{sorted(LAYER_KINDS)} (A attention, F feed-forward, E mixture of experts), e.g. 'A,F' or 'A,E,F,E,F,E'"
            )
        if self.denseformer and isinstance(self.n_layer, int):
            if isinstance(self.dwa_period, int) and self.dwa_period > self.n_layer:
                problems.append(
                    f"model.dwa_period={self.dwa_period} exceeds model.n_layer={self.n_layer}: no block would average"
                )
            if isinstance(self.dwa_dilation, int) and self.dwa_dilation > self.n_layer + 1:
                problems.append(
                    f"model.dwa_dilation={self.dwa_dilation} must be at most n_layer + 1 = {self.n_layer + 1}"
                )
        if self.has_moe():
            top_k_ok = isinstance(self.moe_top_k, int) and not isinstance(self.moe_top_k, bool)
            if not top_k_ok or (
                isinstance(self.moe_experts, int) and not 1 <= self.moe_top_k <= min(2, self.moe_experts)
            ):
                problems.append(f"model.moe_top_k={self.moe_top_k!r} must be 1 or 2 (and at most moe_experts)")
            cf = self.moe_capacity_factor
            if cf is not None and not (isinstance(cf, int | float) and cf > 0):
                problems.append(f"model.moe_capacity_factor={cf!r} must be > 0 (e.g. 1.25), or null for no limit")
            for name in ("moe_balance_coef", "moe_z_coef"):
                if not (isinstance(getattr(self, name), int | float) and getattr(self, name) >= 0):
                    problems.append(f"model.{name}={getattr(self, name)!r} must be >= 0")
        raise_if(problems)

    def layer_kinds(self) -> list[str]:
        """The sublayers of one block, e.g. ['A', 'F'], with mlp=moe turning every F into an E."""
        kinds = [k.strip().upper() for k in str(self.block_pattern).split(",")]
        return ["E" if k == "F" and self.mlp == "moe" else k for k in kinds]

    def has_moe(self) -> bool:
        return "E" in self.layer_kinds()

    def dwa_sources(self, i: int) -> range:
        """DenseFormer: the outputs X_j averaged after block i (X_0 the embeddings), as the authors' DWAModules:
        none unless (i + 1) % dwa_period == 0, else j = i + 1 (mod dwa_dilation) for j <= i + 1."""
        if not self.denseformer or (i + 1) % self.dwa_period:
            return range(0)
        return range((i + 1) % self.dwa_dilation, i + 2, self.dwa_dilation)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """A named size (`gpt2_tiny`, `gpt2_small`, `gpt2_medium`, ...), as `model=NAME` builds it, with overrides."""
        if name not in PRESETS:
            raise ConfigError(f"model preset {name!r} is unknown; choose one of {sorted(PRESETS)}")
        return cls(**{"name": name, **PRESETS[name], **overrides})

    @property
    def n_residual_layers(self) -> int:
        """Residual branches in the model: GPT-2 §2.3's N in the 1/sqrt(N) init of their output projections."""
        return self.n_layer * len(self.layer_kinds())

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        if self.vocab_size is None:
            raise_if(["model.vocab_size is not set; give the tokenizer's vocabulary size (GPT-2: 50257)"])
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple
