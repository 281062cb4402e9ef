"""`lm-lab search`: hyperparameter search on Optuna, every trial a run of the lab at a fixed FLOP budget.

    lm-lab search --space lr_width --sampler tpe --trials 16 [--budget-flops 3e13] [--dir DIR] [--storage FILE]
                  [--study-name NAME] [--objective train | law:FIT.json] [--noise SIGMA] [--seed S] [KEY=VALUE ...]

**The space** (`conf/search/NAME.yaml`, read by `Space.load`): `params` maps run.py override keys to ranges,
`trial_flops` is every trial's compute (each trial runs with `budget=flops budget.flops=<trial_flops>`, so a
wider or deeper model trains on fewer tokens: shapes are compared at equal compute), `overrides` are run.py
overrides common to every trial; see `Space` for the format. The file is checked before anything runs, one
line per problem, and the config of its first point is composed once (an unknown key fails there).

**A trial** is a run directory `DIR/trials/<number>` trained in this process by `fit_from_config` (its stdout
goes to stderr), so `lm-lab report` reads the trials like any runs. Its value is the final `val_loss` of
results.json; the trial records `flops` (results.json's), `params`, `tokens`, `steps` and `run_dir` as user
attributes. A point the config refuses (a head count that does not divide the width, a head size off
`constraints.head_dims`, a budget that pays for no step) is PRUNED with the reason, without training; a run that
stops on a non-finite loss or fails is FAIL with its reason. Keep points valid by construction where you can
(widths a multiple of every head count): samplers learn little from pruned trials.

**Budgets**: `--trials N` is the size of the study, not of one invocation: a resumed search or a second worker
runs only the trials still missing. `--budget-flops F` caps the study's compute: a new trial is started only if
the FLOPs of the finished trials, plus `trial_flops` for each running or waiting one, plus its own
`trial_flops` fit in F. A killed trial's re-run continues its checkpoint, so its results.json counts its FLOPs
once (steps redone after the last checkpoint are not counted).

**Strategies** (`--sampler`): Optuna's `tpe`, `gp` (Gaussian-process Bayesian optimisation), `cmaes` (categorical
parameters fall back to its independent random sampler) and `random`, and two strategies of seed 002 written
here as drivers of the same study: `coordinate` (coordinate descent: one parameter at a time, a golden-section
bracketing of its grid with the others fixed, cycling until a full pass changes nothing) and `random_gradient`
(the seed's "Gradient Update Policy Optimization": a finite difference towards a random nearby point, then a
step against it; see `random_gradient`). The drivers work on a grid of each parameter (`Param.values`) and
compute their next point by replaying the strategy from its seeded start against the study's finished trials,
so they resume from storage, and a point the study already evaluated is never trained again. Optuna samplers are
re-seeded for every trial from (seed, trial number), so a search is reproducible whatever the number of workers
or restarts, and two workers with one seed do not propose the same points.

**Storage, resume and workers**: the study lives in Optuna's journal file (`DIR/study.journal` by default; works
on NFS-like shared filesystems, no server) or SQLite (`--storage FILE.db`) or any database URL. Starting the same
command again resumes the study; several workers (SLURM array tasks) given the same `--dir` share it. A lock
file in DIR (Optuna's symlink lock, NFS-safe) makes "recover dead trials, check the budgets, ask the next
point" one step across workers, so budgets are never overshot and no point is asked twice. Liveness is the
lab's own, for every storage (Optuna 5's JournalStorage has no heartbeat, and RDBStorage's is tied to
`study.optimize`): a worker records its host, pid and a heartbeat (every `heartbeat_interval` s) on its running
trial. A RUNNING trial is stale, and is failed and re-queued with the same parameters and run directory
(`retry_history` / `failed_trial` system attributes as Optuna's `RetryHeartbeatStaleTrialCallback` writes them),
when its worker ran on this machine (same hostname and boot id) under a pid that no longer exists (a killed
single-process search resumes at once), or when its heartbeat is older than `grace_period` (another machine).
A live worker's trial is never taken. The re-run resumes its run directory from `checkpoints/last.ckpt`.
Ctrl-C (or SIGTERM) saves the trial's checkpoint, re-queues it and stops the search.

**The synthetic objective** (`--objective law:FIT.json`, `law:epoch` or `law:hoffmann`): instead of training,
a trial's loss is the parametric law L(N, D) = E + A/N^alpha + B/D^beta (`lm_lab.scaling.laws`) at the trial's
parameter count N (`param_count` of the model the point describes) and its tokens D (the steps its
`trial_flops` pays for x tokens per step, exactly what a real trial would train), plus the space's `synthetic`
penalties for what the law does not know (lr, batch size, dropout), plus Gaussian noise of sd `--noise`
seeded by (seed, trial number). A synthetic trial takes a few milliseconds and trains nothing; its FLOPs are
what the real run would spend. It lets strategies be compared (best loss vs FLOPs spent:
`benchmarks/search.py`) and the search be tested in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lm_lab.errors import ConfigError, raise_if

if TYPE_CHECKING:
    import optuna
    from omegaconf import DictConfig

log = logging.getLogger("lm_lab.search")

SAMPLERS = ("tpe", "gp", "cmaes", "random", "coordinate", "random_gradient")
DRIVERS = ("coordinate", "random_gradient")
PARAM_TYPES = ("float", "int", "categorical")
PARAM_FIELDS = ("type", "low", "high", "log", "step", "choices", "grid")
SPACE_FIELDS = ("description", "trial_flops", "overrides", "params", "constraints", "synthetic")
RESERVED = ("budget", "run_dir", "train.max_steps", "ckpt_path", "hydra")
"""Settings the search sets itself (the per-trial budget and its steps, the run directory)."""
DEFAULT_GRID = 9
MAX_INT_GRID = 64
SEARCH_DIR = Path(__file__).resolve().parent.parent.parent / "conf" / "search"


# -- the search space --------------------------------------------------------------------------------------------


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Param:
    """One searched setting: a run.py override key and its range.

    `float` and `int`: `low`, `high` (inclusive), `log` (sample log-uniformly; needs low > 0), `step` (a lattice
    low, low + step, ...; not with log). `categorical`: `choices`, a list (the drivers take its order as an axis,
    so list numbers in order). `grid`: the points the coordinate and random-gradient strategies place on a float
    range (default 9, log-spaced for log ranges) or on an int range (default: every value, up to 64)."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    grid: int | None = None

    @classmethod
    def parse(cls, key: str, spec: Any, where: str) -> tuple[Param | None, list[str]]:
        """The parameter a YAML entry describes, or the problems with it (one line each)."""
        at = f"{where}: params.{key}"
        if not isinstance(spec, dict):
            return None, [f"{at} must be a mapping like {{type: float, low: 1e-4, high: 1e-2, log: true}}"]
        problems = [
            f"{at}.{k} is not a setting of a search parameter; known: {list(PARAM_FIELDS)}"
            for k in spec
            if k not in PARAM_FIELDS
        ]
        kind = spec.get("type")
        if kind not in PARAM_TYPES:
            return None, [*problems, f"{at}.type={kind!r} is unknown; choose one of {list(PARAM_TYPES)}"]
        low, high, log_, step, grid = (spec.get(k) for k in ("low", "high", "log", "step", "grid"))
        choices = spec.get("choices")
        if log_ is not None and not isinstance(log_, bool):
            problems.append(f"{at}.log={log_!r} must be true or false")
        if grid is not None and not (_integer(grid) and grid >= 2):
            problems.append(f"{at}.grid={grid!r} must be an integer >= 2 (points of the drivers' grid)")
        if kind == "categorical":
            for k in ("low", "high", "log", "step"):
                if k in spec:
                    problems.append(f"{at}.{k} is not a setting of a categorical parameter (it has choices)")
            ok = (None, bool, int, float, str)
            if not isinstance(choices, list) or not choices:
                problems.append(f"{at}: type categorical needs a non-empty list of choices, e.g. choices: [16, 32]")
            elif any(type(c) not in ok for c in choices) or len({json.dumps(c) for c in choices}) < len(choices):
                problems.append(f"{at}.choices={choices!r} must be distinct numbers, strings, booleans or null")
            return (None if problems else cls(key, kind, choices=tuple(choices), grid=grid)), problems
        if choices is not None:
            problems.append(f"{at}.choices is for type categorical; a {kind} range has low and high")
        is_num = _integer if kind == "int" else _number
        for name, value in (("low", low), ("high", high)):
            if not is_num(value):
                problems.append(f"{at}.{name}={value!r} must be {'an integer' if kind == 'int' else 'a number'}")
        if step is not None and not (is_num(step) and step > 0):
            problems.append(f"{at}.step={step!r} must be a positive {'integer' if kind == 'int' else 'number'}")
        if problems:
            return None, problems
        if low >= high:
            problems.append(f"{at}: low={low!r} must be below high={high!r}")
        if log_ and low <= 0:
            problems.append(f"{at}: log=true needs low > 0 (got low={low!r})")
        if log_ and step is not None and not (kind == "int" and step == 1):
            problems.append(f"{at}: log=true cannot be combined with step={step!r}")
        if step is not None and not problems and kind == "int" and (high - low) % step:
            problems.append(f"{at}: high - low = {high - low} is not a multiple of step={step}")
        if problems:
            return None, problems
        low, high = (int(low), int(high)) if kind == "int" else (float(low), float(high))
        return cls(key, kind, low, high, bool(log_), step, grid=grid), []

    def to_dict(self) -> dict:
        if self.type == "categorical":
            out = {"type": self.type, "choices": list(self.choices)}
        else:
            out = {"type": self.type, "low": self.low, "high": self.high, "log": self.log, "step": self.step}
        return {**out, "grid": self.grid}

    @property
    def first(self):
        """The first point of the range: its low end, or the first choice."""
        return self.choices[0] if self.type == "categorical" else self.low

    def values(self) -> list:
        """The drivers' grid: the choices, every integer of an int range (up to 64 of them, else `grid` points),
        or `grid` points on a float range, geometric for a log range; endpoints included."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            step = int(self.step or 1)
            every = list(range(self.low, self.high + 1, step))
            if self.grid is None and len(every) <= MAX_INT_GRID:
                return every
            raw = self._spaced(min(self.grid or DEFAULT_GRID, len(every)))
            return sorted({min(self.high, self.low + step * round((x - self.low) / step)) for x in raw})
        raw = self._spaced(self.grid or DEFAULT_GRID)
        if self.step:
            raw = [min(self.high, self.low + self.step * round((x - self.low) / self.step)) for x in raw]
        return sorted({float(x) for x in raw})

    def _spaced(self, n: int) -> list[float]:
        points = np.geomspace(self.low, self.high, n) if self.log else np.linspace(self.low, self.high, n)
        return [float(x) for x in points]

    def index(self, value, grid: list) -> int | None:
        """Where a value lies on the grid, or None when it is off it (a point another sampler chose)."""
        for i, g in enumerate(grid):
            if self.type == "categorical":
                if g == value and type(g) is type(value):
                    return i
            elif _number(value) and math.isclose(g, value, rel_tol=1e-9, abs_tol=1e-12):
                return i
        return None


@dataclass(frozen=True)
class Penalty:
    """A synthetic-objective term for a setting the law does not know: scale * d^2, with d = log10(x / optimum)
    (`log`, the default for a log-sampled parameter) or x - optimum."""

    key: str
    optimum: float
    scale: float
    log: bool

    def __call__(self, value: float) -> float:
        if self.log:
            if not (_number(value) and value > 0):
                return math.inf
            d = math.log10(value / self.optimum)
        else:
            d = float(value) - self.optimum
        return self.scale * d * d


@dataclass(frozen=True)
class Space:
    """A search space (`conf/search/*.yaml`):

    trial_flops: 1.5e12            # every trial: budget=flops budget.flops=1.5e12 (required)
    overrides: [model=gpt2_tiny, tokenizer=bytes, trainer=cpu]   # run.py overrides of every trial
    params:                        # run.py keys -> ranges (see Param)
      optimizer.lr: {type: float, low: 3.0e-4, high: 3.0e-2, log: true}
      model.d_model: {type: int, low: 32, high: 256, step: 32}
      train.batch_size: {type: categorical, choices: [8, 16, 32]}
    constraints:
      head_dims: [32, 64]          # optional: d_model / n_head must be one of these, else the trial is pruned
    synthetic:                     # optional: the law: objective's penalties (see Penalty)
      optimizer.lr: {optimum: 4.0e-3, scale: 0.1}
      model.dropout: {optimum: 0.0, scale: 1.0, log: false}
    """

    name: str
    params: dict[str, Param]
    trial_flops: float
    overrides: tuple[str, ...] = ()
    head_dims: tuple[int, ...] | None = None
    synthetic: tuple[Penalty, ...] = ()
    path: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> Space:
        """A space file, or `conf/search/NAME.yaml` by NAME."""
        from omegaconf import OmegaConf

        path = Path(path)
        if not path.is_file() and (SEARCH_DIR / f"{path}.yaml").is_file():
            path = SEARCH_DIR / f"{path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in SEARCH_DIR.glob("*.yaml"))
            raise ConfigError(f"--space {path}: no such file; give a YAML file or one of {known} (conf/search/)")
        try:
            data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        except Exception as e:  # a YAML syntax error, an interpolation that does not resolve
            raise ConfigError(f"{path}: {' '.join(str(e).split())}") from None
        return cls.from_dict(data, name=path.stem, path=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, name: str, path: str | None = None) -> Space:
        where = path or name
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: a search space is a mapping with trial_flops, params and overrides")
        problems = [
            f"{where}: {k} is not a setting of a search space; known: {list(SPACE_FIELDS)}"
            for k in data
            if k not in SPACE_FIELDS
        ]
        flops = data.get("trial_flops")
        if not (_number(flops) and flops > 0):
            problems.append(
                f"{where}: trial_flops={flops!r} must be a positive number, the FLOPs of every trial (e.g. 1.5e12)"
            )
        overrides = data.get("overrides") or []
        if not isinstance(overrides, list) or not all(
            isinstance(o, str) and ("=" in o or o.startswith("~")) for o in overrides
        ):
            problems.append(f"{where}: overrides must be a list of run.py overrides KEY=VALUE, e.g. [trainer=cpu]")
            overrides = []
        raw = data.get("params")
        params: dict[str, Param] = {}
        if not isinstance(raw, dict) or not raw:
            problems.append(f"{where}: params must map run.py keys to ranges, e.g. optimizer.lr: {{type: float, ...}}")
            raw = {}
        for key, spec in raw.items():
            param, found = Param.parse(str(key), spec, where)
            problems += found
            if param is not None:
                params[param.key] = param
        problems += _reserved(where, "params", list(raw))
        problems += _reserved(where, "overrides", [_override_key(o) for o in overrides])
        problems += [
            f"{where}: overrides set {k}, which is a searched parameter; remove one of the two"
            for k in (_override_key(o) for o in overrides)
            if k in raw
        ]
        head_dims = None
        constraints = data.get("constraints") or {}
        if not isinstance(constraints, dict) or set(constraints) - {"head_dims"}:
            problems.append(f"{where}: constraints knows only head_dims (allowed d_model / n_head), e.g. [32, 64]")
        elif "head_dims" in constraints:
            head_dims = constraints["head_dims"]
            if not (isinstance(head_dims, list) and head_dims and all(_integer(h) and h > 0 for h in head_dims)):
                problems.append(f"{where}: constraints.head_dims={head_dims!r} must be a list of positive integers")
            head_dims = tuple(head_dims) if isinstance(head_dims, list) else None
        synthetic = []
        for key, spec in (data.get("synthetic") or {}).items():
            penalty, found = _penalty(where, str(key), spec, params.get(key))
            problems += found
            if penalty is not None:
                synthetic.append(penalty)
        raise_if(problems)
        return cls(name, params, float(flops), tuple(overrides), head_dims, tuple(synthetic), path)

    def to_dict(self) -> dict:
        """The space as the study stores it (a resumed study must be searched in the same space)."""
        return {
            "params": {k: p.to_dict() for k, p in self.params.items()},
            "trial_flops": self.trial_flops,
            "overrides": list(self.overrides),
            "head_dims": list(self.head_dims) if self.head_dims else None,
            "synthetic": {p.key: {"optimum": p.optimum, "scale": p.scale, "log": p.log} for p in self.synthetic},
        }

    def suggest(self, trial: optuna.Trial) -> dict:
        """The trial's point (a re-queued trial's parameters are already set: Optuna returns them)."""
        out = {}
        for key, p in self.params.items():
            if p.type == "categorical":
                out[key] = trial.suggest_categorical(key, list(p.choices))
            elif p.type == "int":
                out[key] = trial.suggest_int(key, p.low, p.high, step=int(p.step or 1), log=p.log)
            else:
                out[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
        return out

    def point_overrides(self, params: dict) -> list[str]:
        return [f"{key}={_hydra_value(value)}" for key, value in params.items()]

    def trial_overrides(self, params: dict, extra: Sequence[str] = ()) -> list[str]:
        """The run.py overrides of a trial: the space's, the point's, the per-trial budget, then the command's."""
        budget = ["budget=flops", f"budget.flops={self.trial_flops!r}"]
        return [*self.overrides, *self.point_overrides(params), *budget, *extra]

    def check(self, extra: Sequence[str] = ()) -> DictConfig:
        """Compose the config of the space's first point once, before anything runs: every key must be a run.py
        setting, every value of the right type. Returns the composed config."""
        from omegaconf import OmegaConf

        where = self.path or self.name
        problems = _reserved(where, "the command's overrides", [_override_key(o) for o in extra])
        problems += [
            f"{where}: the command's override {o!r} sets a searched parameter; change the space instead"
            for o in extra
            if _override_key(o) in self.params
        ]
        raise_if(problems)
        base = _compose([*self.overrides, *extra], where)
        missing = object()
        for key in [*self.params, *(p.key for p in self.synthetic)]:
            value = OmegaConf.select(base, key, default=missing)
            if value is missing:
                section = "params" if key in self.params else "synthetic"
                problems.append(f"{where}: {section}.{key} is not a run.py setting (no `{key}` in the composed config)")
            elif key not in self.params and OmegaConf.is_config(value):
                problems.append(f"{where}: synthetic.{key} is a config group, not a number")
        raise_if(problems)
        first = {k: p.first for k, p in self.params.items()}
        return _compose([*self.trial_overrides(first, extra), "run_dir=."], where)

    def shape_problem(self, model: dict) -> str | None:
        """Why a composed model is outside `constraints.head_dims`, else None."""
        if not self.head_dims:
            return None
        d, h = model.get("d_model"), model.get("n_head")
        if _integer(d) and _integer(h) and h > 0 and (d % h or d // h not in self.head_dims):
            return f"model.d_model={d} / model.n_head={h} is not a head size of constraints.head_dims {list(self.head_dims)}"
        return None


def _penalty(where: str, key: str, spec: Any, param: Param | None) -> tuple[Penalty | None, list[str]]:
    at = f"{where}: synthetic.{key}"
    if not isinstance(spec, dict) or set(spec) - {"optimum", "scale", "log"}:
        return None, [f"{at} must be a mapping {{optimum: X, scale: S[, log: true|false]}}"]
    optimum, scale = spec.get("optimum"), spec.get("scale")
    default_log = bool(param and (param.log or (param.type == "categorical" and _all_positive(param.choices))))
    log_ = spec.get("log", default_log)
    problems = []
    if not _number(optimum):
        problems.append(f"{at}.optimum={optimum!r} must be a number")
    if not (_number(scale) and scale >= 0):
        problems.append(f"{at}.scale={scale!r} must be a number >= 0 (nats per unit squared)")
    if not isinstance(log_, bool):
        problems.append(f"{at}.log={log_!r} must be true or false")
    elif log_ and _number(optimum) and optimum <= 0:
        problems.append(f"{at}: log=true needs optimum > 0 (got {optimum!r})")
    elif (
        log_ and param is not None and not _all_positive(param.choices if param.type == "categorical" else [param.low])
    ):
        problems.append(f"{at}: log=true needs every value of params.{key} to be positive")
    if problems:
        return None, problems
    return Penalty(key, float(optimum), float(scale), log_), []


def _all_positive(values) -> bool:
    return bool(values) and all(_number(v) and v > 0 for v in values)


def _reserved(where: str, section: str, keys: Sequence[str]) -> list[str]:
    return [
        f"{where}: {section} set {k}, which the search sets itself (each trial runs with budget=flops "
        f"budget.flops=trial_flops in DIR/trials/N); remove it"
        for k in keys
        if any(k == r or k.startswith(r + ".") for r in RESERVED)
    ]


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=")[0]


def _hydra_value(value) -> str:
    """A parameter value as a Hydra override writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return text if text.replace("_", "").replace("-", "").replace(".", "").isalnum() else repr(text)


def _compose(overrides: list[str], where: str) -> DictConfig:
    from hydra.errors import HydraException

    from lm_lab.config import compose
    from lm_lab.launch import hydra_error_line

    try:
        return compose(overrides)
    except HydraException as e:
        raise ConfigError(f"{where}: {hydra_error_line(e)}") from None


# -- objectives: what one trial gives -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one trial gave: a value (state `complete`), or `fail` / `pruned` with a reason; `attrs` are recorded
    on the trial. `interrupted`: Ctrl-C or SIGTERM stopped it (it is re-queued and the search stops)."""

    value: float | None
    state: str
    reason: str | None = None
    attrs: dict = field(default_factory=dict)
    interrupted: bool = False


class TrainObjective:
    """Each trial a real run of the lab: `fit_from_config` in this process, in the trial's run directory."""

    writes_runs = True
    """An objective whose trials are run directories (`DIR/trials/<number>`, recorded as `run_dir`); a callable
    without the attribute counts as one."""

    def __init__(self, space: Space, overrides: Sequence[str] = ()):
        self.space, self.extra = space, list(overrides)
        space.check(self.extra)

    def __call__(self, number: int, params: dict, run_dir: str | None) -> Outcome:
        from hydra.errors import HydraException
        from omegaconf import OmegaConf

        from lm_lab.config import RunConfig, compose
        from lm_lab.launch import fit_from_config, hydra_error_line

        if run_dir is None:
            raise ConfigError("a trained trial needs a run directory: give the search a directory")
        overrides = self.space.trial_overrides(params, self.extra)
        try:
            cfg = compose([*overrides, f"run_dir={run_dir}"])
        except HydraException as e:
            return Outcome(None, "pruned", hydra_error_line(e))
        problem = self.space.shape_problem(OmegaConf.to_container(cfg.model, resolve=True))
        if problem:
            return Outcome(None, "pruned", problem)
        try:  # the point's own problems (a shape, a budget that pays for no step): pruned, not trained
            RunConfig.from_dict(cfg).derive()
        except ConfigError as e:
            return Outcome(None, "pruned", "; ".join(e.problems))
        with contextlib.redirect_stdout(sys.stderr):  # Lightning's model summary prints to stdout
            results = fit_from_config(cfg, overrides)  # a ConfigError now (data, tokenizer) stops the search
        results.module = None
        attrs = {
            "flops": results.flops,
            "params": results.params,
            "tokens": results.tokens,
            "steps": results.steps,
            "stop_reason": results.stop_reason,
        }
        if results.stop_reason == "interrupted":
            return Outcome(None, "fail", "interrupted", attrs, interrupted=True)
        loss = results.val_loss
        if results.finished and loss is not None and math.isfinite(loss):
            return Outcome(loss, "complete", None, attrs)
        return Outcome(None, "fail", f"{results.stop_reason}: {results.failure or 'no final val_loss'}", attrs)


class LawObjective:
    """A synthetic trial: the loss a fitted parametric law gives the model and tokens a real trial of the point
    would train, plus the space's penalties and seeded noise; no training, a few milliseconds."""

    writes_runs = False

    def __init__(self, space: Space, law, *, noise: float = 0.0, seed: int = 0, overrides: Sequence[str] = ()):
        from omegaconf import OmegaConf

        if law.loss(1e8, 1e9) is None:
            raise ConfigError(
                f"the synthetic objective needs a parametric law (E, A, B, alpha, beta); {law.name} has no loss(N, D)"
            )
        if not (_number(noise) and noise >= 0):
            raise ConfigError(f"--noise {noise!r} must be a number >= 0 (the sd of the loss, in nats)")
        self.space, self.law, self.noise, self.seed, self.extra = space, law, float(noise), seed, list(overrides)
        base = space.check(self.extra)  # the first point's config
        self._groups = [k for k in space.params if OmegaConf.is_config(OmegaConf.select(base, k))]
        self._bases: dict[tuple, tuple[DictConfig, dict]] = {(): (base, _resolved(base))}
        self._fast = self._equivalent(base)
        problems = []
        for p in space.synthetic:
            value = OmegaConf.select(base, p.key)
            if p.key not in space.params and p.log and not (_number(value) and value > 0):
                problems.append(f"{space.path or space.name}: synthetic.{p.key} is log but {p.key}={value!r}")
        raise_if(problems)

    def _equivalent(self, base: DictConfig) -> bool:
        """Whether writing a point into the resolved config gives what OmegaConf gives (no interpolation reads a
        searched key, every choice has its field's type): then a trial copies a plain dict, not a DictConfig.
        A choice OmegaConf refuses (a string for an integer field) is a ConfigError here."""
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        plain, same = self._bases[()][1], True
        for key, p in self.space.params.items():
            if key in self._groups:
                continue
            for value in p.values() if p.type == "categorical" else p.values()[-1:]:
                slow = base.copy()
                try:
                    OmegaConf.update(slow, key, value, merge=False)
                except OmegaConfBaseException as e:
                    where = self.space.path or self.space.name
                    why = str(e).splitlines()[0]
                    raise ConfigError(f"{where}: params.{key}: {value!r} is not a valid {key} ({why})") from None
                fast = _assigned(plain, {key: value})
                same = same and _resolved(slow) == fast
        return same

    def _config(self, params: dict) -> dict:
        """The resolved config of a point."""
        from omegaconf import OmegaConf

        groups = tuple((k, params[k]) for k in self._groups)
        if groups not in self._bases:  # a config group among the parameters (model=...): compose it once
            rest = {k: p.first for k, p in self.space.params.items() if k not in self._groups}
            point = {**rest, **dict(groups)}
            cfg = _compose([*self.space.trial_overrides(point, self.extra), "run_dir=."], self.space.name)
            self._bases[groups] = (cfg, _resolved(cfg))
        cfg, plain = self._bases[groups]
        fields = {k: v for k, v in params.items() if k not in self._groups}
        if self._fast:
            return _assigned(plain, fields)
        cfg = cfg.copy()
        for key, value in fields.items():
            OmegaConf.update(cfg, key, value, merge=False)
        return _resolved(cfg)

    def __call__(self, number: int, params: dict, run_dir: str | None = None) -> Outcome:
        from omegaconf.errors import OmegaConfBaseException

        from lm_lab.config import RunConfig
        from lm_lab.models import param_count
        from lm_lab.scaling.budget import token_flops

        try:
            plain = self._config(params)
            problem = self.space.shape_problem(plain["model"])
            if problem:
                return Outcome(None, "pruned", problem)
            run = RunConfig.from_dict(plain).derive()
        except ConfigError as e:
            return Outcome(None, "pruned", "; ".join(e.problems))
        except OmegaConfBaseException as e:
            return Outcome(None, "pruned", " ".join(str(e).split()))
        n, seq_len = param_count(run.model), run.train.seq_len
        tokens = run.train.max_steps * run.train.batch_size * seq_len
        flops = tokens * token_flops(run.model, seq_len, run.budget.flop_count)
        loss = self.law.loss(n, tokens)
        loss += sum(p(_lookup(plain, p.key)) for p in self.space.synthetic)
        if self.noise:
            loss += self.noise * float(np.random.default_rng([self.seed, number]).standard_normal())
        attrs = {"flops": float(flops), "params": n, "tokens": tokens, "steps": run.train.max_steps}
        return Outcome(float(loss), "complete", None, attrs)

    def noiseless(self, params: dict) -> float | None:
        """The objective at a point without noise (the benchmark's true loss of a found point)."""
        saved, self.noise = self.noise, 0.0
        try:
            out = self(0, params)
        finally:
            self.noise = saved
        return out.value


def _resolved(cfg: DictConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def _assigned(plain: dict, values: dict) -> dict:
    """A copy of a nested dict with dotted keys set."""
    import copy

    out = copy.deepcopy(plain)
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node[part]
        node[leaf] = value
    return out


def _lookup(plain: dict, key: str):
    node = plain
    for part in key.split("."):
        node = node[part]
    return node


def make_objective(spec, space: Space, *, noise: float = 0.0, seed: int = 0, overrides: Sequence[str] = ()):
    """`train`, `law:FIT.json` (a parametric fit), `law:epoch` / `law:hoffmann` (published laws), or a callable
    (number, params, run_dir) -> Outcome."""
    if callable(spec):
        return spec
    if spec == "train":
        if noise:
            raise ConfigError("--noise is for the synthetic objective (--objective law:FIT.json), not for training")
        return TrainObjective(space, overrides)
    if isinstance(spec, str) and spec.startswith("law:"):
        from lm_lab.scaling.laws import LAWS, load_fit

        source = spec.removeprefix("law:")
        try:
            chosen = LAWS[source] if source in LAWS and not Path(source).is_file() else load_fit(source)
        except ConfigError as e:
            raise ConfigError([line.replace("--fit ", "--objective law:") for line in e.problems]) from None
        return LawObjective(space, chosen, noise=noise, seed=seed, overrides=overrides)
    raise ConfigError(f"--objective {spec!r} is unknown; give train, law:FIT.json, law:epoch or law:hoffmann")


# -- the two strategies of seed 002, on grid indices ----------------------------------------------------------------

Point = tuple[int, ...]
Strategy = Generator[Point, float, Any]
"""A strategy yields the grid point it wants evaluated and is sent its loss; it returns when it has converged."""

GOLDEN = (3 - math.sqrt(5)) / 2  # 1 - 1/phi: where golden-section search places its inner points


def coordinate_descent(sizes: Sequence[int], start: Point, *, max_passes: int = 100) -> Strategy:
    """Seed 002's coordinate descent on a grid of `sizes` points per parameter: from `start`, minimise over one
    parameter at a time with the others fixed (a golden-section bracketing of its grid, `_line_search`), moving
    only to a strictly lower loss, cycling through the parameters until a full pass moves nothing. Exact on a
    separable objective whose every line is unimodal. Returns {"passes", "converged"}."""
    x = list(start)
    value = yield tuple(x)
    for passes in range(1, max_passes + 1):
        moved = False
        for i, k in enumerate(sizes):
            if k < 2:
                continue
            j, v = yield from _line_search(x, i, k, value)
            if v < value:
                x[i], value, moved = j, v, True
        if not moved:
            return {"passes": passes, "converged": True}
    return {"passes": max_passes, "converged": False}


def _line_search(x: list[int], i: int, k: int, value: float) -> Generator[Point, float, tuple[int, float]]:
    """Golden-section bracketing of index i over 0..k-1 (others fixed at x): the bracket [lo, hi] keeps the
    minimum of a unimodal line and shrinks by about 1/phi per comparison; the last (at most 3) points are all
    evaluated. Returns the best index seen (ties keep x[i]) and its loss."""
    seen = {x[i]: value}

    def at(j: int) -> Point:
        return (*x[:i], j, *x[i + 1 :])

    lo, hi = 0, k - 1
    while hi - lo > 2:
        c, d = lo + round(GOLDEN * (hi - lo)), hi - round(GOLDEN * (hi - lo))
        if c >= d:
            c = (lo + hi) // 2
            d = c + 1
        for j in (c, d):
            if j not in seen:
                seen[j] = yield at(j)
        if seen[c] < seen[d]:  # the minimum is left of d
            hi = d - 1
        elif seen[c] > seen[d]:  # right of c
            lo = c + 1
        else:  # between them
            lo, hi = c, d
    for j in range(lo, hi + 1):
        if j not in seen:
            seen[j] = yield at(j)
    best = min(seen, key=lambda j: (seen[j], j != x[i]))
    return best, seen[best]


def random_gradient(
    sizes: Sequence[int],
    rng: np.random.Generator,
    *,
    start: Sequence[float] | None = None,
    radius: float = 0.2,
    rate: float = 1.0,
    max_step: float = 0.3,
    patience: int = 8,
    max_iterations: int = 1000,
) -> Strategy:
    """Seed 002's "Gradient Update Policy Optimization": Monte-Carlo gradient descent on the hyperparameters.

    Coordinates are normalised to [0, 1] per parameter (u = grid index / (size - 1), so a log range is log
    spaced); the position u is continuous and a loss is evaluated at u snapped to the grid. Iteration k, at the
    current point x (loss L): a random direction d (uniform on the sphere) gives the probe x' = snap(u + r_k d),
    redrawn until it differs from x, with loss L'. With delta = x' - x (the actual normalised offset) the
    gradient along delta is estimated as (L' - L) / |delta| and the position moves against it:

        u <- clip(u - a_k (L' - L) / |delta| * delta / |delta|, 0, 1)     (the step capped at max_step)

    and the new point is evaluated: two evaluations per iteration, the seed's cost (a point already evaluated
    costs nothing). This is a one-sided random-direction stochastic approximation, so the gains decay as Spall's
    SPSA gains do (Spall 1998, IEEE Trans. Aerosp. Electron. Syst. 34(3)): a_k = rate / (k+1)^0.602,
    r_k = radius / (k+1)^0.101. Two departures from the seed, both because a one-sided difference near a minimum
    is dominated by curvature (every probe looks worse and the step kicks the point away): an iteration that
    finds no new best loss returns the position to the best point seen, and the search stops (converged) after
    `patience` such iterations in a row. A failed or refused point (infinite loss) counts as one nat worse.
    `rate` is in normalised units per nat of loss difference per unit of distance."""
    d = len(sizes)
    scale = np.array([max(k - 1, 1) for k in sizes], dtype=float)

    def snap(u: np.ndarray) -> Point:
        return tuple(int(round(v)) for v in np.clip(u, 0.0, 1.0) * scale)

    u = np.clip(np.asarray(start, dtype=float), 0, 1) if start is not None else rng.uniform(size=d)
    x = snap(u)
    value = yield x
    best, best_u, stale = value, u.copy(), 0
    for k in range(max_iterations):
        r, a = radius / (k + 1) ** 0.101, rate / (k + 1) ** 0.602
        for _attempt in range(20):
            direction = rng.standard_normal(d)
            direction /= np.linalg.norm(direction) or 1.0
            probe = snap(u + r * direction)
            if probe != x:
                break
        else:
            return {"converged": True, "why": "no grid point within reach"}
        probe_value = yield probe
        delta = (np.array(probe) - np.array(x)) / scale
        length = float(np.linalg.norm(delta))
        change = probe_value - value
        if not math.isfinite(change):
            change = -1.0 if math.isfinite(probe_value) else 1.0
        step = -a * change / length * (delta / length)
        norm = float(np.linalg.norm(step))
        if norm > max_step:
            step *= max_step / norm
        u = np.clip(u + step, 0.0, 1.0)
        x = snap(u)
        value = yield x
        if min(probe_value, value) < best:
            best, stale = min(probe_value, value), 0
            best_u = u.copy() if value <= probe_value else np.array(probe) / scale
        else:  # back to the incumbent
            stale += 1
            u, value = best_u.copy(), best
            x = snap(u)
            if stale >= patience:
                return {"converged": True, "why": f"no better loss in {patience} iterations"}
    return {"converged": False, "why": f"{max_iterations} iterations"}


@dataclass
class Trace:
    """A strategy run on a Python function: the distinct points evaluated in order, and what it returned."""

    evaluations: list[tuple[Point, float]]
    result: Any

    @property
    def best(self) -> tuple[Point, float]:
        return min(self.evaluations, key=lambda e: e[1])


def minimise(strategy: Strategy, objective: Callable[[Point], float], *, max_evaluations: int | None = None) -> Trace:
    """Run a strategy on a function of grid points, caching as the study does (a point is evaluated once)."""
    cache: dict[Point, float] = {}
    evaluations: list[tuple[Point, float]] = []
    result = None
    try:
        point = next(strategy)
        while True:
            if point not in cache:
                if max_evaluations is not None and len(evaluations) >= max_evaluations:
                    break
                cache[point] = float(objective(point))
                evaluations.append((point, cache[point]))
            point = strategy.send(cache[point])
    except StopIteration as stop:
        result = stop.value
    return Trace(evaluations, result)


class Driver:
    """A seed-002 strategy driving an Optuna study: the next point is found by replaying the strategy from its
    seeded start against the study's evaluated points (COMPLETE: its value; PRUNED or FAIL: infinitely bad), so
    it resumes from storage and never evaluates a point twice. Sequential: while the point it needs is running in
    another worker, a second worker waits for it."""

    def __init__(self, kind: str, space: Space, seed: int):
        self.kind, self.seed = kind, seed
        self.params = list(space.params.values())
        self.grids = [p.values() for p in self.params]
        self.sizes = [len(g) for g in self.grids]

    def strategy(self) -> Strategy:
        rng = np.random.default_rng(self.seed)
        if self.kind == "coordinate":
            return coordinate_descent(self.sizes, tuple(int(rng.integers(k)) for k in self.sizes))
        return random_gradient(self.sizes, rng)

    def point(self, params: dict) -> Point | None:
        if any(p.key not in params for p in self.params):
            return None
        out = tuple(p.index(params[p.key], g) for p, g in zip(self.params, self.grids, strict=True))
        return None if None in out else out

    def params_of(self, point: Point) -> dict:
        return {p.key: g[i] for p, g, i in zip(self.params, self.grids, point, strict=True)}

    def next(self, trials: Sequence[optuna.trial.FrozenTrial]) -> tuple[str, Any]:
        """("run", params), ("wait", number of the running trial it needs) or ("done", why)."""
        from optuna.trial import TrialState

        retried = _retried(trials)
        values: dict[Point, float] = {}
        pending: dict[Point, int] = {}
        for t in trials:
            point = self.point(t.params)
            if point is None:
                continue
            if t.state == TrialState.COMPLETE:
                values[point] = min(values.get(point, math.inf), t.value)
            elif t.state == TrialState.PRUNED or (t.state == TrialState.FAIL and t.number not in retried):
                values.setdefault(point, math.inf)
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):
                pending.setdefault(point, t.number)
        strategy = self.strategy()
        try:
            point = next(strategy)
            while point in values:
                point = strategy.send(values[point])
        except StopIteration as stop:
            return "done", f"{self.kind} converged ({stop.value})"
        if point in pending:
            return "wait", pending[point]
        return "run", self.params_of(point)


# -- the study: storage, liveness, budgets --------------------------------------------------------------------------


def open_storage(spec: str | Path | None):
    """None: in memory; `*.db` / `*.sqlite`: SQLite; a URL with `://`: that database; any other path: Optuna's
    journal file (NFS-safe, no server)."""
    import optuna

    if spec is None:
        return None
    text = str(spec)
    if "://" in text:
        return optuna.storages.RDBStorage(text)
    path = Path(text).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        # several workers write one file: wait for its lock instead of failing after SQLite's 5 s
        return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 120}})
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(path)))


