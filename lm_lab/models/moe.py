"""Mixture of experts: a learned router sends each token to its top-k expert feed-forwards.

Top-1 routing follows Switch Transformers (Fedus et al. 2021): the gate is the router probability. Top-2 follows
GShard (Lepikhin et al. 2020): the two gates are renormalised to sum to one, and a token's first choice takes an
expert's capacity before any token's second choice. Each expert takes at most
ceil(capacity_factor * k * tokens / experts) assignments per training micro-batch, in token order; the rest are
dropped (the token passes through the residual unchanged). Dropping makes a token's output depend on the other
tokens of its batch (a later token can take an earlier one's second-choice slot), so evaluation routes every token
(no capacity limit, Switch's larger evaluation capacity taken to the limit): validation losses are causal and do
not depend on how the validation set is batched. Losses, both added to the training loss by the coefficients in the
config: Switch's load-balancing loss E * sum_i f_i P_i (eq. 4; minimum 1 at uniform routing), with f_i the share of
assignments routed to expert i and P_i its mean router probability, and ST-MoE's router z-loss
mean(logsumexp(logits)^2) (Zoph et al. 2022, eq. 5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lm_lab.models.config import ModelConfig
from lm_lab.models.layers import FEED_FORWARD


def capacity(cfg: ModelConfig, tokens: int) -> int | None:
    """Assignments one expert takes from a batch of `tokens` tokens (None: unlimited)."""
    if cfg.moe_capacity_factor is None:
        return None
    return math.ceil(cfg.moe_capacity_factor * cfg.moe_top_k * tokens / cfg.moe_experts)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.router = nn.Linear(cfg.d_model, cfg.moe_experts, bias=False)
        self.experts = nn.ModuleList(FEED_FORWARD[cfg.moe_expert_mlp](cfg) for _ in range(cfg.moe_experts))
        self.aux: dict[str, torch.Tensor] = {}
        """The last forward's `loss` (weighted balance + z-loss), `balance`, `z`, `load` (f_i per expert) and
        `dropped` (the share of assignments over capacity)."""

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.router.weight, mean=0.0, std=std)
        for expert in self.experts:
            expert.init_weights(std)

    def init_residual(self, std: float) -> None:
        for expert in self.experts:
            expert.init_residual(std)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, C) tokens -> router logits (N, E) in float32, gates (N, k), experts (N, k) and kept (N, k)."""
        with torch.autocast(x.device.type, enabled=False):  # the router in float32 (ST-MoE's selective precision)
            logits = F.linear(x.float(), self.router.weight.float())
        probs = logits.softmax(dim=-1)
        gates, experts = probs.topk(self.cfg.moe_top_k, dim=-1)
        if self.cfg.moe_top_k > 1:
            gates = gates / gates.sum(dim=-1, keepdim=True)  # GShard: the top-2 gates sum to one
        limit = capacity(self.cfg, x.shape[0]) if self.training else None
        if limit is None:
            kept = torch.ones_like(experts, dtype=torch.bool)
        else:
            # position of each assignment in its expert's queue: all first choices in token order, then the seconds
            onehot = F.one_hot(experts.t().reshape(-1), self.cfg.moe_experts)  # (k * N, E), choice-major
            position = (onehot.cumsum(0) * onehot).sum(-1) - 1
            kept = (position < limit).view(self.cfg.moe_top_k, -1).t()  # (N, k)
        return logits, gates, experts, kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, C)
        logits, gates, experts, kept = self.route(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            # an expert without tokens still runs (on none): its gradients are zeros, not missing, as DDP wants
            token, choice = torch.where((experts == e) & kept)
            out.index_add_(0, token, expert(x[token]) * gates[token, choice, None].to(x.dtype))
        load = F.one_hot(experts, self.cfg.moe_experts).sum(dim=(0, 1)).float() / experts.numel()  # f_i
        balance = self.cfg.moe_experts * (load * logits.softmax(dim=-1).mean(dim=0)).sum()
        z = torch.logsumexp(logits, dim=-1).square().mean()
        self.aux = {
            "loss": self.cfg.moe_balance_coef * balance + self.cfg.moe_z_coef * z,
            "balance": balance.detach(),
            "z": z.detach(),
            "load": load,
            "dropped": 1.0 - kept.float().mean(),
        }
        return out.view(shape)
