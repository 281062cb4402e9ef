"""The one training objective of the family: mean next-token cross-entropy plus the model's auxiliary losses."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Loss(NamedTuple):
    total: torch.Tensor
    """What training minimises: `lm` plus `aux`."""
    lm: torch.Tensor
    """Mean next-token cross-entropy in nats: what validation reports."""
    aux: torch.Tensor | None
    """The weighted auxiliary losses (MoE load balancing and router z-loss), None for a model without any."""


def next_token_loss(model: nn.Module, batch: torch.Tensor) -> Loss:
    """The loss of a (B, T + 1) batch of token windows: inputs batch[:, :-1], targets batch[:, 1:]."""
    logits = model(batch[:, :-1])  # (B, T, V)
    lm = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    aux = model.aux_loss() if hasattr(model, "aux_loss") else None
    return Loss(lm if aux is None else lm + aux, lm, aux)