def host_id() -> str:
    """This machine: hostname and kernel boot id (two machines, or two boots, never share it)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def pid_alive(pid) -> bool:
    if not _integer(pid) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_trials(
    trials: Sequence[optuna.trial.FrozenTrial],
    *,
    now: float,
    grace: float,
    worker: dict,
    alive: Callable[[int], bool] = pid_alive,
) -> list[tuple[optuna.trial.FrozenTrial, str]]:
    """The RUNNING trials whose worker is dead, with why: a worker on this machine (same `host`) whose pid is
    gone (or is this process under another worker token: a previous search in it), or any worker whose last
    heartbeat (else its start) is more than `grace` seconds old. `worker` is this worker's {host, pid, token}."""
    from optuna.trial import TrialState

    out = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        owner = t.user_attrs.get("worker") or {}
        if owner.get("token") == worker["token"]:
            continue
        pid = owner.get("pid")
        if owner.get("host") == worker["host"] and (pid == worker["pid"] or not alive(pid)):
            out.append((t, f"its worker (pid {pid} on this machine) is gone"))
            continue
        beat = t.user_attrs.get("heartbeat")
        if beat is None and t.datetime_start is not None:
            beat = t.datetime_start.timestamp()
        if beat is None or now - beat > grace:
            age = "no heartbeat" if beat is None else f"no heartbeat for {now - beat:.0f} s"
            out.append((t, f"{age} (grace {grace:g} s) from {owner.get('host', '?')} pid {pid}"))
    return out


