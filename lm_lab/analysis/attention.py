"""Attention degeneration (Inheritune, Sanyal et al. 2024, §2): the approximate rank k* and the mass columns m* of
attention matrices, lazy layers, and the query/key gradient norms that vanish with them (App. A).

The metrics are pure functions on tensors of attention probabilities (..., T, T), rows summing to one.
`attention_probabilities` is the seam that asks a model's attention modules for those probabilities, which the
fused kernels never materialise; `qk_grad_norms` reads the gradients a backward pass left.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lm_lab.errors import ConfigError
from lm_lab.models.layers import CausalSelfAttention

TOLERANCE = 1e-6
"""A cumulative share within this of the threshold counts as reaching it. The probabilities arrive in float32 (a
relative error of ~1e-7 per entry), so a share that is exactly 0.9 on paper can come out as 0.8999999; the sums
are then taken in float64, whose own error (~1e-13 at T = 1024) is far below this."""

MAX_RANK = 1.5
"""Default lazy-head bound on the batch-mean k*: the midpoint between rank 1 and rank 2, i.e. the head is rank 1 on
(at least) most sequences of the batch, with the rest at most rank 2 on average. The paper's lazy layers are
"rank-1 attention matrices with single-column structures" (§1, Fig. 1)."""

MAX_COLUMNS = 1.5
"""Default lazy-head bound on the batch-mean m*: a single column holds 90% of the mass on most sequences."""

FRACTION = 1.0
"""Default share of a layer's heads that must be lazy for the layer to be lazy: all of them (§2, "completely
degenerate attention matrices across all attention heads")."""


def check_threshold(threshold: float, where: str = "threshold") -> list[str]:
    """Problems with a share threshold (0, 1], each naming `where`."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        return [f"{where}={threshold!r} must be a share in (0, 1], e.g. 0.9 (the paper's 90%)"]
    return []


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


def _fewest_reaching(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """The fewest leading entries of `values` (..., n), non-negative and sorted descending, whose sum reaches
    `threshold` of the total (within TOLERANCE); 0 where the total is 0."""
    total = values.sum(-1)
    share = values.cumsum(-1) / total.clamp_min(torch.finfo(values.dtype).tiny).unsqueeze(-1)
    # shares rise monotonically, so the entries still short of the threshold are exactly the ones before the first
    # that reaches it
    count = (share < threshold - TOLERANCE).sum(-1) + 1
    return torch.where(total > 0, count.clamp(max=values.shape[-1]), 0)


def _check_matrices(probs: torch.Tensor, name: str) -> None:
    if probs.ndim < 2 or probs.shape[-1] != probs.shape[-2]:
        raise ValueError(f"{name} wants attention matrices (..., T, T); got shape {tuple(probs.shape)}")


def approximate_rank(probs: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    """k* of each matrix (..., T, T) -> LongTensor (...): the fewest singular values whose squares reach
    `threshold` of the sum of all squares (§2: SVD with explained variance, 90%).

    In float64: the SVD of a 1024 x 1024 matrix costs ~1.2x float32's on a CPU, and the shares are then exact to
    far below TOLERANCE, so only the float32 rounding of the probabilities themselves is left for it to absorb.
    """
    _raise(check_threshold(threshold))
    _check_matrices(probs, "approximate_rank")
    energy = torch.linalg.svdvals(probs.double()).square()  # descending, (..., T)
    return _fewest_reaching(energy, threshold)


def mass_columns(probs: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    """m* of each matrix (..., T, T) -> LongTensor (...): the fewest columns holding `threshold` of the matrix's
    total mass (§2). A column's mass is its sum over the rows (the attention every query pays that key); the
    columns are taken heaviest first."""
    _raise(check_threshold(threshold))
    _check_matrices(probs, "mass_columns")
    mass = probs.double().sum(-2).sort(dim=-1, descending=True).values  # (..., T)
    return _fewest_reaching(mass, threshold)


def head_means(probs: torch.Tensor, threshold: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's probabilities (B, H, T, T) -> the batch-mean k* and m* of each head, two float tensors (H,)."""
    if probs.ndim != 4:
        raise ValueError(f"head_means wants one layer's probabilities (B, H, T, T); got shape {tuple(probs.shape)}")
    return (
        approximate_rank(probs, threshold).double().mean(0),
        mass_columns(probs, threshold).double().mean(0),
    )


def degeneration(probs_by_layer: list[torch.Tensor], threshold: float = 0.9) -> dict[str, Any]:
    """k* and m* of every head of every layer, averaged over the batch (§2, Fig. 1 and 9).

    probs_by_layer: one (B, H, T, T) tensor per attention module, in order (what `attention_probabilities` gives).
    Returns `k_star` and `m_star` (L, H) float64 batch means; `k_star_layer` and `m_star_layer` (L,) their means
    over heads; `seq_len` T and `batch_size` B (k* and m* are at most T: compare models at one T).
    """
    if not probs_by_layer:
        raise ValueError("degeneration wants at least one layer's probabilities")
    shapes = {(p.shape[0], p.shape[-1]) for p in probs_by_layer}
    if len(shapes) != 1:
        raise ValueError(f"every layer's probabilities must share the batch size and length; got (B, T) {shapes}")
    means = [head_means(p, threshold) for p in probs_by_layer]
    k_star = torch.stack([k for k, _ in means])
    m_star = torch.stack([m for _, m in means])
    ((batch_size, seq_len),) = shapes
    return {
        "k_star": k_star,
        "m_star": m_star,
        "k_star_layer": k_star.mean(-1),
        "m_star_layer": m_star.mean(-1),
        "seq_len": seq_len,
        "batch_size": batch_size,
        "threshold": threshold,
    }


