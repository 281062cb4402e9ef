"""Optimizers and their parameter groups: AdamW, schedule-free AdamW, 8-bit AdamW and Muon (+ AdamW)."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
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
    `adamw8bit` (bitsandbytes, CUDA only; embeddings' states in 32 bit); `muon` (torch.optim.Muon for hidden matrices,
    q, k and v apart: SplitMuon; AdamW for the rest)."""
    lr: float = 1e-3
    """Peak learning rate (for muon: of both parts; Muon's update is scaled to AdamW's RMS)."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices only, never to norms or biases."""
    decay_embeddings: bool = True
    """Decay the embeddings (and so a head tied to them) too: nanoGPT's rule. False is Hägele et al.'s code
    (epfml/schedules-and-scaling, `BLACKLIST_WEIGHT_MODULES`), which exempts every nn.Embedding like the norms."""
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
        if not isinstance(self.decay_embeddings, bool):
            problems.append(f"optimizer.decay_embeddings={self.decay_embeddings!r} must be true or false")
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
        if self.name == "muon" and strategy == "fsdp":
            problems.append(
                "optimizer.name=muon orthogonalises whole matrices, which trainer.strategy=fsdp splits over ranks; "
                "use trainer=ddp with Muon, or optimizer=adamw under FSDP"
            )
        return problems


def embedding_ids(model: nn.Module) -> set[int]:
    """The ids of every nn.Embedding's tensors: a head tied to the token embedding is the same tensor, so in."""
    return {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}


WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def original_ndims(model: nn.Module) -> dict[int, int]:
    """Each parameter's dimensions as the model built it, by id. Under FSDP (`use_orig_params`) a parameter is a
    flat 1-D view of this rank's shard, so its own `ndim` no longer tells a matrix from a bias; the names do
    (wrapper prefixes removed), checked against the same model built on the meta device. Empty for a module
    that is not a lab `GPT`."""
    from lm_lab.models import GPT  # (lazily: the models package imports the optimizers' config)

    cfg = getattr(model, "config", None)
    if not isinstance(model, GPT) or cfg is None:
        return {}
    with torch.device("meta"):
        shapes = {name: p.ndim for name, p in GPT(cfg).named_parameters(remove_duplicate=False)}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        for prefix in WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        if name in shapes:
            out[id(p)] = shapes[name]
    return out


def param_groups(
    model: nn.Module | list[nn.Parameter],
    weight_decay: float,
    decay_embeddings: bool = True,
    embeddings: set[int] | None = None,
) -> list[dict]:
    """Decay 2-D weights (matrices, and embeddings unless `decay_embeddings` is off); never LayerNorm weights or
    biases (nanoGPT, Loshchilov & Hutter). `embeddings`: the embedding tensors' ids, for a list of parameters
    (of a module they are found by type).

    litgpt's pretrain decays every parameter, norms included; that is a known complaint.
    """
    ndim = {}
    if isinstance(model, nn.Module):
        embeddings = embedding_ids(model) if embeddings is None else embeddings
        params = list(model.parameters())
        ndim = original_ndims(model)
    else:
        params = list(model)
        if not decay_embeddings and embeddings is None:
            raise ValueError("decay_embeddings=False over a list of parameters needs their embeddings' ids")
    params = [p for p in params if p.requires_grad]
    exempt = set() if decay_embeddings else embeddings
    decayed = {id(p) for p in params if ndim.get(id(p), p.ndim) >= 2 and id(p) not in exempt}
    return [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]


