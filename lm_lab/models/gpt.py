"""The decoder family, read top to bottom: block -> DenseFormer's averaging -> model. Components are in `layers.py`
(norms, positions, attention, MLPs) and `moe.py` (mixture of experts), each chosen by a `ModelConfig` string.

The defaults are GPT-2 (Radford et al. 2019): learned position embeddings, pre-LayerNorm blocks with a final
LayerNorm, a GELU MLP of width 4d, the output head tied to the token embedding, biases, dropout on embeddings,
attention probabilities and residual branches. LLaMA-style is norm=rmsnorm, mlp=swiglu, positions=rope, no biases,
an untied head and n_kv_head < n_head for grouped-query attention.
Deviation: the embedding is padded to a multiple of `pad_vocab_multiple` rows (nanoGPT); the padded rows
are never targets, so the model learns to give them no mass.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lm_lab.models.config import ModelConfig
from lm_lab.models.layers import FEED_FORWARD, NORMS, CausalSelfAttention, rotary_tables
from lm_lab.models.moe import MoE

SUBLAYER_NAMES = {"A": "attn", "F": "mlp", "E": "moe"}


class Block(nn.Module):
    """Pre-norm residual sublayers (GPT-2 §2.3), one per letter of `block_pattern`: x + f(norm(x)).

    The names follow GPT-2's for `A,F` (ln_1, attn, ln_2, mlp); a repeated kind gets a suffix (moe, moe_2, ...).
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.sublayers: list[tuple[str, str]] = []  # (norm name, module name) in order
        seen: dict[str, int] = {}
        for i, kind in enumerate(cfg.layer_kinds()):
            seen[kind] = seen.get(kind, 0) + 1
            name = SUBLAYER_NAMES[kind] + (f"_{seen[kind]}" if seen[kind] > 1 else "")
            if kind == "A":
                module = CausalSelfAttention(cfg, layer_idx)
            elif kind == "E":
                module = MoE(cfg)
            else:
                module = FEED_FORWARD[cfg.mlp](cfg)
            self.add_module(f"ln_{i + 1}", NORMS[cfg.norm](cfg))
            self.add_module(name, module)
            self.sublayers.append((f"ln_{i + 1}", name))

    def init_weights(self, std: float) -> None:
        for norm, layer in self.sublayers:
            getattr(self, norm).init_weights(std)
            getattr(self, layer).init_weights(std)

    def init_residual(self, std: float) -> None:
        for _, layer in self.sublayers:
            getattr(self, layer).init_residual(std)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        for norm, layer in self.sublayers:
            module = getattr(self, layer)
            h = getattr(self, norm)(x)
            x = x + (module(h, rope) if isinstance(module, CausalSelfAttention) else module(h))
        return x


class DepthWeightedAverage(nn.Module):
    """DenseFormer's DWA (Pagliardini et al. 2024, §3): after block i (when (i + 1) % period == 0) the next input
    is sum_j alpha_ij X_j over the embedding output X_0 and the block outputs X_1..X_{i+1}, keeping only the j
    with j = i + 1 (mod dilation). alpha starts as one on X_{i+1} and zero elsewhere: the plain residual model.

    Deviation: the weights are 1-D parameters (the reference code's `nn.Linear(n, 1)` rows), so they are never
    weight-decayed and Muon leaves them to AdamW.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.alphas = nn.ParameterDict(
            {str(i): nn.Parameter(torch.empty(len(js))) for i in range(cfg.n_layer) if (js := cfg.dwa_sources(i))}
        )

    def init_weights(self, std: float) -> None:
        for alpha in self.alphas.values():
            nn.init.zeros_(alpha)
            alpha.data[-1] = 1.0

    def forward(self, outputs: list[torch.Tensor], i: int) -> torch.Tensor:
        if not self.cfg.dwa_sources(i):
            return outputs[-1]
        # a running sum, not einsum over a stack: no copy of every earlier output is saved for backward, and no
        # matmul for autocast to run in half precision
        alpha = self.alphas[str(i)]
        out = None
        for a, j in zip(alpha, self.cfg.dwa_sources(i), strict=True):
            term = a * outputs[j]
            out = term if out is None else out + term
        return out


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        if cfg.positions == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.embd_dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        if cfg.denseformer:
            self.dwa = DepthWeightedAverage(cfg)
        self.ln_f = NORMS[cfg.norm](cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        self.tie_weights()
        self.init_weights()

    def tie_weights(self) -> None:
        """The output head shares the token embedding's tensor (GPT-2) unless `tie_embeddings` is off."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, unit norms, residual projections scaled down.

        Each module draws its own weights, in the order GPT-2's code always drew them: every block, the final
        norm and the head; then the embeddings; then the residual projections again at the scaled std (the tied
        head's first draw is overwritten by the embedding's). On the meta device these calls are free, so
        building a 1.5B model to count it costs nothing.
        """
        std = self.config.init_std
        for block in self.blocks:
            block.init_weights(std)
        if self.config.denseformer:
            self.dwa.init_weights(std)
        self.ln_f.init_weights(std)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=std)
        nn.init.normal_(self.wte.weight, mean=0.0, std=std)
        if self.config.positions == "learned":
            nn.init.normal_(self.wpe.weight, mean=0.0, std=0.01)  # openai/gpt-2 src/model.py: wpe stddev 0.01
        # GPT-2 §2.3: "scale the weights of residual layers at initialization by 1/sqrt(N)", N residual layers.
        for block in self.blocks:
            block.init_residual(std / math.sqrt(self.config.n_residual_layers))

    def moe_layers(self) -> list[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]

    def aux_loss(self) -> torch.Tensor | None:
        """The auxiliary losses of the last forward (MoE balance and z-losses, weighted), or None without any."""
        losses = [m.aux["loss"] for m in self.moe_layers() if m.aux]
        return torch.stack(losses).sum() if losses else None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> next-token logits (B, T, padded_vocab_size)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds model.block_size={self.config.block_size}")
        x = self.wte(idx)  # (B, T, C)
        if self.config.positions == "learned":
            x = x + self.wpe(torch.arange(T, device=idx.device))
        x = self.drop(x)
        rope = rotary_tables(self.config, T, idx.device) if self.config.positions == "rope" else None
        outputs = [x]  # DenseFormer's X_0, X_1, ...
        for i, block in enumerate(self.blocks):
            x = block(x, rope)
            if self.config.denseformer:
                outputs.append(x)
                x = self.dwa(outputs, i)
        return self.lm_head(self.ln_f(x))  # (B, T, V)