def _retried(trials) -> set[int]:
    """Trials that were re-queued (their re-runs carry them in `retry_history`)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


@dataclass
class Ledger:
    """The study's trials as the budgets count them: a re-queued trial counts once (as its re-run)."""

    counted: int
    """Trials towards --trials: finished (not re-queued), running and waiting."""
    spent: float
    """FLOPs of the finished trials: their results' `flops`; a pruned trial none; a failure without a count, its
    trial_flops."""
    committed: float
    """spent + trial_flops for every running or waiting trial."""

    @classmethod
    def of(cls, trials, trial_flops: float) -> Ledger:
        from optuna.trial import TrialState

        retried = _retried(trials)
        counted = [t for t in trials if t.number not in retried]
        spent, pending = 0.0, 0
        for t in counted:
            if not t.state.is_finished():
                pending += 1
            elif t.state != TrialState.PRUNED:
                spent += float(t.user_attrs.get("flops", trial_flops))
        return cls(len(counted), spent, spent + pending * trial_flops)


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of one trial: reproducible whatever worker asks it, distinct per trial."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def make_sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # running trials count as bad: no repeats
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed, independent_sampler=optuna.samplers.RandomSampler(seed=seed), warn_independent_sampling=False
        )
    if name in ("random", *DRIVERS):
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"--sampler {name!r} is unknown; choose one of {list(SAMPLERS)}")


