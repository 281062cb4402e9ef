"""`lm-lab report DIR`: every run under DIR as one row, seeds grouped with their spread, settings compared
against seed noise.

A run is any folder holding a `results.json` (a Hydra multirun's numbered folders, a tree of run folders, a
search's trials, a stable run's cooldown forks). Each row holds the config fields that differ between the
runs, then the results. Runs that differ only by `train.seed` form a group: mean, standard deviation, n and
a 95% Student-t interval of the metric. `--by FIELD` compares the values of FIELD among groups that agree on
every other field, by Welch's t-test (unequal variances) on the seeds' metrics: a difference with p >= alpha
is marked as within seed noise — dropout, batch-size and cooldown ablations often are.

The CSV (`--csv FILE`) is what `lm-lab fit` reads: one row per finished run, `flops` being the run's FLOP
budget when it had one (an IsoFLOP sweep's runs share it exactly; their spent FLOPs differ by a fraction of a
step) and its spent FLOPs otherwise, `loss` its final validation loss.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from lm_lab.errors import ConfigError
from lm_lab.results import Results

SEED = "train.seed"
NOT_SETTINGS = ("run_dir", "data.cache_dir", "data.hf_cache_dir", "world_size")
"""Config keys that say where a run lives, not what it trains."""
PATH_SUFFIXES = (".dirpath", ".save_dir", ".path_prefix")
RESULT_COLUMNS = (
    "params",
    "params_non_embedding",
    "tokens",
    "flops_spent",
    "flops_chinchilla",
    "budget_flops",
    "val_loss",
    "val_bpb",
    "best_val_loss",
    "val_loss_swa",
    "val_loss_ema",
    "steps",
    "stop_reason",
    "d_model",
    "n_layer",
    "n_head",
    "batch_size",
    "lr",
    "seed",
    "train_seconds",
)
METRICS = ("val_loss", "val_bpb", "best_val_loss", "val_loss_swa", "val_loss_ema")


@dataclass
class Run:
    path: Path
    name: str
    """The run folder relative to the report's root."""
    settings: dict
    """The run's config, flattened to dotted keys."""
    results: Results

    def row(self) -> dict:
        r = self.results
        out = {k: getattr(r, k) for k in RESULT_COLUMNS if hasattr(r, k)}
        out["flops_spent"] = r.flops
        out["flops"] = r.budget_flops if r.budget_flops is not None else r.flops  # in budget_flop_count's convention
        out["loss"] = r.val_loss
        return out


@dataclass
class Group:
    key: tuple
    """The values of the varying fields (the seed left out)."""
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [v for run in self.runs if (v := getattr(run.results, metric)) is not None and math.isfinite(v)]


def flatten(tree, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become their JSON text (hashable, printable)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def load_runs(root: str | Path) -> tuple[list[Run], list[Path]]:
    """The runs under `root` (sorted by folder) and the folders with a results.json that cannot be read."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder; give the folder of a sweep, a search or a tree of runs")
    runs, unreadable = [], []
    for file in sorted(root.rglob("results.json"), key=_natural):
        folder = file.parent
        try:
            results = Results.load(folder)
        except ConfigError:
            unreadable.append(folder)
            continue
        config = folder / "config.yaml"
        settings = flatten(OmegaConf.to_container(OmegaConf.load(config))) if config.is_file() else {}
        name = "." if folder == root else str(folder.relative_to(root))
        runs.append(Run(folder, name, settings, results))
    if not runs:
        raise ConfigError(f"no lm_lab runs under {root} (no readable results.json in it or below it)")
    return runs, unreadable


def _natural(path: Path) -> list:
    """Sort key: multirun folder 10 after 9, not after 1."""
    return [[int(t) if t.isdigit() else t for t in re.split(r"(\d+)", part)] for part in path.parts]


def varying(runs: list[Run]) -> list[str]:
    """The config fields whose values differ between the runs (where they live left out)."""
    keys = sorted({k for run in runs for k in run.settings})
    out = []
    for key in keys:
        if key in NOT_SETTINGS or key.endswith(PATH_SUFFIXES):
            continue
        if len({json.dumps(run.settings.get(key), sort_keys=True, default=str) for run in runs}) > 1:
            out.append(key)
    return out


def group_seeds(runs: list[Run], fields: list[str]) -> list[Group]:
    """Runs that agree on every varying field but the seed, in order of first appearance."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        key = tuple(run.settings.get(f) for f in fields if f != SEED)
        groups.setdefault(key, Group(key)).runs.append(run)
    return list(groups.values())


def seed_stats(values: list[float]) -> dict:
    """Mean, sample standard deviation, n and the 95% Student-t interval of the mean (None where n < 2)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0, "ci95": None}
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "sd": None, "n": 1, "ci95": None}
    sd = statistics.stdev(values)
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "ci95": [mean - half, mean + half]}


def welch(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test that two settings' seed means are equal (None below 2 seeds each;
    1.0 when neither side varies and the means are equal)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def compare(groups: list[Group], fields: list[str], by: str, metric: str, alpha: float = 0.05) -> list[dict]:
    """For each set of groups that agree on every varying field but `by` (and the seed), every value of `by`
    against the best one (lowest mean metric): the difference, Welch's p and whether it exceeds seed noise."""
    if by not in fields:
        raise ConfigError(f"--by {by}: the runs do not differ in it; fields that differ: {', '.join(fields) or 'none'}")
    others = [f for f in fields if f != SEED]
    at = others.index(by)
    sets: dict[tuple, list[Group]] = {}
    for g in groups:
        sets.setdefault(g.key[:at] + g.key[at + 1 :], []).append(g)
    out = []
    for rest, members in sets.items():
        scored = [(g, g.values(metric)) for g in members if g.values(metric)]
        if len(scored) < 2:
            continue
        best, best_values = min(scored, key=lambda gv: statistics.fmean(gv[1]))
        for g, values in scored:
            if g is best:
                continue
            p = welch(values, best_values)
            out.append(
                {
                    "context": dict(zip([f for f in others if f != by], rest, strict=True)),
                    "field": by,
                    "best": best.key[at],
                    "other": g.key[at],
                    "difference": statistics.fmean(values) - statistics.fmean(best_values),
                    "p_value": p,
                    "n": [len(values), len(best_values)],
                    "verdict": "n/a (fewer than 2 seeds)"
                    if p is None
                    else ("significant" if p < alpha else "within seed noise"),
                }
            )
    return out


def report(root: str | Path, by: list[str] = (), metric: str = "val_loss", alpha: float = 0.05) -> dict:
    """The report of every run under `root` as plain data (see the module docstring)."""
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric}: choose one of {', '.join(METRICS)}")
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha {alpha}: give a significance level in (0, 1), e.g. 0.05")
    runs, unreadable = load_runs(root)
    fields = varying(runs)
    groups = group_seeds(runs, fields)
    rows = [{"run": r.name, **{f: r.settings.get(f) for f in fields}, **r.row()} for r in runs]
    grouped = []
    for g in groups:
        first = g.runs[0].results
        grouped.append(
            {
                **dict(zip([f for f in fields if f != SEED], g.key, strict=True)),
                "params": first.params,
                "tokens": first.tokens,
                "flops": first.flops,
                metric: seed_stats(g.values(metric)),
                "seeds": [r.results.seed for r in g.runs],
                "runs": [r.name for r in g.runs],
            }
        )
    return {
        "root": str(root),
        "metric": metric,
        "fields": fields,
        "runs": rows,
        "groups": grouped,
        "comparisons": {b: compare(groups, fields, b, metric, alpha) for b in by},
        "unfinished": [r.name for r in runs if not r.results.finished],
        "unreadable": [str(p) for p in unreadable],
    }


