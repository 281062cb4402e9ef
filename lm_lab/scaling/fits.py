"""Scaling laws fitted to the lab's own runs: `lm-lab fit --method isoflop | parametric | hyperparams`.

    table = read_table("runs.csv", ["flops", "params", "loss"], ["tokens"])  # or read_table(path, *ISOFLOP_COLUMNS)
    fit = isoflop(**table, predict=[1e19])                 # Hoffmann et al. 2022 Approach 2
    fit = parametric(params=n, tokens=d, loss=l, bootstrap=200)  # Approach 3, as Besiroglu et al. 2024 redo it
    fit = hyperparams(**read_table("sweep.csv", *HYPERPARAMS_COLUMNS), predict=[1e19])

Compute is C = 6·N·D and N counts every parameter, as `laws` does; each fit returns plain JSON data (floats,
ints, lists) that `laws.load_fit` reads back for `isoflop` and `parametric`. Every input problem, in a table or
in arrays handed to a fit, is one line of one ConfigError; rows are numbered from 1, the first after the header.
Pure functions of numpy arrays (scipy for the optimisers); `lm_lab.scaling.plots` draws them.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares, minimize
from threadpoolctl import threadpool_limits

from lm_lab.errors import ConfigError, raise_if
from lm_lab.scaling.laws import Parametric

POSITIVE = ("flops", "params", "tokens", "loss", "d_model", "n_layer", "n_head", "batch_size", "lr")
"""Columns whose every value must be positive (all of them are logged)."""
BUDGET_RTOL = 1e-6
"""Runs whose FLOPs agree to this relative tolerance share a budget."""
MAX_PROBLEMS = 20
"""At most this many bad values are listed one per line; the rest are counted in one more line."""

ISOFLOP_COLUMNS = (("flops", "params", "loss"), ("tokens",))
PARAMETRIC_COLUMNS = (("params", "tokens", "loss"), ())
HYPERPARAMS_COLUMNS = (("flops", "loss", "d_model", "n_layer", "n_head", "batch_size", "lr"), ("params",))
HYPERPARAMS = ("d_model", "n_layer", "n_head", "batch_size", "lr")

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022 §3.3; Besiroglu et al. 2024 keep it
GRID = {  # Besiroglu et al. 2024's grid of initialisations: L-BFGS from every point, 6·6·5·5·5 = 4500
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
# Besiroglu et al. 2024 (v2) find Hoffmann et al.'s optimiser "stopped before convergence due to a poor choice of loss
# scale": here the objective is a sum (not a mean) over runs and the stopping rule is tight (with ftol 1e-6 the
# tests' data give beta 0.48 instead of 0.37).
LBFGS_OPTIONS = {"ftol": 1e-14, "gtol": 1e-12, "maxiter": 10_000, "maxfun": 20_000}


# -- tables and checks ---------------------------------------------------------------------------------------------


def read_table(path: str | Path, required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The named columns of a CSV file with a header row, as float arrays (other columns are ignored; an optional
    column that is absent is left out). Every problem is one line of one ConfigError: a missing column, a value
    that is not a finite number, a non-positive value in a column of `POSITIVE`, an empty table."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            lines = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"{path}: not a readable CSV file ({e})") from None
    if not lines:
        raise ConfigError(f"{path} is empty: give a header row, then one row per run")
    header = [name.strip() for name in lines[0]]
    missing = [name for name in required if name not in header]
    raise_if([f"{path}: no column {name!r} (the columns are {', '.join(header)})" for name in missing])
    rows = lines[1:]
    if not rows:
        raise ConfigError(f"{path} has a header but no rows")
    wanted = [name for name in (*required, *optional) if name in header]
    columns, problems = {}, []
    for name in wanted:
        index, values = header.index(name), []
        for i, row in enumerate(rows, start=1):
            text = row[index].strip() if index < len(row) else ""
            try:
                values.append(float(text))
            except ValueError:
                problems.append(f"{path} row {i}: {name} is {text!r}, not a number")
                values.append(1.0)  # reported; kept out of the checks below
        columns[name] = np.array(values)
    problems += _value_problems(columns, f"{path} ")
    raise_if(_capped(problems))
    return columns


def _check(columns: dict[str, object]) -> dict[str, np.ndarray]:
    """The fit's columns (None: an optional one not given) as 1-D float arrays of equal length, every value finite
    and positive, or one ConfigError with a line per problem, in read_table's words."""
    given = {name: values for name, values in columns.items() if values is not None}
    arrays, problems = {}, []
    for name, values in given.items():
        try:
            array = np.asarray(values, dtype=float)
        except (TypeError, ValueError):
            problems.append(f"{name} is not an array of numbers")
            continue
        if array.ndim != 1:
            problems.append(f"{name} has shape {array.shape}; give one value per run")
            continue
        arrays[name] = array
    raise_if(problems)
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(
            f"the columns differ in length ({', '.join(f'{k} {v}' for k, v in lengths.items())}); give one value per run"
        )
    if not any(lengths.values()):
        raise ConfigError("no runs: the table is empty")
    raise_if(_capped(_value_problems(arrays, "")))
    return arrays


