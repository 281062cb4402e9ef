"""Attention degeneration (Inheritune, Sanyal et al. 2024, §2): approximate rank k*, mass columns m*, lazy layers,
query/key gradient norms; the per-model report, its table and plots."""

from lm_lab.analysis.attention import (
    approximate_rank,
    attention_modules,
    attention_probabilities,
    degeneration,
    head_means,
    lazy_heads,
    lazy_layers,
    mass_columns,
    qk_grad_norms,
)
from lm_lab.analysis.report import analyze, format_table, heatmap_image, plot_attention_maps, plot_heatmaps, summarize

__all__ = [
    "analyze",
    "approximate_rank",
    "attention_modules",
    "attention_probabilities",
    "degeneration",
    "format_table",
    "head_means",
    "heatmap_image",
    "lazy_heads",
    "lazy_layers",
    "mass_columns",
    "plot_attention_maps",
    "plot_heatmaps",
    "qk_grad_norms",
    "summarize",
]
