"""Inheritune and its baselines: weight surgery on state dicts (`surgery.py`), the grow loop (`grow.py`)."""

from lm_lab.inherit.surgery import (
    MODULES,
    block_parts,
    every_other,
    half_width,
    half_width_config,
    hybrid_stack,
    inherit,
    stack,
)

__all__ = [
    "MODULES",
    "block_parts",
    "every_other",
    "half_width",
    "half_width_config",
    "hybrid_stack",
    "inherit",
    "stack",
]
