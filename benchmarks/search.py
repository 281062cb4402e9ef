"""The six search strategies of `lm-lab search` on the synthetic objective: best loss found vs FLOPs spent.

    python benchmarks/search.py [--space gpt2_budget] [--law epoch | --law FIT.json] [--trials 40] [--seeds 5]
                                [--noise 0.02] [--strategies tpe gp ...] [--out DIR]

Every strategy searches the same space at the same total budget (`--trials` x the space's trial_flops) on
`--objective law:...` (no training: `LawObjective`), once per seed. A trial's observed loss carries Gaussian
noise of sd `--noise`; a strategy is scored by the noiseless loss of its incumbent (the trial with the lowest
observed loss so far), so a lucky noise draw earns nothing. The reference is the space's true optimum: the
shape parameters' grid with every penalised setting at its penalty's optimum (the penalties are separable and
zero there). Prints a table (median and mean ± sd of the incumbent's true loss at 25/50/100% of the budget)
and writes `search.png` (median over seeds against FLOPs spent, the interquartile range shaded) and
`search.json` (every curve) to `--out` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna

from lm_lab.scaling.laws import LAWS, load_fit
from lm_lab.scaling.search import SAMPLERS, LawObjective, Space, run_search

FRACTIONS = (0.25, 0.5, 1.0)


def oracle(objective: LawObjective, space: Space, limit: int = 50_000) -> tuple[float, dict] | None:
    """The noiseless optimum: penalised settings at their optima (when inside the range), the rest on the grid."""
    penalised = {p.key: p.optimum for p in space.synthetic}
    axes = {}
    for key, param in space.params.items():
        best = penalised.get(key)
        if best is not None and param.type == "categorical":
            best = next((c for c in param.choices if c == best), None)
        elif best is not None:
            best = int(best) if param.type == "int" and best == int(best) else best
            best = best if param.low <= best <= param.high and (param.type == "float" or type(best) is int) else None
        axes[key] = [best] if best is not None else param.values()
    if np.prod([len(v) for v in axes.values()]) > limit:
        return None
    points = (dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values()))
    scored = ((objective.noiseless(p), p) for p in points)
    return min(((v, p) for v, p in scored if v is not None), key=lambda vp: vp[0])


def curve(study: optuna.Study, objective: LawObjective) -> list[tuple[float, float]]:
    """(FLOPs spent, noiseless loss of the incumbent) after each finished trial, in trial order."""
    spent, best_seen, incumbent, out = 0.0, float("inf"), None, []
    for t in sorted(study.trials, key=lambda t: t.number):
        spent += t.user_attrs.get("flops", 0.0)
        if t.value is not None and t.value < best_seen:
            best_seen, incumbent = t.value, objective.noiseless(t.params)
        if incumbent is not None:
            out.append((spent, incumbent))
    return out


def at(points: list[tuple[float, float]], flops: float) -> float:
    """The incumbent's loss once `flops` were spent (the last point within them)."""
    within = [loss for spent, loss in points if spent <= flops * (1 + 1e-9)]
    return within[-1] if within else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="gpt2_budget", help="a conf/search name or YAML file")
    parser.add_argument("--law", default="epoch", help="epoch, hoffmann, or a parametric FIT.json")
    parser.add_argument("--trials", type=int, default=40, help="the total budget in trials' worth of FLOPs")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.02, help="sd of the observed loss (nats)")
    parser.add_argument("--strategies", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--out", default=None, help="where search.png and search.json go (default: a temp folder)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("lm_lab.search").setLevel(logging.WARNING)

    space = Space.load(args.space)
    law = LAWS[args.law] if args.law in LAWS else load_fit(args.law)
    budget = args.trials * space.trial_flops
    reference = LawObjective(space, law)
    best = oracle(reference, space)
    print(f"space {space.name}: {list(space.params)}; {space.trial_flops:.3g} FLOPs per trial, budget {budget:.3g}")
    if best is not None:
        print(f"true optimum {best[0]:.4f} at {best[1]}")
    curves: dict[str, list[list[tuple[float, float]]]] = {}
    rows = []
    for strategy in args.strategies:
        started, trials = time.time(), []
        for seed in range(args.seeds):
            objective = LawObjective(space, law, noise=args.noise, seed=seed)
            result = run_search(
                space, sampler=strategy, trials=10**6, objective=objective, seed=seed, storage=None, budget_flops=budget
            )
            curves.setdefault(strategy, []).append(curve(result.study, objective))
            trials.append(len(result.study.trials))
        row = {"strategy": strategy, "trials": statistics.mean(trials), "seconds": time.time() - started}
        for f in FRACTIONS:
            row[f] = [at(c, f * budget) for c in curves[strategy]]
        rows.append(row)
        print(f"  {strategy}: {time.time() - started:.0f} s", flush=True)

    head = "| strategy | trials | " + " | ".join(f"best at {int(f * 100)}%: median (mean ± sd)" for f in FRACTIONS)
    print(f"\n{args.seeds} seeds, noise sd {args.noise:g}; the incumbent's true loss (lower is better)\n")
    print(head + " |")
    print("|---|---|" + "---|" * len(FRACTIONS))
    for row in rows:
        cells = []
        for f in FRACTIONS:
            v = [x for x in row[f] if np.isfinite(x)]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.median(v):.4f} ({statistics.mean(v):.4f} ± {sd:.4f})" if v else "-")
        print(f"| {row['strategy']} | {row['trials']:.1f} | " + " | ".join(cells) + " |")

    out = Path(args.out or tempfile.mkdtemp(prefix="search-benchmark-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps({"optimum": best[0] if best else None, "curves": curves}))
    plot(curves, budget, best[0] if best else None, out / "search.png", title=f"{space.name}, law {law.name}")
    print(f"\nwrote {out / 'search.png'} and {out / 'search.json'}")


def plot(curves: dict, budget: float, optimum: float | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, budget, 200)[1:]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, runs in curves.items():
        values = np.array([[at(c, x) for x in grid] for c in runs])
        ok = ~np.isnan(values).any(axis=0)
        median, lo, hi = (np.percentile(values[:, ok], q, axis=0) for q in (50, 25, 75))
        ax.plot(grid[ok], median, label=strategy)
        ax.fill_between(grid[ok], lo, hi, alpha=0.15)
    if optimum is not None:
        ax.axhline(optimum, color="k", linestyle="--", linewidth=0.8, label="true optimum")
    ax.set_xlabel("FLOPs spent")
    ax.set_ylabel("true loss of the incumbent (nats)")
    ax.set_title(f"{title}: median over seeds, interquartile range shaded")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
