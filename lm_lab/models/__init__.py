"""The decoder family: one config dataclass, one model, pure parameter and FLOP counts."""

from lm_lab.models.config import ModelConfig
from lm_lab.models.counting import (
    chinchilla_flops_per_token,
    embedding_params,
    flops_per_token,
    non_embedding_params,
    param_count,
)
from lm_lab.models.gpt import GPT

__all__ = [
    "GPT",
    "ModelConfig",
    "chinchilla_flops_per_token",
    "embedding_params",
    "flops_per_token",
    "non_embedding_params",
    "param_count",
]