class _Heartbeat:
    """Records `heartbeat` (time.time()) on a running trial every `interval` seconds, from a thread."""

    def __init__(self, trial: optuna.Trial, interval: float):
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial.number}")

    def _beat(self) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        while not self._stop.wait(self.interval):
            try:
                self.trial.set_user_attr("heartbeat", time.time())
            except UpdateFinishedTrialError:
                log.warning("trial %d was failed by another worker while it ran (stale?)", self.trial.number)
                return
            except Exception as e:  # a storage hiccup: the next beat tries again
                log.warning("heartbeat of trial %d not recorded: %s", self.trial.number, e)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class SearchResult:
    study: optuna.Study
    stopped: str
    """Why this worker stopped: `trials` (the study is full), `budget` (the next trial would exceed
    --budget-flops), the driver's convergence, or `interrupted`."""


class _Search:
    """One worker of a study."""

    def __init__(self, space, study, objective, *, sampler, trials, directory, budget_flops, seed, lock, **timing):
        self.space, self.study, self.objective, self.sampler = space, study, objective, sampler
        self.trials, self.directory, self.budget_flops = trials, directory, budget_flops
        self.seed, self.lock = seed, lock
        self.heartbeat, self.grace = timing["heartbeat_interval"], timing["grace_period"]
        self.poll, self.max_retry = timing["poll_interval"], timing["max_retry"]
        self.driver = Driver(sampler, space, seed) if sampler in DRIVERS else None
        self.worker = {"host": host_id(), "pid": os.getpid(), "token": uuid.uuid4().hex}

    def run(self) -> str:
        while True:
            step = self._next()
            if isinstance(step, str):
                log.info("search %s stops: %s", self.study.study_name, self._why(step))
                return step
            if step[0] == "wait":
                log.info("waiting for trial %d (running in another worker): the %s strategy needs it", *step[1:])
                time.sleep(self.poll)
                continue
            _, trial, params, run_dir = step
            stop = self._evaluate(trial, params, run_dir)
            if stop:
                return stop

    def _why(self, stop: str) -> str:
        if stop == "trials":
            return f"the study holds its {self.trials} trials"
        if stop == "budget":
            return f"the next trial's {self.space.trial_flops:.3g} FLOPs would exceed --budget-flops {self.budget_flops:.3g}"
        return stop

    def _next(self):
        """Under the lock: fail dead trials and re-queue them, check the budgets, ask the next trial."""
        from optuna.trial import TrialState

        with self.lock:
            trials = self.study.get_trials(deepcopy=False)
            if self._recover(trials):
                trials = self.study.get_trials(deepcopy=False)
            if not any(t.state == TrialState.WAITING for t in trials):
                book = Ledger.of(trials, self.space.trial_flops)
                if book.counted >= self.trials:
                    return "trials"
                if self.budget_flops is not None and book.committed + self.space.trial_flops > self.budget_flops:
                    return "budget"
                if self.driver is not None:
                    kind, what = self.driver.next(trials)
                    if kind == "done":
                        return what
                    if kind == "wait":
                        return "wait", what, self.sampler
                    self.study.enqueue_trial(what)
                else:
                    self.study.sampler = make_sampler(self.sampler, trial_seed(self.seed, len(trials)))
            trial = self.study.ask()  # a waiting trial (re-queued, or the driver's point) first
            params = self.space.suggest(trial)
            run_dir = trial.user_attrs.get("run_dir")
            if run_dir is None and self.directory is not None and getattr(self.objective, "writes_runs", True):
                run_dir = str(self.directory / "trials" / f"{trial.number:04d}")
            if run_dir is not None:
                trial.set_user_attr("run_dir", run_dir)
            trial.set_user_attr("worker", self.worker)
            trial.set_user_attr("heartbeat", time.time())
        return "run", trial, params, run_dir

    def _recover(self, trials) -> bool:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        found = stale_trials(trials, now=time.time(), grace=self.grace, worker=self.worker)
        for t, why in found:
            try:
                frozen = self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            except UpdateFinishedTrialError:
                continue
            if frozen.state != TrialState.FAIL or "reason" in frozen.user_attrs:  # its worker finished it meanwhile
                continue
            log.warning("trial %d failed: %s; its parameters run again", t.number, why)
            self._requeue(frozen, why)
        return bool(found)

    def _requeue(self, trial: optuna.trial.FrozenTrial, why: str) -> None:
        """Queue a failed trial's parameters again, in its run directory (Optuna's retry attributes)."""
        import optuna

        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > self.max_retry:
            log.error("trial %d failed %d times (%s); not re-queued again", history[0], len(history), why)
            return
        keep = {k: trial.user_attrs[k] for k in ("run_dir",) if k in trial.user_attrs}
        system = {"failed_trial": history[0], "retry_history": history, "lm_lab:retry_reason": why}
        self.study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=keep,
                system_attrs=system,
            )
        )

    def _evaluate(self, trial: optuna.Trial, params: dict, run_dir: str | None) -> str | None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        with _Heartbeat(trial, self.heartbeat):
            try:
                outcome = self.objective(trial.number, params, run_dir)
            except KeyboardInterrupt:
                outcome = Outcome(None, "fail", "interrupted", interrupted=True)
            except ConfigError as e:  # not the point's fault (the data, the tokenizer): re-queue it and stop
                self._fail(trial, "; ".join(e.problems))
                raise
            except Exception as e:  # one broken point does not end the search
                log.exception("trial %d failed", trial.number)
                outcome = Outcome(None, "fail", f"{type(e).__name__}: {e}")
        try:
            for key, value in outcome.attrs.items():
                trial.set_user_attr(key, value)
            if outcome.reason:
                trial.set_user_attr("reason", outcome.reason)
            if outcome.state == "complete":
                frozen = self.study.tell(trial, outcome.value)
            else:
                frozen = self.study.tell(
                    trial, state=TrialState.PRUNED if outcome.state == "pruned" else TrialState.FAIL
                )
        except UpdateFinishedTrialError:
            log.warning("trial %d was failed by another worker while it ran; its result is not recorded", trial.number)
            return None
        self._report(frozen, outcome)
        if outcome.interrupted:
            with self.lock:
                self._requeue(frozen, "interrupted")
            return "interrupted"
        return None

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        """Fail a trial the search cannot run now, and queue its point again for the next start."""
        from optuna.trial import TrialState

        trial.set_user_attr("reason", reason)
        frozen = self.study.tell(trial, state=TrialState.FAIL)
        with self.lock:
            self._requeue(frozen, reason)

    def _report(self, trial: optuna.trial.FrozenTrial, outcome: Outcome) -> None:
        book = Ledger.of(self.study.get_trials(deepcopy=False), self.space.trial_flops)
        point = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        retry = f" (re-run of {trial.system_attrs['failed_trial']})" if "failed_trial" in trial.system_attrs else ""
        result = (
            f"val_loss {outcome.value:.4f}" if outcome.state == "complete" else f"{outcome.state}: {outcome.reason}"
        )
        flops = outcome.attrs.get("flops")
        budget = f" of {self.budget_flops:.3g}" if self.budget_flops else ""
        log.info(
            "trial %d%s [%s] %s: %s | %s FLOPs, %s params | spent %.3g%s FLOPs",
            trial.number,
            retry,
            self.sampler,
            point,
            result,
            f"{flops:.3g}" if flops is not None else "-",
            f"{outcome.attrs['params']:,}" if "params" in outcome.attrs else "-",
            book.spent,
            budget,
        )


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class _DirectoryLock:
    """The workers' lock: Optuna's symlink lock on DIR/study.json (NFS-safe; a lock its holder left behind for 60 s,
    e.g. killed inside it, is broken)."""

    def __init__(self, directory: Path):
        from optuna.storages.journal import JournalFileSymlinkLock

        self._lock = JournalFileSymlinkLock(str(directory / "study.json"), grace_period=60)

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc) -> None:
        self._lock.release()