def check_lazy_settings(
    max_rank: float, max_columns: float | None, fraction: float = FRACTION, where: str = ""
) -> list[str]:
    """Problems with the lazy-layer bounds, each naming the field (prefixed by `where`, e.g. `callbacks.attn.`)."""
    problems = []
    for name, value in (("max_rank", max_rank), ("max_columns", max_columns)):
        if value is None and name == "max_columns":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 1:
            problems.append(f"{where}{name}={value!r} must be a number >= 1 (k* and m* are at least 1), e.g. 1.5")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        problems.append(f"{where}fraction={fraction!r} must be a share of a layer's heads in (0, 1], e.g. 1.0")
    return problems


def lazy_heads(
    k_star: torch.Tensor, m_star: torch.Tensor, max_rank: float = MAX_RANK, max_columns: float | None = MAX_COLUMNS
) -> torch.Tensor:
    """BoolTensor (L, H): a head is lazy when its batch-mean k* <= max_rank or its batch-mean m* <= max_columns
    (None: k* alone).

    Either is the degenerate signature of §2: a (near) single-column matrix is (near) rank 1, and a rank-1 causal
    attention matrix is exactly single-column (its first row is e_0, so every row is), so the two mostly agree;
    `or` also flags a head whose mass collapses onto one key while a few rows still attend elsewhere.
    """
    _raise(check_lazy_settings(max_rank, max_columns))
    if k_star.shape != m_star.shape or k_star.ndim != 2:
        raise ValueError(f"k_star and m_star must both be (L, H); got {tuple(k_star.shape)} and {tuple(m_star.shape)}")
    lazy = k_star <= max_rank
    return lazy | (m_star <= max_columns) if max_columns is not None else lazy


def lazy_layers(
    k_star: torch.Tensor,
    m_star: torch.Tensor,
    max_rank: float = MAX_RANK,
    max_columns: float | None = MAX_COLUMNS,
    fraction: float = FRACTION,
) -> list[int]:
    """The indices of the lazy layers: those with at least `fraction` of their heads lazy (see `lazy_heads`)."""
    _raise(check_lazy_settings(max_rank, max_columns, fraction))
    heads = lazy_heads(k_star, m_star, max_rank, max_columns)
    needed = fraction * heads.shape[1] - 1e-9  # 0.28 * 25 heads is 7.000000000000001 in floats
    return [i for i, n in enumerate(heads.sum(1).tolist()) if n >= needed]


# -- the model side ---------------------------------------------------------------------------------------------


def attention_modules(model: nn.Module) -> list[tuple[str, CausalSelfAttention]]:
    """Every attention module of `model` with its name, in registration order: block 0's `attn` (and `attn_2`, ...
    under a `block_pattern` with several), then block 1's. This order indexes the "layers" of every function here:
    with one attention per block (GPT-2, LLaMA) index i is block i."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, CausalSelfAttention)]


@contextmanager
def attention_probabilities(
    model: nn.Module, reduce: Callable[[torch.Tensor], Any] | None = None
) -> Iterator[list[Any]]:
    """`with attention_probabilities(model) as probs: model(idx)` fills `probs` with one (B, H, T, T) tensor per
    attention module (in `attention_modules` order, detached, float32), computed explicitly instead of by the
    fused kernels; the modules' flags are restored on exit.

    reduce: applied to each module's probabilities as soon as that module has run, its result stored instead (e.g.
    `head_means`), so only one layer's (B, H, T, T) is held at a time. A second forward in the block overwrites.
    """
    modules = [m for _, m in attention_modules(model)]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no CausalSelfAttention module to analyse")
    out: list[Any] = [None] * len(modules)

    def keep(i: int) -> Callable:
        def hook(module: CausalSelfAttention, args, output) -> None:
            probs, module.probs = module.probs, None
            out[i] = probs if reduce is None else reduce(probs)

        return hook

    before = [m.keep_probs for m in modules]
    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(modules)]
    try:
        for m in modules:
            m.keep_probs = True
        yield out
    finally:
        for m, flag, handle in zip(modules, before, handles, strict=True):
            m.keep_probs, m.probs = flag, None
            handle.remove()


def qk_grad_norms(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The L2 (Frobenius) norms of the query and key projections' gradients, one per attention module (in
    `attention_modules` order): the rows of q and of k in the fused `qkv.weight` gradient (`qkv_sizes`), the
    bias left out. App. A ties lazy layers to vanishing query/key gradients. NaN where a module has no gradient.

    Returns two float32 tensors (n_attention,) on the gradients' device (read them in one go: one sync).
    """
    q_norms, k_norms = [], []
    for _, m in attention_modules(model):
        grad = m.qkv.weight.grad
        if grad is None:
            nan = torch.tensor(float("nan"), device=m.qkv.weight.device)
            q_norms.append(nan)
            k_norms.append(nan)
            continue
        q, k, _ = grad.split(m.qkv_sizes, dim=0)
        q_norms.append(torch.linalg.vector_norm(q.float()))
        k_norms.append(torch.linalg.vector_norm(k.float()))
    if not q_norms:
        raise ValueError(f"{type(model).__name__} has no CausalSelfAttention module to measure")
    return torch.stack(q_norms), torch.stack(k_norms)


__all__ = [
    "FRACTION",
    "MAX_COLUMNS",
    "MAX_RANK",
    "TOLERANCE",
    "approximate_rank",
    "attention_modules",
    "attention_probabilities",
    "check_lazy_settings",
    "check_threshold",
    "degeneration",
    "head_means",
    "lazy_heads",
    "lazy_layers",
    "mass_columns",
    "qk_grad_norms",
]
