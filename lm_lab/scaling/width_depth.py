"""Width vs depth at one size: the GPT-2 shapes with equal non-embedding parameters N = 12·d²·L across depths.

Seed 000: "Given the N = 12*D^2*L, we increase the width of the model and reduce the depth to keep the number of
parameters the same". 12·d²·L is Kaplan et al. 2020 §2.1's non-embedding count: per layer 4d² of attention (Q, K,
V, output) and 8d² of a 4d-wide MLP, without biases and norms. For each depth L the width is sqrt(N / 12L) rounded
to a multiple of the head size, so n_head = d_model / head_dim is a whole number of heads; of the two multiples
around it, the one whose 12·d²·L is nearer N (N is what the study holds fixed). The rounding misses N by a few
percent, reported with each shape; a miss above `MAX_MISS` is refused.

`conf/experiment/width_depth.yaml` sweeps the depth; the model's d_model and n_head come from the OmegaConf
resolvers `register_resolvers` adds (lm_lab.config calls it on import), and each run logs its shape and count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import NamedTuple

from lm_lab.errors import ConfigError, raise_if

log = logging.getLogger(__name__)

MAX_MISS = 0.25
"""The largest relative miss |12·d²·L - N| / N a shape may have: beyond it the depth has too few heads to match N."""


class Shape(NamedTuple):
    n_layer: int
    d_model: int
    n_head: int
    params: int
    """12·d²·L, exactly."""
    miss: float
    """(params - N) / N."""


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check(params, head_dim) -> None:
    problems = []
    if isinstance(params, bool) or not isinstance(params, int | float) or not math.isfinite(params) or params <= 0:
        problems.append(f"width_depth.target_params={params!r} must be a positive number (e.g. 8.5e7)")
    if not _is_positive_int(head_dim):
        problems.append(f"width_depth.head_dim={head_dim!r} must be a positive integer (e.g. 64)")
    raise_if(problems)


def width_for(params: float, n_layer: int, head_dim: int) -> int:
    """The d_model, a positive multiple of `head_dim`, whose 12·d²·L is nearest `params`."""
    _check(params, head_dim)
    if not _is_positive_int(n_layer):
        raise ConfigError(f"width_depth.n_layer={n_layer!r} must be a positive integer (e.g. 12)")
    heads = math.sqrt(params / (12 * n_layer)) / head_dim  # the exact width, in heads
    candidates = {max(1, math.floor(heads)), max(1, math.ceil(heads))}
    best = min(candidates, key=lambda h: (abs(12 * (h * head_dim) ** 2 * n_layer - params), h))
    return best * head_dim


def shapes(params: float, depths: Iterable[int], head_dim: int, max_miss: float = MAX_MISS) -> list[Shape]:
    """One shape per depth, in the order given; every bad depth and every miss above `max_miss` in one error."""
    _check(params, head_dim)
    depths = list(depths)
    if not depths:
        raise ConfigError("width_depth: no depth given; sweep at least one, e.g. width_depth.n_layer=6,12,18,24")
    found, problems = [], []
    for n_layer in depths:
        if not _is_positive_int(n_layer):
            problems.append(f"width_depth.n_layer={n_layer!r} must be a positive integer (e.g. 12)")
            continue
        d = width_for(params, n_layer, head_dim)
        exact = 12 * d * d * n_layer
        miss = (exact - params) / params
        if abs(miss) > max_miss:
            problems.append(
                f"width_depth: at {n_layer} layers the nearest width with head size {head_dim} is d_model={d}, "
                f"whose 12·d²·L = {exact:,} misses N = {params:,.0f} by {miss:+.0%} (limit ±{max_miss:.0%}); "
                f"lower width_depth.head_dim or the depth, or raise width_depth.target_params"
            )
            continue
        found.append(Shape(n_layer, d, d // head_dim, exact, miss))
    raise_if(problems)
    return found


def table(params: float, depths: Iterable[int], head_dim: int) -> str:
    """The shapes as a fixed-width text table, one line per depth."""
    lines = [
        f"width vs depth at N = 12·d²·L = {params:,.0f} (head size {head_dim})",
        f"{'n_layer':>7} {'d_model':>7} {'n_head':>6} {'12·d²·L':>14} {'miss':>7}",
    ]
    for s in shapes(params, depths, head_dim):
        lines.append(f"{s.n_layer:>7} {s.d_model:>7} {s.n_head:>6} {s.params:>14,} {s.miss:>+7.2%}")
    return "\n".join(lines)


# -- OmegaConf resolvers (conf/experiment/width_depth.yaml) ----------------------------------------------------------


def _d_model(params, n_layer, head_dim) -> int:
    (s,) = shapes(params, [n_layer], head_dim)
    # the run's "counts printed": resolved once per run, when run.py turns the composed config into a RunConfig
    log.info(
        "width_depth: N = %s -> n_layer=%d d_model=%d n_head=%d, 12·d²·L = %s (%+.2f%%)",
        f"{params:,.0f}",
        s.n_layer,
        s.d_model,
        s.n_head,
        f"{s.params:,}",
        100 * s.miss,
    )
    return s.d_model


def _n_head(params, n_layer, head_dim) -> int:
    (s,) = shapes(params, [n_layer], head_dim)
    return s.n_head


def register_resolvers() -> None:
    """`${lm_lab.width_for:N,L,head_dim}` (d_model, logging the shape) and `${lm_lab.heads_for:N,L,head_dim}`
    (n_head). Registering again replaces them."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("lm_lab.width_for", _d_model, replace=True)
    OmegaConf.register_new_resolver("lm_lab.heads_for", _n_head, replace=True)
