"""Guards against silent damage during training: non-finite losses or gradients, and loss spikes.

Pure logic, no Lightning: `LMModule` applies the non-finite policy, `callbacks.LossSpikes` the detector.
"""

from __future__ import annotations

import math


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient norm under `train.on_nonfinite=stop` (or too many skipped in a row)."""


class StopRequested(Exception):
    """Raised at a step boundary, right after the checkpoint, when SIGTERM or SIGINT asked the run to stop."""


class SpikeDetector:
    """Flags values far above their recent history: x > mean + k * std and x > (1 + min_rise) * mean, over an
    exponential moving average with time constant `window` steps. The first `warmup` values only feed the
    averages (early training falls fast and is noisy)."""

    def __init__(self, window: int = 100, k: float = 6.0, min_rise: float = 0.1, warmup: int = 50):
        self.alpha = 2.0 / (window + 1)
        self.k, self.min_rise, self.warmup = k, min_rise, warmup
        self.mean: float | None = None
        self.var = 0.0
        self.seen = 0

    def update(self, x: float) -> bool:
        """Add one value; return whether it is a spike (spikes do not move the averages)."""
        if not math.isfinite(x):
            return False  # the non-finite guard handles these
        self.seen += 1
        if self.mean is None:
            self.mean = x
            return False
        spike = (
            self.seen > self.warmup
            and x > self.mean + self.k * math.sqrt(self.var)
            and x > (1 + self.min_rise) * self.mean
        )
        if not spike:
            delta = x - self.mean
            self.mean += self.alpha * delta
            self.var = (1 - self.alpha) * (self.var + self.alpha * delta * delta)
        return spike

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.seen = state["mean"], state["var"], state["seen"]
