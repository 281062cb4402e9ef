"""A model's attention degeneration on a batch (Inheritune, Sanyal et al. 2024, §2): per-layer k* and m*, the lazy
layers, an aligned text table, k*/m* heatmaps (layer x head, as Fig. 9) and attention maps (as Fig. 1).

`analyze` is what `lm-lab analyze` and notebooks call; `summarize` is its pure half, shared with the
`AttentionMonitor` callback, so the two flag lazy layers by one rule. Plots use matplotlib's Agg canvas on a
`Figure` of their own (no pyplot state), imported only when a plot is drawn.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lm_lab.analysis.attention import (
    FRACTION,
    MAX_COLUMNS,
    MAX_RANK,
    attention_modules,
    attention_probabilities,
    check_lazy_settings,
    check_threshold,
    head_means,
    lazy_heads,
    lazy_layers,
)
from lm_lab.errors import raise_if


def summarize(
    k_star: torch.Tensor,
    m_star: torch.Tensor,
    *,
    threshold: float,
    seq_len: int,
    batch_size: int,
    names: list[str] | None = None,
    max_rank: float = MAX_RANK,
    max_columns: float | None = MAX_COLUMNS,
    fraction: float = FRACTION,
) -> dict[str, Any]:
    """The result `analyze` returns, from the batch-mean k* and m* (L, H) of each head: the settings, the two
    matrices (float64, CPU), `lazy_heads` (L, H), `lazy_layers` (indices) and one row per layer (its mean, min and
    max over heads of k* and m*, its lazy heads, the lazy flag)."""
    raise_if(check_lazy_settings(max_rank, max_columns, fraction))
    k_star, m_star = k_star.detach().double().cpu(), m_star.detach().double().cpu()
    heads = lazy_heads(k_star, m_star, max_rank, max_columns)
    lazy = set(lazy_layers(k_star, m_star, max_rank, max_columns, fraction))
    names = names or [f"layer {i}" for i in range(k_star.shape[0])]
    if len(names) != k_star.shape[0]:
        raise ValueError(f"{len(names)} names for {k_star.shape[0]} layers")
    rows = [
        {
            "layer": i,
            "name": names[i],
            "k_star_mean": k_star[i].mean().item(),
            "k_star_min": k_star[i].min().item(),
            "k_star_max": k_star[i].max().item(),
            "m_star_mean": m_star[i].mean().item(),
            "m_star_min": m_star[i].min().item(),
            "m_star_max": m_star[i].max().item(),
            "lazy_heads": int(heads[i].sum()),
            "heads": k_star.shape[1],
            "lazy": i in lazy,
        }
        for i in range(k_star.shape[0])
    ]
    return {
        "threshold": threshold,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "max_rank": max_rank,
        "max_columns": max_columns,
        "fraction": fraction,
        "k_star": k_star,
        "m_star": m_star,
        "lazy_heads": heads,
        "lazy_layers": sorted(lazy),
        "rows": rows,
    }


@torch.no_grad()
def analyze(
    model: nn.Module,
    batch: torch.Tensor,
    threshold: float = 0.9,
    *,
    max_rank: float = MAX_RANK,
    max_columns: float | None = MAX_COLUMNS,
    fraction: float = FRACTION,
    keep_probs: bool = False,
) -> dict[str, Any]:
    """k* and m* of every head on `batch`, the token ids (B, T) the model reads (of validation windows (B, T + 1),
    `batch[:, :-1]`, as the monitor does), with the model in eval mode (every module's mode restored after).

    Returns `summarize`'s dict; with `keep_probs`, also `probs`: one (B, H, T, T) tensor per attention module
    (B * H * T^2 floats each: e.g. 8 x 16 x 1024^2 x 4 bytes = 512 MiB per layer), for `plot_attention_maps`.
    """
    raise_if(check_threshold(threshold) + check_lazy_settings(max_rank, max_columns, fraction))
    if batch.ndim != 2 or batch.dtype.is_floating_point:
        raise ValueError(f"analyze wants token ids (B, T); got {batch.dtype} of shape {tuple(batch.shape)}")
    names = [name for name, _ in attention_modules(model)]
    modes = [(m, m.training) for m in model.modules()]
    param = next(model.parameters(), None)
    batch = batch.to(param.device) if param is not None else batch
    model.eval()
    try:
        with attention_probabilities(model, None if keep_probs else partial(head_means, threshold=threshold)) as got:
            model(batch)
    finally:
        for m, training in modes:
            m.training = training
    means = [head_means(p, threshold) for p in got] if keep_probs else got
    result = summarize(
        torch.stack([k for k, _ in means]),
        torch.stack([m for _, m in means]),
        threshold=threshold,
        seq_len=batch.shape[1],
        batch_size=batch.shape[0],
        names=names,
        max_rank=max_rank,
        max_columns=max_columns,
        fraction=fraction,
    )
    if keep_probs:
        result["probs"] = got
    return result


def format_table(result: dict[str, Any]) -> str:
    """A plain aligned text table of `analyze`'s result, one line per layer, lazy layers marked `lazy`."""
    columns = ["layer", "module", "k* mean", "k* min", "k* max", "m* mean", "m* min", "m* max", "lazy heads", ""]
    lines = [
        [
            str(r["layer"]),
            r["name"],
            *(f"{r[f'{s}_star_{x}']:.2f}" for s in "km" for x in ("mean", "min", "max")),
            f"{r['lazy_heads']}/{r['heads']}",
            "lazy" if r["lazy"] else "",
        ]
        for r in result["rows"]
    ]
    widths = [max(len(c), *(len(line[j]) for line in lines)) for j, c in enumerate(columns)]
    left = {1, len(columns) - 1}  # the module name and the mark read left to right; numbers align right

    def render(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if j in left else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    columns_rule = "" if result["max_columns"] is None else f" or mean m* <= {result['max_columns']:g}"
    lazy = result["lazy_layers"]
    return "\n".join(
        [
            f"attention degeneration (Inheritune §2): {result['batch_size']} sequences x {result['seq_len']} tokens, "
            f"threshold {result['threshold']:g}",
            f"lazy head: mean k* <= {result['max_rank']:g}{columns_rule}; "
            f"lazy layer: at least {result['fraction']:.0%} of its heads lazy",
            render(columns),
            *(render(line) for line in lines),
            f"lazy layers: {', '.join(map(str, lazy)) if lazy else 'none'} ({len(lazy)} of {len(lines)})",
        ]
    )


# -- plots ------------------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _draw_heatmap(fig, ax, matrix: torch.Tensor, title: str, lazy: list[int]) -> None:
    """A layer x head heatmap of `matrix` (L, H), values written in the cells while they fit, lazy layers starred."""
    values = matrix.detach().double().cpu().numpy()
    image = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax)
    L, H = values.shape
    ax.set_title(title)
    ax.set_xlabel("head")
    ax.set_ylabel("layer (* lazy)")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L), [f"{i}*" if i in lazy else str(i) for i in range(L)])
    if L * H <= 400:
        middle = (values.max() + values.min()) / 2
        for i in range(L):
            for j in range(H):
                color = "black" if values[i, j] > middle else "white"
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=7, color=color)


