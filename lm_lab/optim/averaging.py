"""Weight averaging (EMA or SWA, Hägele et al. 2024 §5): `AveragingConfig`, its settings checked in one place, and
`WindowedSWA`, the windowed mean of their code, as plain tensor arithmetic (no Lightning).

The callback that applies them is `callbacks.AveragedWeights`; `lm_lab.config` checks a configured one with
`AveragingConfig.problems` before any work.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from lm_lab.errors import CheckedSettings, ConfigError, raise_if


@dataclass
class AveragingConfig(CheckedSettings):
    kind: str = "ema"
    """`ema` (w <- decay * w + (1 - decay) * theta) or `swa` (an equal-weight mean of the weights averaged in)."""
    decay: float = 0.999
    """`ema`: the decay per averaged update."""
    start_step: int = 0
    """Average from this optimizer step on (e.g. the end of warmup); SWA windows are counted from it."""
    every_n_steps: int = 1
    """Average every this many optimizer steps (for windowed SWA: Hägele et al.'s `wa_interval`, 5 in their code)."""
    horizon: int | None = None
    """`swa`: restart the mean every this many optimizer steps and score the latest completed window (Hägele et
    al.'s `wa_horizon`, 500 in their code; a multiple of `every_n_steps`); None: one cumulative mean from
    `start_step` on."""
    windows: int = 1
    """Windowed `swa`: score the mean of the last this many completed windows (their `wa_sweep_horizon`'s n), i.e.
    of the last `windows * horizon` steps."""
    label: str | None = None
    """The average's name in `val/loss_<label>` and in checkpoints; None: the kind. Name one to run two averages of
    one kind side by side (results.json records `val/loss_ema` and `val/loss_swa` only)."""

    def __post_init__(self) -> None:
        raise_if(self._problems("AveragedWeights"))

    def _problems(self, where: str) -> list[str]:
        found = []
        if self.kind not in ("ema", "swa"):
            found.append(f"{where}.kind={self.kind!r} is unknown; use ema or swa")
        if isinstance(self.decay, bool) or not (isinstance(self.decay, float | int) and 0 < self.decay < 1):
            found.append(f"{where}.decay={self.decay!r} must be in (0, 1), e.g. 0.999")
        interval_ok = _int_at_least(self.every_n_steps, 1)
        if not interval_ok:
            found.append(f"{where}.every_n_steps={self.every_n_steps!r} must be an integer >= 1")
        if not _int_at_least(self.start_step, 0):
            found.append(f"{where}.start_step={self.start_step!r} must be an integer >= 0")
        h = self.horizon
        if h is not None:
            if self.kind == "ema":
                found.append(f"{where}.horizon={h!r} is for kind=swa (windowed means); an EMA has none, remove it")
            elif not _int_at_least(h, 1):
                found.append(
                    f"{where}.horizon={h!r} must be a positive integer (steps per window) or null (cumulative)"
                )
            elif interval_ok and h % self.every_n_steps != 0:
                found.append(
                    f"{where}.horizon={h} must be a multiple of every_n_steps={self.every_n_steps}, so that every "
                    f"window holds the same number of samples"
                )
        if not _int_at_least(self.windows, 1):
            found.append(f"{where}.windows={self.windows!r} must be an integer >= 1")
        elif self.windows > 1 and h is None:
            found.append(f"{where}.windows={self.windows} averages completed windows: set a horizon, or windows=1")
        if self.label is not None and not (isinstance(self.label, str) and re.fullmatch(r"\w+", self.label)):
            found.append(f"{where}.label={self.label!r} must be letters, digits and _ (it names val/loss_<label>)")
        return found


def _int_at_least(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


class WindowedSWA:
    """Equal-weight means over consecutive windows of `horizon` steps, as in Hägele et al.'s code
    (epfml/schedules-and-scaling, `src/optim/weight_averaging.py`, `WeightAverager`).

    Steps t count from the averaging's start (t = 0 is its first step). Window k samples the weights after steps
    t = k*horizon, k*horizon + interval, ..., (k+1)*horizon - interval (the mean restarts at its first sample)
    and completes after step (k+1)*horizon - 1. `scored()` is the mean of the last `windows` completed windows
    (of all completed ones while fewer have), which, the windows being of one size, is the mean of every sample
    of the last `windows * horizon` steps; None until the first window completes (their code scores nothing
    then). Weights are dicts of tensors (a model's parameters); the state is tensors and numbers, for checkpoints
    (restored, a run continues its windows exactly; started without it in mid-window, its first window is short).
    """

    def __init__(self, horizon: int, interval: int = 1, windows: int = 1):
        if horizon % interval:
            raise ValueError(f"interval {interval} must divide horizon {horizon}")
        self.horizon, self.interval, self.windows = horizon, interval, windows
        self.running: dict[str, torch.Tensor] | None = None
        """The open window's mean so far (None between a window's end and the next one's first sample)."""
        self.count = 0
        """Samples in `running`."""
        self.completed: list[dict[str, torch.Tensor]] = []
        """The last `windows` completed windows' means, oldest first."""
        self.closed = 0
        """Windows completed in all."""

    @torch.no_grad()
    def update(self, t: int, weights: Mapping[str, torch.Tensor]) -> bool:
        """After step t: sample `weights` if t is a sampling step; True when t completes a window."""
        if t % self.interval == 0:
            if self.running is None:  # a window's first sample: the previous window completed at t - 1
                self.running, self.count = {k: w.detach().clone() for k, w in weights.items()}, 1
            else:
                self.count += 1
                for k, w in weights.items():
                    mean = self.running[k]
                    if mean.is_floating_point():
                        mean.lerp_(w, 1 / self.count)  # their code's rate: mean + (w - mean) / count
                    else:
                        mean.copy_(w)
        if (t + 1) % self.horizon or self.running is None:
            return False
        self.completed = [*self.completed, self.running][-self.windows :]
        self.running, self.count = None, 0
        self.closed += 1
        return True

    def scored(self) -> dict[str, torch.Tensor] | None:
        """The mean of the last `windows` completed windows (a new dict), or None before the first completes."""
        if not self.completed:
            return None
        mean = {k: v.clone() for k, v in self.completed[-1].items()}
        for n, window in enumerate(reversed(self.completed[:-1]), start=2):  # newest first, as their sweep
            for k, v in window.items():
                if v.is_floating_point():
                    mean[k].lerp_(v, 1 / n)
        return mean

    def to(self, device: torch.device | str) -> WindowedSWA:
        for means in ([self.running] if self.running is not None else []) + self.completed:
            for k, v in means.items():
                means[k] = v.to(device)
        return self

    def state_dict(self) -> dict:
        return {
            "horizon": self.horizon,
            "interval": self.interval,
            "running": self.running,
            "count": self.count,
            "completed": list(self.completed),
            "closed": self.closed,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved state; its horizon and interval must be this one's (the number of windows may change)."""
        if (state["horizon"], state["interval"]) != (self.horizon, self.interval):
            raise ConfigError(
                f"the checkpoint's windowed SWA has horizon={state['horizon']}, every_n_steps={state['interval']}, "
                f"this run's horizon={self.horizon}, every_n_steps={self.interval}: keep them, or give this average "
                f"another label (a fresh one)"
            )
        self.running, self.count = state["running"], state["count"]
        self.completed, self.closed = list(state["completed"])[-self.windows :], state["closed"]