def _value_problems(columns: dict[str, np.ndarray], where: str) -> list[str]:
    """One line per value that is not finite, or not positive in a column that must be; rows numbered from 1."""
    problems = []
    for name, values in columns.items():
        for i, value in enumerate(values, start=1):
            if not math.isfinite(value):
                problems.append(f"{where}row {i}: {name} is {value}, not a finite number")
            elif name in POSITIVE and value <= 0:
                problems.append(f"{where}row {i}: {name} is {value:g}; it must be positive")
    return problems


def _capped(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems like these"]


def _budgets(flops: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """(budget, indices of its runs) in increasing order of budget; FLOPs within BUDGET_RTOL are one budget."""
    order = np.argsort(flops, kind="stable")
    groups: list[list[int]] = []
    for i in order:
        if groups and flops[i] <= flops[groups[-1][0]] * (1 + BUDGET_RTOL):
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return [(float(np.mean(flops[g])), np.array(sorted(g))) for g in groups]


def _power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(k, e) of y = k·x^e by least squares on the logs; a constant y is exactly e = 0."""
    log_x, log_y = np.log(x), np.log(y)
    if np.all(log_y == log_y[0]):
        return float(y[0]), 0.0
    exponent, log_coef = np.polyfit(log_x, log_y, 1)
    return float(math.exp(log_coef)), float(exponent)


def _predict_problems(predict: Sequence[float]) -> list[str]:
    return [f"--predict {c}: give positive FLOP budgets" for c in predict if not (math.isfinite(c) and c > 0)]


def _finite(result: dict, method: str) -> dict:
    """The result, or a ConfigError when the data gave the fit no finite value (JSON has no NaN or infinity)."""
    bad = []

    def walk(value, key):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append(key)

    walk(result, "")
    raise_if([f"the {method} fit gave {key} = inf or nan: the runs do not determine it" for key in bad[:MAX_PROBLEMS]])
    return result


# -- Approach 2: IsoFLOP profiles ----------------------------------------------------------------------------------


def isoflop(
    flops: Sequence[float],
    params: Sequence[float],
    loss: Sequence[float],
    tokens: Sequence[float] | None = None,
    *,
    robust: bool = False,
    predict: Sequence[float] = (),
) -> dict:
    """Hoffmann et al. 2022 Approach 2 (§3.2): per budget, a parabola of the loss in ln N through its runs (least
    squares; `robust`: Huber, see `_parabola`) whose vertex is N_opt and its loss; then N_opt = k·C^a and
    D_opt = k'·C^b by least squares on the logs of the budgets' optima.

    D_opt at a budget is C / (6 N_opt) without `tokens`. With `tokens` (a FLOP count other than 6ND, e.g. with
    attention, makes D differ from C/(6N)) it is read off the runs like N_opt: a least-squares line of ln D in ln N
    over the budget's runs, evaluated at the vertex (a line, not a parabola: ln D is linear in ln N at a fixed C).

    Refused, one line each: a budget with fewer than 3 runs (or model sizes), one whose parabola has no interior
    minimum (it opens downward, or its vertex lies outside the budget's range of N), fewer than 2 budgets."""
    columns = _check({"flops": flops, "params": params, "loss": loss, "tokens": tokens})
    raise_if(_predict_problems(predict))
    budgets = _budgets(columns["flops"])
    problems, per_budget = [], []
    for budget, runs in budgets:
        log_n, y = np.log(columns["params"][runs]), columns["loss"][runs]
        sizes = len(np.unique(log_n))
        if len(runs) < 3 or sizes < 3:
            count = f"{len(runs)} run{'s' * (len(runs) != 1)}"
            if len(runs) >= 3:
                count += f" but {sizes} model size{'s' * (sizes != 1)}"
            problems.append(f"budget {budget:.4g}: {count}; an IsoFLOP parabola needs at least 3")
            continue
        curvature, vertex, loss_min = _parabola(log_n, y, robust)
        if curvature <= 0:
            problems.append(
                f"budget {budget:.4g}: the loss is not convex in ln N over its {len(runs)} runs (the parabola "
                f"opens downward), so it has no minimum to read N_opt from"
            )
            continue
        if not log_n.min() < vertex < log_n.max():
            side = "larger" if vertex > log_n.max() else "smaller"
            problems.append(
                f"budget {budget:.4g}: the parabola's minimum, N = {math.exp(vertex):.4g}, lies outside the runs' "
                f"range of N [{math.exp(log_n.min()):.4g}, {math.exp(log_n.max()):.4g}]; add runs with {side} N"
            )
            continue
        if "tokens" in columns:
            slope, intercept = np.polyfit(log_n, np.log(columns["tokens"][runs]), 1)
            d_opt = math.exp(intercept + slope * vertex)
        else:
            d_opt = budget / (6 * math.exp(vertex))
        per_budget.append(
            {
                "flops": budget,
                "params": float(math.exp(vertex)),
                "tokens": float(d_opt),
                "loss": float(loss_min),
                "best_run_params": float(columns["params"][runs][np.argmin(y)]),
            }
        )
    if len(budgets) < 2:
        problems.append(
            f"{len(budgets)} budget ({budgets[0][0]:.4g} FLOPs); the power laws N_opt(C), D_opt(C) need at least 2"
        )
    raise_if(problems)
    c = np.array([b["flops"] for b in per_budget])
    params_coef, params_exponent = _power_law(c, np.array([b["params"] for b in per_budget]))
    tokens_coef, tokens_exponent = _power_law(c, np.array([b["tokens"] for b in per_budget]))
    result = {
        "method": "isoflop",
        "params": {"coef": params_coef, "exponent": params_exponent},
        "tokens": {"coef": tokens_coef, "exponent": tokens_exponent},
        "per_budget": per_budget,
        "predictions": [
            {
                "flops": float(budget),
                "params": params_coef * float(budget) ** params_exponent,
                "tokens": tokens_coef * float(budget) ** tokens_exponent,
            }
            for budget in predict
        ],
    }
    return _finite(result, "isoflop")


def _parabola(x: np.ndarray, y: np.ndarray, robust: bool = False) -> tuple[float, float, float]:
    """(curvature c2, vertex, value at the vertex) of y = c2·x² + c1·x + c0 fitted by least squares (in x centred,
    for conditioning). `robust`: Huber loss (scipy's least_squares) with the usual 1.345 σ threshold, σ from the
    median absolute deviation of the least-squares residuals; exact data (σ = 0) keep the least-squares fit."""
    centre = float(x.mean())
    u = x - centre
    design = np.stack([u * u, u, np.ones_like(u)], axis=1)
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    if robust:
        residuals = y - design @ coef
        sigma = 1.4826 * float(np.median(np.abs(residuals - np.median(residuals))))
        if sigma > 0:
            coef = least_squares(
                lambda c: design @ c - y,
                coef,
                jac=lambda c: design,
                loss="huber",
                f_scale=1.345 * sigma,
                xtol=1e-12,
                ftol=1e-12,
                gtol=1e-12,
            ).x
    c2, c1, c0 = (float(v) for v in coef)
    if c2 <= 0:
        return c2, math.nan, math.nan
    return c2, centre - c1 / (2 * c2), c0 - c1 * c1 / (4 * c2)


# -- Approach 3: the parametric law --------------------------------------------------------------------------------


def parametric(
    params: Sequence[float],
    tokens: Sequence[float],
    loss: Sequence[float],
    *,
    bootstrap: int = 0,
    seed: int = 0,
    predict: Sequence[float] = (),
    delta: float = HUBER_DELTA,
    grid: dict[str, Sequence[float]] | None = None,
    starts: int | None = None,
) -> dict:
    """L(N, D) = E + A/N^α + B/D^β as Hoffmann et al. 2022 Approach 3 (§3.3) fit it and Besiroglu et al. 2024
    (arXiv 2404.10102) replicate it: minimise the sum over runs of Huber_δ(LSE(a - α ln N, b - β ln D, e)
    - ln L), with A = e^a, B = e^b, E = e^e, by L-BFGS (scipy's L-BFGS-B, analytic gradient, tight tolerances:
    LBFGS_OPTIONS) from every point of `grid` (None: GRID, the paper's 4500), keeping the best.

    `starts`: run L-BFGS only from that many grid points, those with the lowest objective (evaluated on the whole
    grid at once); None, the default, runs all of them. The allocation under C = 6ND is that of
    `laws.Parametric.optimum`: N_opt = G (C/6)^a, D_opt = (C/6)^b / G.

    `bootstrap=K`: K resamples of the runs with replacement (numpy's default_rng(seed): deterministic), each
    fitted by L-BFGS from the full data's optimum (a warm start: the grid is searched once), give `ci`, 95%
    percentile intervals of E, A, B, alpha, beta, a and b; without it `ci` is None. `predict`: N_opt, D_opt and
    the law's loss there, for each budget C."""
    columns = _check({"params": params, "tokens": tokens, "loss": loss})
    problems = _predict_problems(predict)
    runs = len(columns["loss"])
    if runs < 5:
        problems.append(f"{runs} runs; the law's 5 parameters (E, A, B, alpha, beta) need at least 5")
    for name in ("params", "tokens"):
        if np.all(columns[name] == columns[name][0]):
            problems.append(f"every run has {name} {columns[name][0]:g}; the law needs runs of several {name}")
    if not (isinstance(bootstrap, (int, np.integer)) and bootstrap >= 0):
        problems.append(f"bootstrap {bootstrap}: give a number of resamples >= 0")
    if not (math.isfinite(delta) and delta > 0):
        problems.append(f"delta {delta}: the Huber threshold must be positive")
    if starts is not None and not (isinstance(starts, (int, np.integer)) and starts >= 1):
        problems.append(f"starts {starts}: give a positive number of L-BFGS starts, or None for the whole grid")
    raise_if(problems)
    data = (np.log(columns["params"]), np.log(columns["tokens"]), np.log(columns["loss"]), delta)

    inits = _grid_points(GRID if grid is None else grid)
    if starts is not None and starts < len(inits):
        inits = inits[np.argsort(_objective_on_grid(inits, *data), kind="stable")[:starts]]
    # L-BFGS-B's linear algebra is on 5-vectors, where BLAS threads only cost: on a busy 2-core machine its
    # OpenBLAS threads made the fit 15-40x slower
    with threadpool_limits(limits=1, user_api="blas"):
        best = None
        for x0 in inits:
            res = minimize(_objective, x0, args=data, jac=True, method="L-BFGS-B", options=LBFGS_OPTIONS)
            if best is None or res.fun < best.fun:
                best = res
        ci = _bootstrap(best.x, data, bootstrap, seed) if bootstrap else None
    a, b, e, alpha, beta = (float(v) for v in best.x)
    if not (alpha > 0 and beta > 0):
        raise ConfigError(
            f"the best fit has alpha {alpha:.3g} and beta {beta:.3g}: over these runs the loss does not fall with "
            f"both N and D, so the law gives no compute-optimal allocation"
        )
    law = Parametric(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)
    result = {
        "method": "parametric",
        "E": law.E,
        "A": law.A,
        "B": law.B,
        "alpha": alpha,
        "beta": beta,
        "huber_loss": float(best.fun),
        "allocation": {"a": beta / (alpha + beta), "b": alpha / (alpha + beta), "G": float(law.G)},
        "ci": ci,
    }
    if predict:
        result["predictions"] = []
        for budget in predict:
            n, d = law.optimum(float(budget))
            result["predictions"].append(
                {"flops": float(budget), "params": float(n), "tokens": float(d), "loss": float(law.loss(n, d))}
            )
    return _finite(result, "parametric")


def _grid_points(grid: dict[str, Sequence[float]]) -> np.ndarray:
    """(M, 5) starting points (a, b, e, alpha, beta): every combination of the grid's values."""
    axes = np.meshgrid(*(np.asarray(grid[k], dtype=float) for k in ("a", "b", "e", "alpha", "beta")), indexing="ij")
    return np.stack([axis.ravel() for axis in axes], axis=1)


def _objective(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Σ_runs Huber_δ(r) with r = LSE(a - α ln N, b - β ln D, e) - ln L, and its gradient in (a, b, e, α, β).

    With w the softmax of the three terms, ∂r/∂(a, b, e) = w and ∂r/∂(α, β) = -(w₁ ln N, w₂ ln D); Huber's
    derivative is r clipped to [-δ, δ], and its value psi·(r - psi/2) for psi = clip(r)."""
    a, b, e, alpha, beta = theta
    t1 = a - alpha * log_n  # (R,)
    t2 = b - beta * log_d
    m = np.maximum(t1, t2)
    np.maximum(m, e, out=m)
    w1, w2, w3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(e - m)
    total = w1 + w2 + w3
    r = np.log(total)
    r += m
    r -= log_l
    psi = np.clip(r, -delta, delta)
    value = psi @ r - 0.5 * (psi @ psi)
    p = psi / total  # Huber's derivative times the softmax's normaliser
    pw1, pw2 = p * w1, p * w2
    return float(value), np.array([pw1.sum(), pw2.sum(), p @ w3, -(pw1 @ log_n), -(pw2 @ log_d)])


def _objective_on_grid(
    thetas: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
) -> np.ndarray:
    """`_objective`'s value at each of the (M, 5) points at once, in chunks of about 250k (point, run) pairs."""
    values = []
    for chunk in np.array_split(thetas, max(1, len(thetas) * len(log_n) // 250_000)):
        a, b, e, alpha, beta = (chunk[:, i : i + 1] for i in range(5))  # (m, 1) each
        terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(chunk), len(log_n)))])
        m = terms.max(axis=0)  # (m, R)
        r = m + np.log(np.exp(terms - m).sum(axis=0)) - log_l
        psi = np.clip(r, -delta, delta)
        values.append((psi * (r - 0.5 * psi)).sum(axis=1))
    return np.concatenate(values)


def _bootstrap(theta: np.ndarray, data: tuple, resamples: int, seed: int) -> dict[str, list[float]]:
    """95% percentile intervals of the law's parameters and its allocation exponents over `resamples` resamples
    of the runs, each refitted by L-BFGS from `theta`, the full data's optimum."""
    log_n, log_d, log_l, delta = data
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(resamples):
        pick = rng.integers(0, len(log_l), size=len(log_l))
        args = (log_n[pick], log_d[pick], log_l[pick], delta)
        a, b, e, alpha, beta = minimize(
            _objective, theta, args=args, jac=True, method="L-BFGS-B", options=LBFGS_OPTIONS
        ).x
        fits.append([math.exp(e), math.exp(a), math.exp(b), alpha, beta, beta / (alpha + beta), alpha / (alpha + beta)])
    low, high = np.percentile(np.array(fits), [2.5, 97.5], axis=0)
    names = ("E", "A", "B", "alpha", "beta", "a", "b")
    return {name: [float(lo), float(hi)] for name, lo, hi in zip(names, low, high, strict=True)}


# -- hyperparameters of the best run per budget --------------------------------------------------------------------


def hyperparams(
    flops: Sequence[float],
    loss: Sequence[float],
    d_model: Sequence[float],
    n_layer: Sequence[float],
    n_head: Sequence[float],
    batch_size: Sequence[float],
    lr: Sequence[float],
    params: Sequence[float] | None = None,
    *,
    predict: Sequence[float] = (),
) -> dict:
    """Per budget the best (lowest-loss) run's shape, batch size and LR, each against compute as a power law
    y = k·C^e (least squares on the logs; a value constant over budgets is exactly e = 0), as in the CS336
    assignment 3 write-up (seed 002, §3: "d = 0.0260 * f^0.24"). The best runs' loss (and params, when given) get
    a power law too: a pure power law, no irreducible term, so a rough guide only.

    Each prediction gives the laws' raw values and a valid model: n_layer and n_head rounded to integers >= 1,
    batch_size to an integer >= 1, lr as it is, and d_model rounded to the nearest multiple of lcm(n_head, 8), at
    least one: the heads divide the width evenly and the width stays a multiple of 8 for the matmul kernels."""
    columns = _check(
        {
            "flops": flops,
            "loss": loss,
            "d_model": d_model,
            "n_layer": n_layer,
            "n_head": n_head,
            "batch_size": batch_size,
            "lr": lr,
            "params": params,
        }
    )
    problems = _predict_problems(predict)
    budgets = _budgets(columns["flops"])
    if len(budgets) < 2:
        problems.append(f"1 budget ({budgets[0][0]:.4g} FLOPs); power laws in compute need at least 2")
    raise_if(problems)
    names = [name for name in ("loss", *HYPERPARAMS, "params") if name in columns]
    best = []
    for budget, runs in budgets:
        i = runs[np.argmin(columns["loss"][runs])]
        best.append({"flops": budget, **{name: float(columns[name][i]) for name in names}})
    c = np.array([row["flops"] for row in best])
    laws = {}
    for name in names:
        coef, exponent = _power_law(c, np.array([row[name] for row in best]))
        laws[name] = {"coef": coef, "exponent": exponent}
    predictions = []
    for budget in predict:
        raw = {name: law["coef"] * float(budget) ** law["exponent"] for name, law in laws.items()}
        predictions.append({"flops": float(budget), "raw": raw, "model": valid_model(raw)})
    return _finite({"method": "hyperparams", "budgets": best, "laws": laws, "predictions": predictions}, "hyperparams")


def valid_model(raw: dict[str, float]) -> dict:
    """The nearest valid model to raw hyperparameters (see `hyperparams`)."""
    n_head = max(1, round(raw["n_head"]))
    step = math.lcm(n_head, 8)
    return {
        "d_model": step * max(1, round(raw["d_model"] / step)),
        "n_layer": max(1, round(raw["n_layer"])),
        "n_head": n_head,
        "batch_size": max(1, round(raw["batch_size"])),
        "lr": float(raw["lr"]),
    }


# -- `lm-lab fit` ---------------------------------------------------------------------------------------------------

COLUMNS = {"isoflop": ISOFLOP_COLUMNS, "parametric": PARAMETRIC_COLUMNS, "hyperparams": HYPERPARAMS_COLUMNS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`lm-lab fit`'s flags."""
    parser.add_argument("--method", choices=sorted(COLUMNS), required=True, help="which law to fit")
    parser.add_argument(
        "--input",
        required=True,
        metavar="FILE.csv",
        help="one run per row; isoflop: flops,params,loss[,tokens]; parametric: params,tokens,loss; "
        "hyperparams: flops,loss,d_model,n_layer,n_head,batch_size,lr[,params]",
    )
    parser.add_argument("--predict", type=float, nargs="+", default=[], metavar="C", help="budgets to predict, FLOPs")
    parser.add_argument("--robust", action="store_true", help="isoflop: Huber parabolas instead of least squares")
    parser.add_argument(
        "--bootstrap", type=int, default=0, metavar="K", help="parametric: 95%% intervals from K resamples (default 0)"
    )
    parser.add_argument("--plot", metavar="FILE.png", help="draw the fit into this PNG")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")


def command(args: argparse.Namespace) -> dict:
    """`lm-lab fit`: read the table, fit, draw (`"plot": path` in the result) and return the JSON-able result."""
    problems = []
    if args.robust and args.method != "isoflop":
        problems.append(f"--robust applies to --method isoflop, not {args.method}")
    if args.bootstrap and args.method != "parametric":
        problems.append(f"--bootstrap applies to --method parametric, not {args.method}")
    if args.bootstrap < 0:
        problems.append(f"--bootstrap {args.bootstrap}: give a number of resamples >= 0")
    predict = list(args.predict or [])
    problems += _predict_problems(predict)
    if args.plot and not Path(args.plot).resolve().parent.is_dir():
        problems.append(f"--plot {args.plot}: no folder {Path(args.plot).resolve().parent}")
    raise_if(problems)
    table = read_table(args.input, *COLUMNS[args.method])
    if args.method == "isoflop":
        result = isoflop(**table, robust=args.robust, predict=predict)
    elif args.method == "parametric":
        result = parametric(**table, bootstrap=args.bootstrap, seed=args.seed, predict=predict)
    else:
        result = hyperparams(**table, predict=predict)
    if args.plot:
        from lm_lab.scaling import plots

        if args.method == "hyperparams":
            plots.hyperparams(result, args.plot)
        else:
            getattr(plots, args.method)(result, table, args.plot)
        result["plot"] = str(args.plot)
    return result