def muon_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hidden 2-D matrices for Muon, everything else for AdamW): the embeddings and the output head (tied or
    not) go to AdamW, as in Jordan et al.'s Muon and the nanoGPT speedrun."""
    embeddings = embedding_ids(model)
    head = getattr(model, "lm_head", None)
    if head is not None:
        embeddings |= {id(p) for p in head.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    hidden = {id(p) for p in params if p.ndim == 2 and id(p) not in embeddings}
    return [p for p in params if id(p) in hidden], [p for p in params if id(p) not in hidden]


def qkv_splits(model: nn.Module) -> dict[nn.Parameter, tuple[int, ...]]:
    """Each attention's fused qkv weight and its rows of q, k and v (`qkv_sizes`), for SplitMuon."""
    return {m.qkv.weight: tuple(m.qkv_sizes) for m in model.modules() if hasattr(m, "qkv_sizes")}


if hasattr(torch.optim, "Muon"):  # torch >= 2.9; check_environment tells older installs
    from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz
    from torch.optim._muon import muon as _muon
    from torch.optim.optimizer import _to_scalar

    class SplitMuon(torch.optim.Muon):
        """torch.optim.Muon in which a fused weight is several matrices: each block of rows (the q, k and v of a
        fused qkv) is orthogonalised, and its LR adjusted to its shape, on its own, as Q, K and V are separate
        matrices in Keller Jordan's Muon and Moonlight (Liu et al. 2025, "Muon is Scalable for LLM Training").
        Parameters without `splits` take torch's own path. The splits are not in the state dict (rebuild them
        from the model: `qkv_splits`), so a checkpoint loads with `weights_only=True`."""

        HYPER = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn")

        def __init__(self, params, splits: Mapping[torch.Tensor, Sequence[int]] | None = None, **kwargs):
            super().__init__(params, **kwargs)
            self.splits = {id(p): tuple(int(n) for n in sizes) for p, sizes in (splits or {}).items()}
            for p in splits or {}:
                if sum(self.splits[id(p)]) != p.shape[0]:
                    raise ValueError(f"splits {self.splits[id(p)]} do not add up to the rows of a {tuple(p.shape)}")

        @torch.no_grad()
        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                params, grads, bufs = [], [], []
                has_complex = self._init_group(group, params, grads, bufs)
                hyper = {k: group[k] for k in self.HYPER}
                whole = [i for i, p in enumerate(params) if id(p) not in self.splits]
                _muon(*([xs[i] for i in whole] for xs in (params, grads, bufs)), **hyper, has_complex=has_complex)
                for p, grad, buf in zip(params, grads, bufs, strict=True):
                    if id(p) in self.splits:
                        _split_muon_update(p, grad, buf, self.splits[id(p)], **hyper)
            return loss

    def _split_muon_update(
        param, grad, buf, sizes, *, lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn
    ) -> None:
        """torch's `_single_tensor_muon` for one parameter, orthogonalising and adjusting the LR per row block."""
        lr = _to_scalar(lr)
        buf.lerp_(grad, 1 - momentum)  # torch's form of B = mu B + g (a scale Newton-Schulz normalises away)
        update = grad.lerp(buf, momentum) if nesterov else buf
        param.mul_(1 - lr * weight_decay)
        for block, rows in zip(update.split(sizes), param.split(sizes), strict=True):  # (rows_i, d): q, k, v
            ortho = _zeropower_via_newtonschulz(block, ns_coefficients, ns_steps, eps)
            rows.add_(ortho, alpha=-_adjust_lr(lr, adjust_lr_fn, block.shape))

else:
    SplitMuon = None  # torch < 2.9: check_environment refuses optimizer.name=muon before any work


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
    groups = param_groups(model, cfg.weight_decay, cfg.decay_embeddings)
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

        keep_embeddings_32bit(model)
        return bnb.optim.AdamW8bit(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "muon":
        hidden, rest = muon_split(model)
        muon = SplitMuon(
            hidden,
            splits=qkv_splits(model),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
            adjust_lr_fn="match_rms_adamw",
        )
        rest_groups = param_groups(rest, cfg.weight_decay, cfg.decay_embeddings, embedding_ids(model))
        adamw = torch.optim.AdamW(rest_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
        return MuonWithAdamW(muon, adamw)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)


def keep_embeddings_32bit(model: nn.Module) -> None:
    """8-bit AdamW keeps every nn.Embedding's states (and so a tied head's) in 32 bit, as bitsandbytes' guide
    recommends for NLP models: an override registered with its GlobalOptimManager before the optimizer is built."""
    from bitsandbytes.optim import GlobalOptimManager

    manager = GlobalOptimManager.get_instance()
    manager.register_parameters(model.parameters())
    registered = {(id(m), name) for m, name, _ in manager.module_weight_config_triple}
    for module in model.modules():
        if isinstance(module, nn.Embedding) and (id(module), "weight") not in registered:  # once per module
            manager.register_module_override(module, "weight", {"optim_bits": 32})
