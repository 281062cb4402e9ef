"""Optimizers and their parameter groups: AdamW, schedule-free AdamW, 8-bit AdamW and Muon (+ AdamW)."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import torch
from torch import nn

from lm_lab.errors import raise_if

OPTIMIZERS = ("adamw", "schedule_free", "adamw8bit", "muon")
# hyperparameters a resumed run takes from its config; the optimizers' running quantities kept in param_groups
# (schedule-free's k, weight_sum, lr_max, train_mode ...) stay as restored
HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "momentum", "nesterov")
STRATEGIES_8BIT = ("auto", "single_device", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true")


@dataclass
class OptimizerConfig:
    """AdamW as in Hägele et al. 2024 §2 and most LLM pretraining: betas (0.9, 0.95), decay 0.1, clip 1.0."""

    name: str = "adamw"
    """`adamw`; `schedule_free` (Defazio et al. 2024, the `schedulefree` package: use with scheduler=constant);
    `adamw8bit` (bitsandbytes, CUDA only); `muon` (torch.optim.Muon for hidden matrices, AdamW for the rest)."""
    lr: float = 1e-3
    """Peak learning rate (for muon: of both parts; Muon's update is scaled to AdamW's RMS)."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices (embeddings included) only, never to norms or biases."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this; None or 0 logs the norm without clipping."""
    warmup_steps: int = 0
    """`schedule_free`: its own warmup (it replaces the LR schedule)."""
    momentum: float = 0.95
    """`muon`: momentum of the orthogonalised updates."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        problems = []
        if self.name not in OPTIMIZERS:
            problems.append(f"optimizer.name={self.name!r} is unknown; choose one of {list(OPTIMIZERS)}")
        if isinstance(self.lr, bool) or not (
            isinstance(self.lr, float | int) and math.isfinite(self.lr) and self.lr > 0
        ):
            problems.append(f"optimizer.lr={self.lr!r} must be a positive number, e.g. 1e-3")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"optimizer.betas={list(self.betas)} must be two numbers in [0, 1), e.g. [0.9, 0.95]")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            problems.append(f"optimizer.weight_decay={self.weight_decay} must be >= 0")
        if self.grad_clip is not None and (math.isnan(self.grad_clip) or self.grad_clip < 0):
            problems.append(f"optimizer.grad_clip={self.grad_clip} must be >= 0 (or null for no clipping)")
        if self.warmup_steps < 0:
            problems.append(f"optimizer.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0 <= self.momentum < 1:
            problems.append(f"optimizer.momentum={self.momentum} must be in [0, 1), e.g. 0.95")
        raise_if(problems)

    def check_environment(self, on_gpu: bool, strategy: str) -> list[str]:
        """Problems of this optimizer on this machine and strategy, found before any work."""
        problems = []
        if self.name == "schedule_free" and importlib.util.find_spec("schedulefree") is None:
            problems.append("optimizer.name=schedule_free needs the schedulefree package: pip install schedulefree")
        if self.name == "adamw8bit":
            if importlib.util.find_spec("bitsandbytes") is None:
                problems.append("optimizer.name=adamw8bit needs bitsandbytes: pip install -e .[gpu]")
            if not on_gpu:
                problems.append("optimizer.name=adamw8bit runs on CUDA GPUs only; on CPU use optimizer=adamw")
            if strategy not in STRATEGIES_8BIT:
                problems.append(
                    f"optimizer.name=adamw8bit is known to break under trainer.strategy={strategy!r} (sharded "
                    f"states); it supports {list(STRATEGIES_8BIT)}: use one of them or optimizer=adamw"
                )
        if self.name == "muon" and not hasattr(torch.optim, "Muon"):
            problems.append(f"optimizer.name=muon needs torch.optim.Muon (torch >= 2.9; this is {torch.__version__})")
        return problems


def param_groups(model: nn.Module | list[nn.Parameter], weight_decay: float) -> list[dict]:
    """Decay 2-D weights (matrices, embeddings); never LayerNorm weights or biases (nanoGPT, Loshchilov & Hutter).

    litgpt's pretrain decays every parameter, norms included; that is a known complaint.
    """
    params = [p for p in (model.parameters() if isinstance(model, nn.Module) else model) if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def muon_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hidden 2-D matrices for Muon, everything else for AdamW): the embeddings and the (tied) output head go
    to AdamW, as in Jordan et al.'s Muon and the nanoGPT speedrun."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    hidden = [p for p in params if p.ndim == 2 and id(p) not in embeddings]
    return hidden, [p for p in params if id(p) not in {id(h) for h in hidden}]


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon for hidden matrices and AdamW for the rest, as one optimizer: one `step`, one state dict, and
    param_groups that an LR scheduler drives together (Muon's groups first)."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.muon, self.adamw = muon, adamw
        super().__init__([*muon.param_groups, *adamw.param_groups], defaults={})
        self._share()

    def _share(self) -> None:
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.muon.state = self.adamw.state = self.state  # parameters are disjoint: one state table

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # replaces param_groups and state: point the parts at them again
        self._share()


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer of `cfg` over `model`; `fused` uses single-kernel CUDA implementations where they exist."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "schedule_free":
        from schedulefree import AdamWScheduleFree

        return AdamWScheduleFree(
            groups,
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup_steps,
        )
    if cfg.name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "muon":
        hidden, rest = muon_split(model)
        muon = torch.optim.Muon(
            hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, adjust_lr_fn="match_rms_adamw"
        )
        adamw = torch.optim.AdamW(
            param_groups(rest, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused
        )
        return MuonWithAdamW(muon, adamw)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
