"""Optimizers, LR schedules (pure functions of the step) and their configs."""

from lm_lab.optim.optimizers import (
    HYPERPARAMETERS,
    MuonWithAdamW,
    OptimizerConfig,
    SplitMuon,
    build_optimizer,
    param_groups,
)
from lm_lab.optim.schedules import (
    Schedule,
    SchedulerConfig,
    cooldown,
    cosine,
    cosine_restarts,
    linear,
    lr_multiplier,
    warmup,
    wsd,
)

__all__ = [
    "HYPERPARAMETERS",
    "MuonWithAdamW",
    "OptimizerConfig",
    "Schedule",
    "SchedulerConfig",
    "SplitMuon",
    "build_optimizer",
    "cooldown",
    "cosine",
    "cosine_restarts",
    "linear",
    "lr_multiplier",
    "param_groups",
    "warmup",
    "wsd",
]