def _bind_directory(directory: Path, study_name: str, storage: str | None) -> None:
    """DIR holds one study (its trials are DIR/trials/<number>): refuse another one."""
    from lm_lab.fileio import atomic_write_json

    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / "study.json"
    mine = {"study_name": study_name, "storage": storage}
    if marker.is_file():
        theirs = json.loads(marker.read_text())
        if theirs != mine:
            raise ConfigError(
                f"{directory} holds study {theirs.get('study_name')!r} in {theirs.get('storage')}; give the same "
                f"--study-name and --storage to resume it, or another --dir"
            )
        return
    atomic_write_json(marker, mine)


def run_search(
    space: Space | str | Path,
    *,
    sampler: str = "tpe",
    trials: int,
    directory: str | Path | None = None,
    storage: str | Path | None = "default",
    study_name: str | None = None,
    objective: Any = "train",
    noise: float = 0.0,
    seed: int = 0,
    budget_flops: float | None = None,
    overrides: Sequence[str] = (),
    heartbeat_interval: float = 60.0,
    grace_period: float = 180.0,
    poll_interval: float | None = None,
    max_retry: int = 3,
) -> SearchResult:
    """Run (or resume, or join) a search; returns the study and why this worker stopped.

    `trials`: the study's size (all workers together). `directory`: where trials train (`directory/trials/N`)
    and the study's lock lives; `storage`: "default" is `directory/study.journal` (in memory without a
    directory), None in memory, else a path or URL (`open_storage`). `objective`: "train", "law:FIT.json", or a
    callable (number, params, run_dir) -> Outcome. See the module's docstring for the rest."""
    import optuna

    if not isinstance(space, Space):
        space = Space.load(space)
    problems = []
    if sampler not in SAMPLERS:
        problems.append(f"--sampler {sampler!r} is unknown; choose one of {list(SAMPLERS)}")
    if not (_integer(trials) and trials > 0):
        problems.append(f"--trials {trials!r} must be a positive integer")
    if budget_flops is not None and not (_number(budget_flops) and budget_flops > 0):
        problems.append(f"--budget-flops {budget_flops!r} must be a positive number of FLOPs")
    if not (_number(heartbeat_interval) and heartbeat_interval > 0 and _number(grace_period)):
        problems.append("--heartbeat must be a positive number of seconds")
    elif grace_period <= heartbeat_interval:
        problems.append(f"--grace {grace_period:g} must be longer than --heartbeat {heartbeat_interval:g} seconds")
    raise_if(problems)
    directory = Path(directory).expanduser().absolute() if directory is not None else None
    if storage == "default":
        storage = directory / "study.journal" if directory is not None else None
    if storage is not None and directory is None:
        raise ConfigError("a stored study needs a directory (its lock and its trials' run directories live there)")
    if storage is not None and "://" not in str(storage):
        storage = Path(storage).expanduser().absolute()
    fn = make_objective(objective, space, noise=noise, seed=seed, overrides=overrides)
    study_name = study_name or space.name
    if directory is not None:
        _bind_directory(directory, study_name, None if storage is None else str(storage))
    lock = _DirectoryLock(directory) if storage is not None else contextlib.nullcontext()
    with lock:
        study = optuna.create_study(
            storage=open_storage(storage),
            study_name=study_name,
            direction="minimize",
            load_if_exists=True,
            sampler=make_sampler(sampler, seed),
        )
        _check_space(study, space)
    worker = _Search(
        space,
        study,
        fn,
        sampler=sampler,
        trials=trials,
        directory=directory,
        budget_flops=budget_flops,
        seed=seed,
        lock=lock,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        poll_interval=poll_interval if poll_interval is not None else min(10.0, heartbeat_interval),
        max_retry=max_retry,
    )
    return SearchResult(study, worker.run())


