"""`ModelConfig`: the one dataclass that describes every model of the family.

Named sizes are `ModelConfig.preset(name)` (`presets.py`, mirrored by `conf/model/*.yaml`); this file holds the
defaults (GPT-2 small, Radford et al. 2019) and the validation that runs before anything is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lm_lab.errors import ConfigError, raise_if
from lm_lab.models.presets import PRESETS


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

    def __post_init__(self) -> None:
        for site in ("embd_dropout", "attn_dropout", "resid_dropout"):
            if getattr(self, site) is None:
                setattr(self, site, self.dropout)
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self.validate()

    def validate(self) -> None:
        problems = []
        for name in ("n_layer", "n_head", "d_model", "d_ff", "block_size", "vocab_size", "pad_vocab_multiple"):
            value = getattr(self, name)
            if name == "vocab_size" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"model.{name}={value!r} must be a positive integer")
        if not problems and self.d_model % self.n_head:
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
        raise_if(problems)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """A named size (`gpt2_tiny`, `gpt2_small`, `gpt2_medium`, ...), as `model=NAME` builds it, with overrides."""
        if name not in PRESETS:
            raise ConfigError(f"model preset {name!r} is unknown; choose one of {sorted(PRESETS)}")
        return cls(**{"name": name, **PRESETS[name], **overrides})

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        if self.vocab_size is None:
            raise_if(["model.vocab_size is not set; give the tokenizer's vocabulary size (GPT-2: 50257)"])
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple
