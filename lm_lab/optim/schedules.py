"""Learning-rate schedules as pure functions of the step, returning a multiplier of the peak LR.

Each is composed with a linear warmup. `torch.optim.lr_scheduler.LambdaLR` applies them; the step
count is its only state, so a restored scheduler gives the same next values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

from lm_lab.errors import raise_if

SCHEDULES = ("cosine",)


@dataclass
class SchedulerConfig:
    """The LR schedule; its horizon is the run's `train.max_steps`."""

    name: str = "cosine"
    """`cosine`: linear warmup, then cosine decay to `final_lr_frac` of the peak."""
    warmup_steps: int = 300
    """Linear warmup from 0 to the peak LR (Hägele et al. 2024 use 300)."""
    final_lr_frac: float = 0.1
    """LR at the end as a fraction of the peak (10%: Hägele et al. 2024 §2; Chinchilla)."""

    def __post_init__(self) -> None:
        problems = []
        if self.name not in SCHEDULES:
            problems.append(f"scheduler.name={self.name!r} is unknown; choose one of {list(SCHEDULES)}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            problems.append(f"scheduler.warmup_steps={self.warmup_steps!r} must be an integer >= 0")
        if not 0 <= self.final_lr_frac <= 1:
            problems.append(f"scheduler.final_lr_frac={self.final_lr_frac!r} must be in [0, 1]")
        raise_if(problems)


def warmup(step: int, warmup_steps: int) -> float:
    """Linear warmup: (step + 1) / warmup_steps, so the first update already has a non-zero LR."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def cosine(step: int, *, warmup_steps: int, total_steps: int, final_lr_frac: float) -> float:
    """Warmup, then cosine from 1 at `warmup_steps` to `final_lr_frac` at `total_steps` (and after)."""
    if step < warmup_steps:
        return warmup(step, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_lr_frac + (1 - final_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_multiplier(cfg: SchedulerConfig, total_steps: int):
    """The schedule of `cfg` over `total_steps` as a function step -> multiplier (picklable)."""
    if cfg.warmup_steps > total_steps:
        raise_if(
            [f"scheduler.warmup_steps={cfg.warmup_steps} exceeds train.max_steps={total_steps}; shorten the warmup"]
        )
    return partial(cosine, warmup_steps=cfg.warmup_steps, total_steps=total_steps, final_lr_frac=cfg.final_lr_frac)