def write_csv(rows: list[dict], path: str | Path, finished: set[str]) -> int:
    """The finished runs' rows as CSV (what `lm-lab fit` reads); returns how many were written."""
    keep = [r for r in rows if r["run"] in finished and r["loss"] is not None]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in keep)
    return len(keep)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header, *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(out: dict) -> str:
    """The report as text tables: runs, seed groups, comparisons."""
    fields, metric = out["fields"], out["metric"]
    shown = ["val_loss", "val_bpb", "params", "tokens", "flops_spent", "steps", "stop_reason"]
    parts = [f"{len(out['runs'])} runs under {out['root']}; fields that differ: {', '.join(fields) or 'none'}", ""]
    parts.append(
        _table(
            ["run", *fields, *shown], [[r["run"], *(r[f] for f in fields), *(r[k] for k in shown)] for r in out["runs"]]
        )
    )
    settings = [f for f in fields if f != SEED]
    if len(out["groups"]) < len(out["runs"]):
        rows = []
        for g in out["groups"]:
            s = g[metric]
            ci = f"[{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]" if s["ci95"] else "-"
            rows.append([*(g[f] for f in settings), s["n"], s["mean"], s["sd"], ci])
        parts += ["", f"seeds grouped ({metric}):", _table([*settings, "n", "mean", "sd", "95% interval"], rows)]
    for by, comparisons in out["comparisons"].items():
        rows = [
            [*(c["context"].values()), c["other"], c["best"], c["difference"], c["p_value"], c["verdict"]]
            for c in comparisons
        ]
        context = [f for f in settings if f != by]
        parts += [
            "",
            f"--by {by} ({metric}; Welch's t-test against the best value):",
            _table([*context, by, "best", "difference", "p", "verdict"], rows) if rows else "  nothing to compare",
        ]
    if out["unfinished"]:
        parts += ["", f"not finished (left out of the CSV): {', '.join(out['unfinished'])}"]
    if out["unreadable"]:
        parts += ["", f"unreadable results.json: {', '.join(out['unreadable'])}"]
    return "\n".join(parts)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="a sweep's, a search's or any folder of runs (searched recursively)")
    p.add_argument("--csv", help="write one row per finished run here (the input of `lm-lab fit`)")
    p.add_argument("--by", nargs="+", default=[], metavar="FIELD", help="compare the values of these config fields")
    p.add_argument("--metric", default="val_loss", help=f"what groups and comparisons use: {', '.join(METRICS)}")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the comparisons (0.05)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def command(args: argparse.Namespace) -> dict | str:
    out = report(args.directory, by=args.by, metric=args.metric, alpha=args.alpha)
    if args.csv:
        finished = {r["run"] for r in out["runs"]} - set(out["unfinished"])
        out["csv"] = str(args.csv)
        out["csv_rows"] = write_csv(out["runs"], args.csv, finished)
    if args.json:
        return out
    text = render(out)
    if args.csv:
        text += f"\n\n{out['csv_rows']} rows written to {args.csv}"
    return text
