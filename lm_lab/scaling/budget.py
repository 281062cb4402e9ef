"""Compute budgets (`conf/budget/`): how much a run may spend, and the step count that spends it.

- `none`: the run stops at `train.max_steps`.
- `flops` (`budget.flops=3.4e18`): `train.max_steps` = floor(budget / (FLOPs per token x tokens per step)).
- `gpu_hours` (`budget.hours=3 budget.gpu=a100 [budget.mfu=0.4]`): the FLOPs of that many hours of the GPU's dense
  bf16 peak at an assumed MFU (1.0 by default: the nominal budget, as seed 000 computes 3 h x 312 TFLOP/s), then
  as `flops`.
- `wall_clock` (`budget.hours=...` or `budget.minutes=...`): the real clock; the run measures its own step and
  validation times and stops (and cools down) on time. See `callbacks/budget.py`.

FLOPs per token are counted in one of two conventions (`budget.flop_count`): `6n` (6N + 12·L·T·d, Kaplan et al.
2020 / PaLM App. B, what MFU uses) or `chinchilla` (Hoffmann et al. 2022 App. F, what Chinchilla's and Hägele et
al.'s scaling-law FLOPs use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from lm_lab.devices import BY_KEY, lookup
from lm_lab.errors import raise_if
from lm_lab.models import ModelConfig, chinchilla_flops_per_token, flops_per_token

BUDGETS = ("none", "flops", "gpu_hours", "wall_clock")
FLOP_COUNTS = ("6n", "chinchilla")
NO_STEP_LIMIT = 10**12
"""`train.max_steps` of a wall-clock budget without `budget.max_steps`: the clock ends the run, not a step count."""


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class BudgetConfig:
    """A compute budget that sizes and stops the run (`conf/budget/`); `none`: the run stops at train.max_steps."""

    name: str = "none"
    """`none`, `flops`, `gpu_hours` or `wall_clock` (`a100_3h` is `gpu_hours` with hours=3, gpu=a100)."""
    flops: float | None = None
    """`flops`: the training FLOPs the run may spend, in the `flop_count` convention."""
    hours: float | None = None
    """`gpu_hours`: GPU-hours (summed over GPUs); `wall_clock`: hours of real time."""
    minutes: float | None = None
    """`wall_clock`: minutes of real time (instead of `hours`)."""
    gpu: str | None = None
    """`gpu_hours`: the GPU the hours are on, a key of the device table (`a100`, `h100_sxm`, `h200`, ...)."""
    mfu: float = 1.0
    """`gpu_hours`: the model FLOPs utilisation assumed; 1.0 is the nominal budget (hours x peak)."""
    peak_tflops: float | None = None
    """Dense peak TFLOP/s of the GPU, overriding the device table: for a `gpu_hours` budget and for MFU."""
    flop_count: str = "6n"
    """FLOPs per token: `6n` (6N + 12·L·T·d, what MFU uses) or `chinchilla` (Hoffmann et al. 2022 App. F)."""
    max_steps: int | None = None
    """`wall_clock`: an upper bound on the steps (None: the clock alone ends the run)."""
    calibration_steps: int = 20
    """`wall_clock` with a cosine or linear schedule: steps timed before the schedule's horizon is fixed."""

    def __post_init__(self) -> None:
        problems = []
        name = self.name
        if name not in BUDGETS:
            raise_if([f"budget.name={name!r} is unknown; choose one of {[*BUDGETS, 'a100_3h']} (budget=NAME)"])
        uses = {
            "flops": name == "flops",
            "hours": name in ("gpu_hours", "wall_clock"),
            "minutes": name == "wall_clock",
            "gpu": name == "gpu_hours",
            "max_steps": name == "wall_clock",
        }
        for key, used in uses.items():
            if not used and getattr(self, key) is not None:
                problems.append(f"budget.{key} is not a setting of budget={name}; remove it or pick another budget")
        if name != "gpu_hours" and self.mfu != 1.0:
            problems.append(f"budget.mfu is for budget=gpu_hours, not budget={name}; remove it")
        if name == "flops" and self.flops is None:
            problems.append("budget=flops needs budget.flops, the FLOPs the run may spend (e.g. budget.flops=3.4e18)")
        elif name == "flops" and not (_number(self.flops) and self.flops > 0):
            problems.append(f"budget.flops={self.flops!r} must be a positive number of FLOPs, e.g. budget.flops=3.4e18")
        if name == "gpu_hours":
            if self.hours is None:
                problems.append("budget=gpu_hours needs budget.hours, the GPU-hours the run may spend (e.g. 3)")
            elif not (_number(self.hours) and self.hours > 0):
                problems.append(f"budget.hours={self.hours!r} must be a positive number of GPU-hours, e.g. 3")
            if self.gpu is None and self.peak_tflops is None:
                problems.append(f"budget=gpu_hours needs budget.gpu (one of {sorted(BY_KEY)}) or budget.peak_tflops")
            elif self.gpu is not None and lookup(str(self.gpu)) is None:
                problems.append(
                    f"budget.gpu={self.gpu!r} is not in the device table; choose one of {sorted(BY_KEY)} "
                    f"or give budget.peak_tflops"
                )
            elif self.gpu is not None and self.peak_tflops is None and lookup(str(self.gpu)).bf16 is None:
                problems.append(
                    f"budget.gpu={self.gpu!r} has no bf16 peak in the device table; give budget.peak_tflops"
                )
            if not (_number(self.mfu) and 0 < self.mfu <= 1):
                problems.append(f"budget.mfu={self.mfu!r} must be in (0, 1], e.g. 0.4")
        if name == "wall_clock":
            given = [k for k in ("hours", "minutes") if getattr(self, k) is not None]
            if len(given) != 1:
                problems.append("budget=wall_clock needs exactly one of budget.hours and budget.minutes")
            elif not (_number(getattr(self, given[0])) and getattr(self, given[0]) > 0):
                problems.append(f"budget.{given[0]}={getattr(self, given[0])!r} must be a positive number")
            if self.max_steps is not None and not (isinstance(self.max_steps, int) and self.max_steps > 0):
                problems.append(f"budget.max_steps={self.max_steps!r} must be a positive integer or null")
        if self.peak_tflops is not None and not (_number(self.peak_tflops) and self.peak_tflops > 0):
            problems.append(f"budget.peak_tflops={self.peak_tflops!r} must be a positive number of TFLOP/s")
        if self.flop_count not in FLOP_COUNTS:
            problems.append(f"budget.flop_count={self.flop_count!r} is unknown; choose one of {list(FLOP_COUNTS)}")
        if not (isinstance(self.calibration_steps, int) and self.calibration_steps >= 2):
            problems.append(f"budget.calibration_steps={self.calibration_steps!r} must be an integer >= 2")
        raise_if(problems)

    @property
    def counts_flops(self) -> bool:
        """A budget of FLOPs (given, or from GPU-hours): the step count follows from it before the run starts."""
        return self.name in ("flops", "gpu_hours")

    @property
    def seconds(self) -> float | None:
        """A wall-clock budget in seconds."""
        if self.name != "wall_clock":
            return None
        return self.hours * 3600.0 if self.hours is not None else self.minutes * 60.0

    def peak(self) -> tuple[float, str]:
        """(dense bf16 peak in TFLOP/s, where it comes from) of a gpu_hours budget."""
        if self.peak_tflops is not None:
            return float(self.peak_tflops), "budget.peak_tflops"
        device = lookup(str(self.gpu))
        return device.peak_tflops("bf16"), f"{device.key} dense bf16, {device.source}"

    def overrides(self) -> list[str]:
        """The run.py overrides that state this budget (its settings that differ from the defaults)."""
        out = [f"budget={self.name}"]
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "name" and value != f.default:
                out.append(f"budget.{f.name}={value!r}" if isinstance(value, float) else f"budget.{f.name}={value}")
        if self.name == "gpu_hours" and self.gpu is None:
            out.append("budget.gpu=null")  # conf/budget/gpu_hours.yaml asks for one
        return out

    def total_flops(self) -> float | None:
        """The budget in FLOPs (None for `none` and `wall_clock`)."""
        if self.name == "flops":
            return float(self.flops)
        if self.name == "gpu_hours":
            return self.hours * 3600.0 * self.peak()[0] * 1e12 * self.mfu
        return None


