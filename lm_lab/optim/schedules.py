"""Learning-rate schedules as pure functions of the step, each a multiplier of the peak LR, composed with a
linear warmup, following Hägele et al. 2024 and their code (epfml/schedules-and-scaling, `src/optim/utils.py`).

`Schedule` wraps them for `torch.optim.lr_scheduler.LambdaLR`, which applies `multiplier(k)` to update k
(0-based). Its state is the step count plus, with reduce-on-plateau, three numbers: a restored scheduler gives
the same next values. Because a WSD cooldown is a pure function of (step, total, cooldown length), a cooldown
forked from step k of a constant-LR run reproduces exactly the LR sequence of one WSD run whose cooldown
starts at k.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from lm_lab.errors import raise_if

SCHEDULES = ("constant", "linear", "cosine", "wsd", "cosine_restarts")
COOLDOWN_SHAPES = ("linear", "1-sqrt", "cosine", "mirror_cosine", "square", "exp")


@dataclass
class SchedulerConfig:
    """The LR schedule; its horizon is the run's `train.max_steps`."""

    name: str = "cosine"
    """`constant`, `linear` (to `final_lr_frac`), `cosine` (to `final_lr_frac`), `wsd` (warmup-stable-decay:
    constant, then a cooldown) or `cosine_restarts` (SGDR, Loshchilov & Hutter 2017)."""
    warmup_steps: int = 40
    """Linear warmup to the peak LR (the main job's 40; Hägele et al. 2024 use 300 for most runs, see
    conf/recipe/hagele.yaml)."""
    warmup_start_frac: float = 0.01
    """LR at the first step as a fraction of the peak (their code: max_lr / init_div_factor, 100)."""
    final_lr_frac: float = 0.1
    """LR at the end as a fraction of the peak: 10% for cosine (Hägele et al. §2); their WSD cools down to 0."""
    cooldown_frac: float = 0.2
    """`wsd`: cooldown length as a fraction of the run (20% matches cosine, Hägele et al. §3)."""
    cooldown_steps: int | None = None
    """`wsd`: cooldown length in steps (overrides cooldown_frac); with `init=fork` the run's length is
    derived from it: a cooldown fork of N steps from step k ends at k + N."""
    cooldown_shape: str = "1-sqrt"
    """`wsd`: `1-sqrt` (best in Hägele et al. §3), `linear`, `cosine`, `mirror_cosine`, `square` or `exp`."""
    restart_steps: int = 1000
    """`cosine_restarts`: length of the first cycle after warmup."""
    restart_mult: float = 1.0
    """`cosine_restarts`: each cycle is this many times longer than the previous one."""
    plateau_factor: float | None = None
    """Reduce-on-plateau, composed with any schedule: multiply the LR by this factor whenever the validation
    loss has not improved for `plateau_patience` validations (None: off)."""
    plateau_patience: int = 3
    plateau_threshold: float = 1e-3
    """Relative improvement of the validation loss that counts as progress."""

    def __post_init__(self) -> None:
        problems = []
        if self.name not in SCHEDULES:
            problems.append(f"scheduler.name={self.name!r} is unknown; choose one of {list(SCHEDULES)}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            problems.append(f"scheduler.warmup_steps={self.warmup_steps!r} must be an integer >= 0")
        for name in ("warmup_start_frac", "final_lr_frac"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"scheduler.{name}={getattr(self, name)!r} must be in [0, 1]")
        if self.cooldown_shape not in COOLDOWN_SHAPES:
            problems.append(
                f"scheduler.cooldown_shape={self.cooldown_shape!r} is unknown; choose one of {list(COOLDOWN_SHAPES)}"
            )
        elif self.name == "wsd" and self.cooldown_shape == "exp" and self.final_lr_frac <= 0:
            problems.append("scheduler.cooldown_shape=exp decays to final_lr_frac, which must then be > 0, e.g. 0.01")
        if not 0 < self.cooldown_frac <= 1:
            problems.append(f"scheduler.cooldown_frac={self.cooldown_frac!r} must be in (0, 1]")
        if self.cooldown_steps is not None and (not isinstance(self.cooldown_steps, int) or self.cooldown_steps < 1):
            problems.append(f"scheduler.cooldown_steps={self.cooldown_steps!r} must be a positive integer or null")
        if self.restart_steps < 1 or self.restart_mult < 1:
            problems.append("scheduler.restart_steps must be >= 1 and scheduler.restart_mult >= 1")
        if self.plateau_factor is not None and not 0 < self.plateau_factor < 1:
            problems.append(
                f"scheduler.plateau_factor={self.plateau_factor!r} must be in (0, 1), e.g. 0.5 (or null: off)"
            )
        raise_if(problems)

    def cooldown_length(self, total_steps: int) -> int:
        """WSD cooldown steps: `cooldown_steps`, else int(cooldown_frac * total) as in Hägele et al.'s code."""
        return self.cooldown_steps if self.cooldown_steps is not None else int(self.cooldown_frac * total_steps)


# -- the pure functions ------------------------------------------------------------------------------------


def warmup(step: int, warmup_steps: int, start_frac: float) -> float:
    """Linear from `start_frac` at step 0 to 1 at `warmup_steps` (Hägele et al.'s code: step / n_warmup +
    (1 - step / n_warmup) / init_div_factor)."""
    if step >= warmup_steps:
        return 1.0
    progress = step / warmup_steps
    return start_frac + (1 - start_frac) * progress


def linear(step: int, *, warmup_steps: int, total_steps: int, final_lr_frac: float, start_frac: float = 0.01) -> float:
    if step < warmup_steps:
        return warmup(step, warmup_steps, start_frac)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_lr_frac + (1 - final_lr_frac) * (1 - progress)


def cosine(step: int, *, warmup_steps: int, total_steps: int, final_lr_frac: float, start_frac: float = 0.01) -> float:
    """Warmup, then cosine from 1 at `warmup_steps` to `final_lr_frac` at `total_steps` (and after)."""
    if step < warmup_steps:
        return warmup(step, warmup_steps, start_frac)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_lr_frac + (1 - final_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def cooldown(t: float, shape: str, final_lr_frac: float) -> float:
    """The cooldown's multiplier at fraction t in [0, 1] of it; 1 at t = 0 and `final_lr_frac` at t = 1.

    The shapes of Hägele et al. §3 (their code's decay_type): linear, 1-sqrt (`sqrt`), cosine, mirror_cosine
    (`miror_cosine`: twice linear minus cosine), square (1 - t^2) and exp (final^t).
    """
    f = final_lr_frac
    if shape == "exp":
        return f**t
    lin = 1 - t
    cos = 0.5 * (1 + math.cos(math.pi * t))
    g = {"linear": lin, "1-sqrt": 1 - math.sqrt(t), "cosine": cos, "mirror_cosine": 2 * lin - cos, "square": 1 - t * t}[
        shape
    ]
    return f + (1 - f) * g


def wsd(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int,
    cooldown_steps: int,
    shape: str,
    final_lr_frac: float,
    start_frac: float = 0.01,
) -> float:
    """Warmup-stable-decay: warmup, hold at 1 until `total_steps - cooldown_steps`, then the cooldown."""
    if step < warmup_steps:
        return warmup(step, warmup_steps, start_frac)
    hold_until = total_steps - cooldown_steps
    if step < hold_until:
        return 1.0
    if step >= total_steps:
        return final_lr_frac
    return cooldown((step - hold_until) / cooldown_steps, shape, final_lr_frac)


def cosine_restarts(
    step: int, *, warmup_steps: int, period: int, mult: float, final_lr_frac: float, start_frac: float = 0.01
) -> float:
    """SGDR (Loshchilov & Hutter 2017): cosine cycles from 1 to `final_lr_frac`, each `mult` times longer."""
    if step < warmup_steps:
        return warmup(step, warmup_steps, start_frac)
    t, length = step - warmup_steps, period
    while t >= length:
        t -= length
        length = max(1, round(length * mult))
    return final_lr_frac + (1 - final_lr_frac) * 0.5 * (1 + math.cos(math.pi * t / length))


# -- the scheduler object ----------------------------------------------------------------------------------


class Schedule:
    """`step -> multiplier` of one config over `total_steps`, for LambdaLR; with reduce-on-plateau, `observe`
    the validation loss. Only plain data in `__dict__`: LambdaLR saves it in checkpoints (weights_only-safe)."""

    def __init__(self, cfg: SchedulerConfig, total_steps: int):
        self.cfg = asdict(cfg)
        self.total_steps = total_steps
        self.cooldown_steps = cfg.cooldown_length(total_steps) if cfg.name == "wsd" else None
        self.plateau = {"scale": 1.0, "best": None, "bad": 0}

    def base(self, step: int) -> float:
        c = self.cfg  # validated when the SchedulerConfig was built
        kw = {
            "warmup_steps": c["warmup_steps"],
            "start_frac": c["warmup_start_frac"],
            "final_lr_frac": c["final_lr_frac"],
        }
        if c["name"] == "constant":
            return warmup(step, c["warmup_steps"], c["warmup_start_frac"])
        if c["name"] == "linear":
            return linear(step, total_steps=self.total_steps, **kw)
        if c["name"] == "cosine":
            return cosine(step, total_steps=self.total_steps, **kw)
        if c["name"] == "wsd":
            return wsd(
                step, total_steps=self.total_steps, cooldown_steps=self.cooldown_steps, shape=c["cooldown_shape"], **kw
            )
        return cosine_restarts(step, period=c["restart_steps"], mult=c["restart_mult"], **kw)

    def __call__(self, step: int) -> float:
        return self.base(step) * self.plateau["scale"]

    def observe(self, val_loss: float) -> bool:
        """Reduce-on-plateau: count validations without a relative improvement; True when the LR was cut."""
        factor = self.cfg["plateau_factor"]
        if factor is None or not math.isfinite(val_loss):
            return False
        p = self.plateau
        if p["best"] is None or val_loss < p["best"] * (1 - self.cfg["plateau_threshold"]):
            p["best"], p["bad"] = val_loss, 0
            return False
        p["bad"] += 1
        if p["bad"] < self.cfg["plateau_patience"]:
            return False
        p["scale"] *= factor
        p["bad"] = 0
        return True


def lr_multiplier(cfg: SchedulerConfig, total_steps: int) -> Schedule:
    """The schedule of `cfg` over `total_steps`, checked to fit in the run."""
    problems = []
    if cfg.warmup_steps > total_steps:
        problems.append(
            f"scheduler.warmup_steps={cfg.warmup_steps} exceeds train.max_steps={total_steps}; shorten the warmup"
        )
    if cfg.name == "wsd":
        length = cfg.cooldown_length(total_steps)
        if length < 1:
            problems.append(
                f"scheduler.cooldown_frac={cfg.cooldown_frac} of train.max_steps={total_steps} is no step; raise it or set scheduler.cooldown_steps"
            )
        elif cfg.warmup_steps + length > total_steps:
            problems.append(
                f"scheduler.warmup_steps={cfg.warmup_steps} + cooldown {length} steps exceed train.max_steps={total_steps}; "
                f"shorten them or lengthen the run"
            )
    raise_if(problems)
    return Schedule(cfg, total_steps)
