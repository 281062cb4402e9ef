"""Optimizers and their parameter groups."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lm_lab.errors import raise_if

OPTIMIZERS = ("adamw",)


@dataclass
class OptimizerConfig:
    """AdamW as in Hägele et al. 2024 §2 and most LLM pretraining: betas (0.9, 0.95), decay 0.1, clip 1.0."""

    name: str = "adamw"
    lr: float = 1e-3
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices (embeddings included) only, never to norms or biases."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this; None or 0 logs the norm without clipping."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        problems = []
        if self.name not in OPTIMIZERS:
            problems.append(f"optimizer.name={self.name!r} is unknown; choose one of {list(OPTIMIZERS)}")
        if not (isinstance(self.lr, float | int) and self.lr > 0):
            problems.append(f"optimizer.lr={self.lr!r} must be a positive number, e.g. 1e-3")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"optimizer.betas={list(self.betas)} must be two numbers in [0, 1), e.g. [0.9, 0.95]")
        if self.weight_decay < 0:
            problems.append(f"optimizer.weight_decay={self.weight_decay} must be >= 0")
        if self.grad_clip is not None and self.grad_clip < 0:
            problems.append(f"optimizer.grad_clip={self.grad_clip} must be >= 0 (or null for no clipping)")
        raise_if(problems)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay 2-D weights (matrices, embeddings); never LayerNorm weights or biases (nanoGPT, Loshchilov & Hutter).

    litgpt's pretrain decays every parameter, norms included; that is a known complaint.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW over `param_groups`; `fused` uses the single-kernel CUDA implementation."""
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused
    )