def token_flops(model: ModelConfig, seq_len: int, flop_count: str = "6n") -> float:
    """Training FLOPs per token in one of the two conventions."""
    if flop_count == "chinchilla":
        return chinchilla_flops_per_token(model, seq_len)  # Hoffmann et al. 2022 App. F
    return float(flops_per_token(model, seq_len))  # 6N + 12·L·T·d (Kaplan et al. 2020 §2.1, PaLM App. B)


def steps_for(flops: float, per_token: float, tokens_per_step: int) -> int:
    """The most optimizer steps a FLOP budget pays for: floor(budget / (FLOPs per token x tokens per step))."""
    return math.floor(flops / (per_token * tokens_per_step))


def budget_steps(budget: BudgetConfig, model: ModelConfig, seq_len: int, tokens_per_step: int) -> int | None:
    """`train.max_steps` a budget derives: from its FLOPs, the wall-clock cap, or None (no budget)."""
    if budget.counts_flops:
        return steps_for(budget.total_flops(), token_flops(model, seq_len, budget.flop_count), tokens_per_step)
    if budget.name == "wall_clock":
        return budget.max_steps or NO_STEP_LIMIT
    return None


def describe(budget: BudgetConfig, model: ModelConfig, seq_len: int, tokens_per_step: int) -> str:
    """The derivation of a budget's step count, one line for the run's log."""
    if budget.name == "wall_clock":
        limit = f"at most {budget.max_steps} steps" if budget.max_steps else "no step limit"
        return (
            f"budget wall_clock: {budget.seconds:g} s of real time (validation and checkpoints included, over every "
            f"restart); {limit}; the run times its steps and stops before the one that would overshoot"
        )
    if not budget.counts_flops:
        return "no budget: the run stops at train.max_steps"
    flops, per_token = budget.total_flops(), token_flops(model, seq_len, budget.flop_count)
    steps = steps_for(flops, per_token, tokens_per_step)
    source = f"{flops:.4g} FLOPs"
    if budget.name == "gpu_hours":
        peak, where = budget.peak()
        source = f"{budget.hours:g} GPU-h x 3600 s x {peak:g} TFLOP/s ({where}) x MFU {budget.mfu:g} = {source}"
    convention = "6N + 12LTd" if budget.flop_count == "6n" else "Chinchilla App. F"
    return (
        f"budget {budget.name}: {source} / ({per_token:.4g} FLOPs/token [{convention}] x {tokens_per_step:,} tokens/step)"
        f" = {steps:,} steps (train.max_steps; the LR schedule's horizon)"
    )


def clock_cost(
    step: int, n: int, *, step_seconds: float, val_seconds: float, final_seconds: float, val_every: int
) -> float:
    """Seconds from the boundary after `step` to the end of a run that takes `n` more steps: n steps, a validation
    at every multiple of `val_every` in [step, step + n) (the one due after `step` included), the final one."""
    middle = (step + n - 1) // val_every - (step - 1) // val_every
    return n * step_seconds + middle * val_seconds + final_seconds


def clock_steps(step: int, seconds: float, **times: float) -> int:
    """The most steps after `step` whose `clock_cost` fits in `seconds` (0 when not even one does)."""
    lo, hi = 0, max(1, int(seconds / times["step_seconds"]) + 1)
    while lo < hi:  # the cost grows with n
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if clock_cost(step, mid, **times) <= seconds else (lo, mid - 1)
    return lo
