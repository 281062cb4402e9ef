"""`AveragingConfig`: the settings of weight averaging (EMA or SWA, Hägele et al. 2024 §5), checked in one place.

The callback that applies them is `callbacks.AveragedWeights`; `lm_lab.config` checks a configured one with
`AveragingConfig.problems` before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from lm_lab.errors import raise_if


@dataclass
class AveragingConfig:
    kind: str = "ema"
    """`ema` (w <- decay * w + (1 - decay) * theta) or `swa` (the equal-weight mean of every update averaged in)."""
    decay: float = 0.999
    """`ema`: the decay per averaged update."""
    start_step: int = 0
    """Average from this optimizer step on (e.g. the end of warmup)."""
    every_n_steps: int = 1
    """Average every this many optimizer steps."""

    def __post_init__(self) -> None:
        raise_if(self._problems("AveragedWeights"))

    def _problems(self, where: str) -> list[str]:
        found = []
        if self.kind not in ("ema", "swa"):
            found.append(f"{where}.kind={self.kind!r} is unknown; use ema or swa")
        if isinstance(self.decay, bool) or not (isinstance(self.decay, float | int) and 0 < self.decay < 1):
            found.append(f"{where}.decay={self.decay!r} must be in (0, 1), e.g. 0.999")
        if isinstance(self.every_n_steps, bool) or not (
            isinstance(self.every_n_steps, int) and self.every_n_steps >= 1
        ):
            found.append(f"{where}.every_n_steps={self.every_n_steps!r} must be an integer >= 1")
        if isinstance(self.start_step, bool) or not (isinstance(self.start_step, int) and self.start_step >= 0):
            found.append(f"{where}.start_step={self.start_step!r} must be an integer >= 0")
        return found

    @classmethod
    def problems(cls, where: str, values: dict) -> list[str]:
        """What is wrong with these settings, each naming the field at `where` (e.g. `callbacks.ema`)."""
        known = [f.name for f in fields(cls)]
        unknown = [f"{where}.{k} is not a setting; use {', '.join(known)}" for k in values if k not in known]
        if unknown:
            return unknown
        config = cls.__new__(cls)  # the fields without __post_init__: report with this `where`
        for f in fields(cls):
            setattr(config, f.name, values.get(f.name, f.default))
        return config._problems(where)