def _check_space(study: optuna.Study, space: Space) -> None:
    mine = json.loads(json.dumps(space.to_dict()))
    theirs = study.user_attrs.get("space")
    if theirs is None:
        study.set_user_attr("space", mine)
        return
    if theirs != mine:
        keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ConfigError(
            f"study {study.study_name!r} was searched in another space (its {', '.join(keys)} differ from "
            f"{space.path or space.name}); resume it with the same space, or give another --study-name and --dir"
        )


def summary(result: SearchResult, space: Space, *, budget_flops: float | None = None, **extra) -> dict:
    """The JSON `lm-lab search` prints: trial counts, the best trial, FLOPs spent against the budget."""
    from optuna.trial import TrialState

    study = result.study
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    book = Ledger.of(trials, space.trial_flops)
    return {
        "study": study.study_name,
        **extra,
        "stopped": result.stopped,
        "trials": {
            "complete": states[TrialState.COMPLETE],
            "failed": states[TrialState.FAIL] - len(_retried(trials)),
            "retried": len(_retried(trials)),
            "pruned": states[TrialState.PRUNED],
            "running": states[TrialState.RUNNING],
            "waiting": states[TrialState.WAITING],
        },
        "best": None
        if best is None
        else {
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "run_dir": best.user_attrs.get("run_dir"),
            "flops": best.user_attrs.get("flops"),
            "model_params": best.user_attrs.get("params"),
        },
        "flops": {"spent": book.spent, "budget": budget_flops, "per_trial": space.trial_flops},
    }


