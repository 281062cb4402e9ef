"""The decoder family: one config dataclass, one model, pure parameter and FLOP counts."""

from lm_lab.models.config import ModelConfig
from lm_lab.models.counting import (
    active_param_count,
    chinchilla_flops_per_token,
    component_flops_per_token,
    component_params,
    embedding_params,
    flops_per_token,
    non_embedding_params,
    param_count,
)
from lm_lab.models.gpt import GPT
from lm_lab.models.loss import Loss, next_token_loss

__all__ = [
    "active_param_count",
    "component_flops_per_token",
    "component_params",
    "GPT",
    "Loss",
    "ModelConfig",
    "chinchilla_flops_per_token",
    "embedding_params",
    "next_token_loss",
    "flops_per_token",
    "non_embedding_params",
    "param_count",
]
