"""Studies as sweeps: `lm-lab sweep isoflop` (an IsoFLOP grid as one Hydra multirun) and `lm-lab sweep
cooldowns` (scaling-law points from cooldowns forked off one constant-LR run per model, Hägele et al. 2024 §4).

IsoFLOP (Hoffmann et al. 2022, Approach 2): for each budget C, model sizes spanning x1/4 to x4 of the law's
N_opt(C) (geometrically spaced; each the family's nearest valid shape, `lm_lab.scaling.planner.shape`), each
trained for exactly the steps its budget pays for (`budget=flops budget.flops=C`). The points are written as
config-group options `SWEEP_DIR/conf/isoflop_point/pNN.yaml` and swept by one `python run.py -m` over
`+isoflop_point=p00,p01,...`, so any Hydra launcher (local, SLURM via hydra/launcher=slurm) runs them and every
run's config.yaml states its point. `lm-lab report SWEEP_DIR --csv runs.csv` then `lm-lab fit --method isoflop
--input runs.csv` close the loop.

Cooldowns: per model one constant-LR run (warmup, then the peak LR) with step snapshots; for each total length
T_i a cooldown of `frac` x T_i forked at step (1 - frac) x T_i (`lm-lab cooldowns`, in-process). Each fork is a
run of T_i steps whose loss is a cosine-quality point (N, D_i) (their Fig. 6), for the price of the stable run
to (1 - frac) x T_max plus the cooldowns: "the last run + 20% of every other" (their §4.1), against the sum of
every T_i for independent cosine runs.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from lm_lab.config import RunConfig, compose
from lm_lab.errors import ConfigError
from lm_lab.models import ModelConfig, param_count
from lm_lab.results import Results

RUN_PY = Path(__file__).resolve().parents[2] / "run.py"
SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")  # n_layer x d_model x n_head


# -- IsoFLOP ---------------------------------------------------------------------------------------------------


def isoflop_targets(n_opt: float, points: int, span: float = 4.0) -> list[float]:
    """`points` parameter counts spaced geometrically from N_opt / span to N_opt x span."""
    if points == 1:
        return [n_opt]
    return [n_opt * span ** (2 * i / (points - 1) - 1) for i in range(points)]


def isoflop_shapes(
    flops: float, law, points: int, *, vocab_size: int, seq_len: int, head_dim: int, span: float = 4.0
) -> list[ModelConfig]:
    """The distinct valid shapes nearest each target size of one budget, smallest first."""
    from lm_lab.scaling.planner import shape

    n_opt, _ = law.optimum(flops)
    found: dict[tuple, ModelConfig] = {}
    for target in isoflop_targets(n_opt, points, span):
        cfg, _ = shape(target, vocab_size=vocab_size, seq_len=seq_len, tolerance=0.1, head_dim=head_dim)
        found.setdefault((cfg.n_layer, cfg.d_model, cfg.n_head), cfg)
    return sorted(found.values(), key=param_count)


def _point_yaml(flops: float, cfg: ModelConfig, index: int) -> str:
    return (
        "# @package _global_\n"
        f"# IsoFLOP point {index}: {param_count(cfg):,} parameters at {flops:.4g} FLOPs (written by lm-lab sweep isoflop)\n"
        + OmegaConf.to_yaml(
            {
                "model": {
                    "name": f"isoflop_{cfg.n_layer}x{cfg.d_model}",
                    "n_layer": cfg.n_layer,
                    "n_head": cfg.n_head,
                    "d_model": cfg.d_model,
                    "d_ff": None,
                    "block_size": cfg.block_size,  # = seq_len: no position embeddings the runs never use
                },
                "budget": {"flops": float(flops)},  # experiment=isoflop chose budget=flops
            }
        )
    )


def sweep_isoflop(args: argparse.Namespace) -> dict:
    from lm_lab.scaling.laws import law, load_fit

    budgets = sorted(args.budgets)
    if args.points < 3:
        raise ConfigError(f"--points {args.points}: an IsoFLOP parabola needs at least 3 sizes per budget")
    if not args.span > 1:
        raise ConfigError(f"--span {args.span}: give a factor above 1 (the sizes run from N_opt/span to N_opt*span)")
    chosen = load_fit(args.fit) if args.fit else law(args.law or "chinchilla")
    base = ["experiment=isoflop", *args.overrides]
    cfg = compose(base)
    plain = OmegaConf.to_container(cfg, resolve=True)
    seq_len = args.seq_len or plain["train"]["seq_len"]
    if args.seq_len:
        base.append(f"train.seq_len={seq_len}")
    vocab = plain["model"].get("vocab_size") or plain["tokenizer"]["vocab_size"]
    sweep_dir = Path(args.dir or f"multirun/isoflop/{_stamp()}").absolute()
    points, problems = [], []
    for flops in budgets:
        shapes = isoflop_shapes(
            flops, chosen, args.points, vocab_size=vocab, seq_len=seq_len, head_dim=args.head_dim, span=args.span
        )
        if len(shapes) < 3:
            problems.append(
                f"budget {flops:.3g}: only {len(shapes)} distinct shapes with head size {args.head_dim} span x1/{args.span:g} "
                f"to x{args.span:g} of N_opt; lower --head-dim or raise --span"
            )
        for model in shapes:
            points.append((flops, model))
    if problems:
        raise ConfigError(problems)
    rows = []
    for i, (flops, model) in enumerate(points):
        overrides = [
            f"model.n_layer={model.n_layer}",
            f"model.n_head={model.n_head}",
            f"model.d_model={model.d_model}",
            "model.d_ff=null",
            f"model.block_size={model.block_size}",
            "budget=flops",
            f"budget.flops={flops}",
        ]
        try:  # every point checked (and its steps derived) before anything is written or run
            run = RunConfig.from_dict(OmegaConf.to_container(compose([*base, *overrides]), resolve=True)).derive()
        except ConfigError as e:
            problems += [f"point {model.n_layer}x{model.d_model} at {flops:.3g} FLOPs: {p}" for p in e.problems]
            continue
        rows.append(
            {
                "point": f"p{i:02d}",
                "flops": flops,
                "n_layer": model.n_layer,
                "d_model": model.d_model,
                "n_head": model.n_head,
                "params": param_count(model),
                "params_opt": chosen.optimum(flops)[0],
                "steps": run.train.max_steps,
                "tokens": run.train.max_steps * run.tokens_per_step,
            }
        )
    if problems:
        raise ConfigError(problems)
    command = [
        sys.executable,
        str(RUN_PY),
        "-m",
        *base,
        f"hydra.searchpath=[file://{sweep_dir / 'conf'}]",
        f"+isoflop_point={','.join(r['point'] for r in rows)}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    out = {"dir": str(sweep_dir), "law": chosen.name, "points": rows, "command": shlex.join(command)}
    print(_points_table(rows), file=sys.stderr)
    if args.dry_run:
        return out
    if not RUN_PY.is_file():
        raise ConfigError(f"{RUN_PY} not found: run lm-lab sweep from a checkout of lm_lab (pip install -e .)")
    folder = sweep_dir / "conf" / "isoflop_point"
    folder.mkdir(parents=True, exist_ok=True)
    for r, (flops, model) in zip(rows, points, strict=True):
        (folder / f"{r['point']}.yaml").write_text(_point_yaml(flops, model, int(r["point"][1:])))
    print(f"running {len(rows)} points as one multirun in {sweep_dir}", file=sys.stderr)
    with open(sweep_dir / "sweep.log", "a") as log_file:  # stdout: the JSON summary only
        status = subprocess.call(command, stdout=log_file)  # its logs on this stderr
    out["exit_status"] = status
    if status:
        raise ConfigError(
            f"the multirun exited with status {status}; see {sweep_dir / 'sweep.log'} (the same command resumes it)"
        )
    return out


def _points_table(rows: list[dict]) -> str:
    lines = ["budget      point  n_layer  d_model  n_head  params      vs N_opt  steps    tokens"]
    for r in rows:
        lines.append(
            f"{r['flops']:<10.3g}  {r['point']:<5}  {r['n_layer']:<7}  {r['d_model']:<7}  {r['n_head']:<6}  "
            f"{r['params']:<10,}  x{r['params'] / r['params_opt']:<7.2f}  {r['steps']:<7}  {r['tokens']:,}"
        )
    return "\n".join(lines)


def _stamp() -> str:
    import time

    return time.strftime("%Y-%m-%d_%H-%M-%S")


# -- scaling laws from cooldowns ---------------------------------------------------------------------------------


def fork_plan(lengths: list[int], frac: float) -> list[tuple[int, int, int]]:
    """(total steps T, fork step, cooldown steps) per length: the cooldown takes `frac` of T (rounded)."""
    out = []
    for total in sorted(set(lengths)):
        cooldown = max(1, round(frac * total))
        out.append((total, total - cooldown, cooldown))
    return out


def cooldown_accounting(points: list[dict], stable_flops: float) -> dict:
    """FLOPs of the cooldown study (the stable run + each cooldown's own steps) against independent runs of
    every length from scratch (Hägele et al. §4.1), per model and in total."""
    forks = sum(p["flops"] - p["fork_step"] * p["flops"] / p["steps"] for p in points)
    independent = sum(p["flops"] for p in points)
    spent = stable_flops + forks
    return {
        "flops": spent,
        "flops_independent": independent,
        "saving": 1 - spent / independent if independent else None,
    }


def _model_overrides(item: str) -> list[str]:
    match = SHAPE.match(item)
    if match:
        n_layer, d_model, n_head = (int(g) for g in match.groups())
        return [
            f"model.n_layer={n_layer}",
            f"model.d_model={d_model}",
            f"model.n_head={n_head}",
            "model.d_ff=null",
            f"model.name=m{n_layer}x{d_model}",
        ]
    return [f"model={item}"]


def sweep_cooldowns(args: argparse.Namespace) -> dict:
    import contextlib

    from lm_lab.cli import cooldowns as fork_cooldowns
    from lm_lab.launch import fit_from_config

    if not 0 < args.frac < 1:
        raise ConfigError(f"--frac {args.frac}: the cooldown's share of each length must be in (0, 1), e.g. 0.2")
    plan = fork_plan(args.lengths, args.frac)
    forks = [f for _, f, _ in plan]
    every = math.gcd(*forks)
    sweep_dir = Path(args.dir or f"multirun/cooldowns/{_stamp()}").absolute()
    models = {}
    for item in args.models:
        stable = [
            *_model_overrides(item),
            "scheduler=constant",
            f"scheduler.warmup_steps={args.warmup}",
            "callbacks=with_snapshots",
            f"callbacks.snapshots.every_n_train_steps={every}",
            f"train.max_steps={max(forks)}",
            *args.overrides,
        ]
        cfg = compose([*stable, f"run_dir={sweep_dir / item / 'stable'}"])
        run = RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True)).derive()  # checked before any work
        if min(forks) <= run.scheduler.warmup_steps:
            raise ConfigError(
                f"--lengths: the shortest fork is at step {min(forks)}, inside the warmup of {run.scheduler.warmup_steps} "
                f"steps; use longer lengths or a shorter --warmup"
            )
        models[item] = (cfg, stable)
    out = {"dir": str(sweep_dir), "forks": [{"steps": t, "fork_step": f, "cooldown_steps": c} for t, f, c in plan]}
    if args.dry_run:
        out["stable_runs"] = {item: stable for item, (_, stable) in models.items()}
        return out
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    rows, accounting = [], {}
    for item, (cfg, stable) in models.items():
        stable_dir = sweep_dir / item / "stable"
        print(f"{item}: the constant-LR run to step {max(forks)} in {stable_dir}", file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):
            source = fit_from_config(cfg, stable)
        if not source.finished:
            raise ConfigError(f"{item}: the stable run stopped early ({source.stop_reason}: {source.failure})")
        points = []
        for _, fork, cooldown in plan:
            forked = fork_cooldowns(
                argparse.Namespace(
                    run_dir=str(stable_dir),
                    step=fork,
                    lengths=[cooldown],
                    shape=args.shape,
                    final_lr_frac=0.0,
                    dry_run=False,
                    overrides=list(args.fork_overrides),
                )
            )
            result = Results.load(Path(forked["sweep"]) / f"cooldown{cooldown}")
            points.append(
                {
                    "model": item,
                    "params": result.params,
                    "tokens": result.tokens,
                    "loss": result.val_loss,
                    "flops": result.flops,
                    "steps": result.steps,
                    "fork_step": fork,
                    "cooldown_steps": cooldown,
                    "run": str(Path(forked["sweep"]) / f"cooldown{cooldown}"),
                }
            )
        rows += points
        accounting[item] = cooldown_accounting(points, source.flops)
    csv_path = sweep_dir / "points.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    total = {k: sum(a[k] for a in accounting.values()) for k in ("flops", "flops_independent")}
    total["saving"] = 1 - total["flops"] / total["flops_independent"]
    out.update(csv=str(csv_path), points=rows, accounting={"per_model": accounting, "total": total})
    return out


# -- the command line ------------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive numbers separated by commas, e.g. 1e15,3e15,1e16")
    return values


def _names(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lm_lab.cli import _int_list

    sub = parser.add_subparsers(dest="study", required=True)
    p = sub.add_parser("isoflop", help="an IsoFLOP grid: sizes around N_opt at each budget, as one Hydra multirun")
    p.add_argument("--budgets", type=_floats, required=True, help="FLOP budgets, e.g. 1e15,3e15,1e16")
    p.add_argument("--points", type=int, default=5, help="model sizes per budget (default 5)")
    p.add_argument("--span", type=float, default=4.0, help="sizes from N_opt/SPAN to N_opt*SPAN (default 4)")
    p.add_argument("--law", help="the law that centres the grid: chinchilla (default), hoffmann, epoch")
    p.add_argument("--fit", help="or a JSON law from `lm-lab fit`")
    p.add_argument("--seq-len", type=int, default=None, help="training sequence length (default the experiment's)")
    p.add_argument("--head-dim", type=int, default=64, help="head size of the shapes (default 64)")
    p.add_argument("--dir", help="the sweep folder (default multirun/isoflop/<time>)")
    p.add_argument("--dry-run", action="store_true", help="print the points and the command, run nothing")
    p.add_argument("overrides", nargs="*", help="run.py overrides for every point, e.g. tokenizer=bytes")
    p.set_defaults(func=sweep_isoflop)
    p = sub.add_parser("cooldowns", help="scaling-law points from cooldowns forked off one constant-LR run per model")
    p.add_argument("--models", type=_names, required=True, help="conf/model names or LxDxH shapes, e.g. 2x64x2,4x128x4")
    p.add_argument("--lengths", type=_int_list, required=True, help="total steps of the points, e.g. 500,1000,2000")
    p.add_argument("--frac", type=float, default=0.2, help="each cooldown's share of its length (default 0.2)")
    p.add_argument("--shape", default="1-sqrt", help="cooldown shape (default 1-sqrt)")
    p.add_argument("--warmup", type=int, default=300, help="warmup steps of the stable runs (default 300)")
    p.add_argument(
        "--fork-override",
        dest="fork_overrides",
        action="append",
        default=[],
        help="an override for the forks only (repeatable)",
    )
    p.add_argument("--dir", help="the study folder (default multirun/cooldowns/<time>)")
    p.add_argument("--dry-run", action="store_true", help="print the stable runs and forks, run nothing")
    p.add_argument("overrides", nargs="*", help="run.py overrides for every run, e.g. tokenizer=bytes")
    p.set_defaults(func=sweep_cooldowns)