def _titles(result: dict[str, Any]) -> tuple[str, str]:
    share = f"{result['threshold']:.0%}"
    return f"k* (rank for {share} of the variance)", f"m* (columns for {share} of the mass)"


def plot_heatmaps(result: dict[str, Any], path: str | Path) -> Path:
    """k* and m* as layer x head heatmaps side by side (the paper's Fig. 9 per head), written as a PNG."""
    k_title, m_title = _titles(result)
    L, H = result["k_star"].shape
    fig = _figure(4 + 0.8 * H, 1.5 + 0.35 * L)
    axes = fig.subplots(1, 2)
    _draw_heatmap(fig, axes[0], result["k_star"], k_title, result["lazy_layers"])
    _draw_heatmap(fig, axes[1], result["m_star"], m_title, result["lazy_layers"])
    fig.suptitle(f"{result['batch_size']} sequences x {result['seq_len']} tokens (mean over the batch)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def heatmap_image(matrix: torch.Tensor, title: str, lazy: list[int] = ()) -> np.ndarray:
    """One layer x head heatmap rendered as an RGB image (height, width, 3) uint8, for TensorBoard's add_image."""
    L, H = matrix.shape
    fig = _figure(2.5 + 0.5 * H, 1.2 + 0.3 * L)
    _draw_heatmap(fig, fig.subplots(), matrix, title, list(lazy))
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def plot_attention_maps(
    probs_by_layer: list[torch.Tensor], layers: list[int], path: str | Path, *, sequence: int = 0, heads: int = 2
) -> Path:
    """The paper's Fig. 1: one row per layer in `layers` (e.g. an early and a deep one), showing sequence
    `sequence`'s attention averaged over the heads, then its first `heads` heads; written as a PNG.

    probs_by_layer: one (B, H, T, T) tensor per attention module (`analyze(..., keep_probs=True)["probs"]`).
    """
    n = len(probs_by_layer)
    problems = [f"layers: {i} is not an attention layer index in [0, {n})" for i in layers if not 0 <= i < n]
    if not layers:
        problems.append("layers: give at least one layer index, e.g. [1, n_layer - 1] (an early and a deep layer)")
    if n and not 0 <= sequence < probs_by_layer[0].shape[0]:
        problems.append(f"sequence={sequence} is not in the batch of {probs_by_layer[0].shape[0]}")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 0:
        problems.append(f"heads={heads!r} must be an integer >= 0 (individual heads shown beside the mean)")
    raise_if(problems)
    shown = min(heads, min(probs_by_layer[i].shape[1] for i in layers))
    fig = _figure(3 * (1 + shown), 2.8 * len(layers))
    axes = np.asarray(fig.subplots(len(layers), 1 + shown, squeeze=False))
    for row, i in enumerate(layers):
        maps = probs_by_layer[i][sequence].detach().float().cpu()  # (H, T, T)
        panels = [(maps.mean(0), f"layer {i}: mean of {maps.shape[0]} heads")]
        panels += [(maps[h], f"layer {i}: head {h}") for h in range(shown)]
        for ax, (attn, title) in zip(axes[row], panels, strict=True):
            image = ax.imshow(attn.numpy(), cmap="viridis", vmin=0.0, interpolation="nearest")
            fig.colorbar(image, ax=ax)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("key")
            ax.set_ylabel("query")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


__all__ = ["analyze", "format_table", "heatmap_image", "plot_attention_maps", "plot_heatmaps", "summarize"]
