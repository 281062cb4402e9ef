"""Lightning callbacks for cross-cutting concerns: each small, rank-zero logging, configured in conf/callbacks/."""

from callbacks.attention import AttentionMonitor
from callbacks.averaging import AveragedWeights
from callbacks.budget import ComputeBudget
from callbacks.checkpoint import LastCheckpoint
from callbacks.loss_spikes import LossSpikes
from callbacks.throughput import TokenThroughput

__all__ = ["AttentionMonitor", "AveragedWeights", "ComputeBudget", "LastCheckpoint", "LossSpikes", "TokenThroughput"]