# -- the command line -----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `lm-lab search` (trailing KEY=VALUE run.py overrides go to every trial)."""
    from lm_lab.cli import _positive as _positive_int

    parser.add_argument("--space", required=True, help="a search space: NAME of conf/search/NAME.yaml, or a YAML file")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="the strategy (default tpe)")
    parser.add_argument(
        "--trials",
        type=_positive_int,
        required=True,
        help="trials of the study in all (a resumed or second worker runs the rest)",
    )
    parser.add_argument("--budget-flops", type=float, help="the study's total training FLOPs (default: no cap)")
    parser.add_argument("--dir", help="the search's folder: trials/N run directories, the study (outputs/search/NAME)")
    parser.add_argument(
        "--storage", help="the study: a journal file (default DIR/study.journal), FILE.db (SQLite) or a URL"
    )
    parser.add_argument("--study-name", help="default: the space file's name")
    parser.add_argument("--objective", default="train", help="train (default), or law:FIT.json / law:epoch (synthetic)")
    parser.add_argument("--noise", type=float, default=0.0, help="sd of the synthetic objective's noise in nats (0)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the samplers, the drivers' start and the noise (0)")
    parser.add_argument("--heartbeat", type=float, default=60.0, help="seconds between a running trial's heartbeats")
    parser.add_argument(
        "--grace", type=float, default=180.0, help="a trial of another machine silent this long is dead"
    )
    parser.add_argument("overrides", nargs="*", help="run.py overrides for every trial, e.g. trainer=gpu")


def command(args: argparse.Namespace) -> dict:
    """`lm-lab search`: run or resume the search; the JSON summary (progress goes to stderr)."""
    import optuna

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = Space.load(args.space)
    name = args.study_name or space.name
    directory = Path(args.dir or Path("outputs") / "search" / name)
    storage = args.storage or directory / "study.journal"
    result = run_search(
        space,
        sampler=args.sampler,
        trials=args.trials,
        directory=directory,
        storage=storage,
        study_name=name,
        objective=args.objective,
        noise=args.noise,
        seed=args.seed,
        budget_flops=args.budget_flops,
        overrides=list(args.overrides),
        heartbeat_interval=args.heartbeat,
        grace_period=args.grace,
    )
    return summary(
        result,
        space,
        budget_flops=args.budget_flops,
        sampler=args.sampler,
        objective=args.objective,
        directory=str(directory.absolute()),
        storage=str(storage),
    )
