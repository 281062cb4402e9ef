"""Optimizers, LR schedules (pure functions of the step) and, later, weight averaging."""

from lm_lab.optim.optimizers import OptimizerConfig, build_optimizer, param_groups
from lm_lab.optim.schedules import SchedulerConfig, cosine, lr_multiplier, warmup

__all__ = ["OptimizerConfig", "SchedulerConfig", "build_optimizer", "cosine", "lr_multiplier", "param_groups", "warmup"]
