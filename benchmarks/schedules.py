"""Cosine vs WSD, each at its own best peak LR (Hägele et al. 2024, Fig. 3/4); the cooldown's length and shape
(their §3); windowed SWA against a cooldown (their §5). gpt2_tiny on the embedded corpus, in-process `fit`.

    python benchmarks/schedules.py [--part lr|cooldown|swa|all] [--steps 200] [--seeds 1337 1338]
                                   [--lrs 1.5e-3 2.1e-3 3e-3 4.2e-3] [--out DIR]

- `lr`: cosine (to 10%) and WSD (a 20% 1-sqrt cooldown to 0) at every peak LR x seed, with the same warmup
  (10%), model, data order, steps and tokens. A best LR at an end of the grid extends it by one LR past that
  end (at most `--max-extend` times per side). Prints the loss per (schedule, LR) as mean ± sd over seeds, each
  schedule's best LR, and best against best with the seed spread and Welch's t-test.
- `cooldown`: from ONE stable run (constant LR, WSD's best LR, the first seed), cooldowns of 5/10/20/40% of
  `--steps` in 1-sqrt and linear, each forked where it must start to end at `--steps` (as `lm-lab cooldowns`
  forks them); and the check that a fork equals the single WSD run it stands for.
- `swa`: at every LR and seed, windowed SWA of the stable run at its last step (windows of `--steps`/10
  steps from step 0, the latest 1, 2 and 4 of them: the last 10%, 20%, 40%) and cumulative SWA (from the end
  of warmup), against the 20% 1-sqrt cooldown of the same total length.

A WSD run here is its stable run (constant LR for `--steps`, with step snapshots at the fork points and the
averages) forked into its cooldown: the lab's cooldown forks equal single WSD runs bit for bit on CPU
(tests/test_forks.py; `cooldown` checks it once more). Every run is a normal run directory under `--out` with
its results.json (`lm-lab report OUT --by scheduler.name`); the same command with the same `--out` reuses the
finished runs (and resumes a killed one). The tables are printed and written to OUT/tables.md and
OUT/summary.json. The default command trains ~4,000 steps in 32 runs: 30 min on 2 shared CPU cores (one torch
thread per run, `--threads`), and leaves ~4 GB of checkpoints (the stable runs' snapshots hold the averages).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from scipy import stats

from callbacks import AveragedWeights, LastCheckpoint
from lm_lab.config import InitConfig, RunConfig, TrainerConfig
from lm_lab.models import ModelConfig
from lm_lab.optim import SchedulerConfig
from lm_lab.train import fit

COOLDOWN_FRACS = (0.05, 0.1, 0.2, 0.4)
SHAPES = ("1-sqrt", "linear")
AVERAGES = {  # label -> what it is (val/loss_<label>): the windowed ones score the latest 1, 2 or 4 windows
    "swa": "windowed SWA, last window (10%)",
    "swa_2w": "windowed SWA, last 2 windows (20%)",
    "swa_4w": "windowed SWA, last 4 windows (40%)",
    "swa_cumulative": "cumulative SWA from the end of warmup",
}


class Snapshots(Callback):
    """`checkpoints/step<N>.ckpt` at the given steps: the points cooldowns fork from (like with_snapshots.yaml,
    at chosen steps rather than every N)."""

    def __init__(self, dirpath: Path, steps: set[int]):
        self.dirpath, self.steps = dirpath, steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step in self.steps and not (self.dirpath / f"step{step}.ckpt").exists():
            trainer.save_checkpoint(self.dirpath / f"step{step}.ckpt")


class ValScores(Callback):
    """The last validation's `val/...` metrics, written to RUN_DIR/val_scores.json (the averages' losses are not
    all in results.json; a finished run found again reads them from here)."""

    def __init__(self, path: Path):
        self.path = path

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self.path.write_text(json.dumps({"step": trainer.global_step, **scores}, indent=1))


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, Path(args.out or tempfile.mkdtemp(prefix="schedules-"))
        self.steps, self.warmup = args.steps, args.warmup if args.warmup is not None else args.steps // 10
        self.horizon = args.steps // 10
        self.cooldowns = [round(f * args.steps) for f in COOLDOWN_FRACS]
        self.cooldown20 = round(0.2 * args.steps)
        self.runs: dict[str, dict] = {}
        self.trained_steps = 0

    # -- runs ----------------------------------------------------------------------------------------------------

    def config(self, seed: int, lr: float, scheduler: SchedulerConfig) -> RunConfig:
        a, main = self.args, RunConfig()
        return replace(
            main,
            model=ModelConfig.preset(a.model),
            scheduler=scheduler,
            optimizer=replace(main.optimizer, lr=lr),
            train=replace(
                main.train,
                max_steps=self.steps,
                seed=seed,
                seq_len=a.seq_len,
                batch_size=a.batch_size,
                val_every=self.steps,  # scored once, at the end (a fork: at its end too)
                val_tokens=a.val_tokens,
            ),
            trainer=TrainerConfig(enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0),
        )

    def fit(self, name: str, run: RunConfig, extra: list[Callback] = (), fork: Path | None = None) -> dict:
        """One run (found again if it finished before): its final `val_loss` and the averages' losses."""
        if name in self.runs:
            return self.runs[name]
        run_dir = self.out / name
        found = (run_dir / "results.json").exists()
        callbacks = [
            LastCheckpoint(dirpath=str(run_dir / "checkpoints"), every_n_steps=None, every_minutes=None),
            *extra,
            ValScores(run_dir / "val_scores.json"),
        ]
        started = time.time()
        init = InitConfig(name="fork", path=str(fork)) if fork is not None else None
        results = fit(run, run_dir, resume="last", init=init, callbacks=callbacks)
        if results.stop_reason != "max_steps":
            raise RuntimeError(f"{run_dir} stopped early: {results.stop_reason} ({results.failure})")
        scores = json.loads((run_dir / "val_scores.json").read_text())
        row = {"val_loss": results.val_loss, **{k[len("val/loss_") :]: v for k, v in scores.items() if "loss_" in k}}
        seconds = time.time() - started
        if not found:
            self.trained_steps += results.steps - (int(fork.stem.removeprefix("step")) if fork else 0)
        self.runs[name] = row
        extras = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "val_loss")
        print(
            f"{name:44s} val_loss {results.val_loss:.4f}  {extras}  ({results.steps} steps, {seconds:.0f} s)",
            flush=True,
        )
        return row

    def stable(self, lr: float, seed: int) -> dict:
        """The constant-LR run: snapshots at every fork point, and the averages."""
        name = f"stable/lr{lr:.3g}_seed{seed}"
        run = self.config(seed, lr, SchedulerConfig(name="constant", warmup_steps=self.warmup))
        every = self.args.swa_every
        averages = [
            AveragedWeights(kind="swa", every_n_steps=every, horizon=self.horizon),
            AveragedWeights(kind="swa", every_n_steps=every, horizon=self.horizon, windows=2, label="swa_2w"),
            AveragedWeights(kind="swa", every_n_steps=every, horizon=self.horizon, windows=4, label="swa_4w"),
            AveragedWeights(kind="swa", start_step=self.warmup, every_n_steps=every, label="swa_cumulative"),
        ]
        forks = {self.steps - n for n in self.cooldowns}
        return self.fit(name, run, [*averages, Snapshots(self.out / name / "checkpoints", forks)])

    def wsd(self, lr: float, seed: int, shape: str = "1-sqrt", length: int | None = None) -> dict:
        """A cooldown of `length` steps (20%) forked from the stable run so that it ends at `--steps`."""
        length = length or self.cooldown20
        self.stable(lr, seed)
        fork = self.steps - length
        source = self.out / f"stable/lr{lr:.3g}_seed{seed}/checkpoints/step{fork}.ckpt"
        scheduler = self.wsd_scheduler(shape, length)
        name = f"wsd/lr{lr:.3g}_seed{seed}_{shape}{length}_from{fork}"
        return self.fit(name, self.config(seed, lr, scheduler), fork=source)

    def wsd_scheduler(self, shape: str, length: int) -> SchedulerConfig:
        return SchedulerConfig(
            name="wsd", warmup_steps=self.warmup, cooldown_steps=length, cooldown_shape=shape, final_lr_frac=0.0
        )

    def cosine(self, lr: float, seed: int) -> dict:
        scheduler = SchedulerConfig(name="cosine", warmup_steps=self.warmup, final_lr_frac=0.1)
        return self.fit(f"cosine/lr{lr:.3g}_seed{seed}", self.config(seed, lr, scheduler))

    # -- parts -----------------------------------------------------------------------------------------------

    def lr_sweep(self, schedules=("cosine", "wsd")) -> dict:
        """{schedule: {lr: [loss per seed]}}, each grid extended past a best end."""
        sweep = {}
        for schedule in schedules:
            runner = self.cosine if schedule == "cosine" else self.wsd
            grid = sorted(self.args.lrs)
            losses = {lr: [runner(lr, s)["val_loss"] for s in self.args.seeds] for lr in grid}
            extended = {"low": 0, "high": 0}
            while True:
                best = min(losses, key=lambda lr: statistics.mean(losses[lr]))
                lrs = sorted(losses)
                side = "low" if best == lrs[0] else "high" if best == lrs[-1] else None
                if side is None or extended[side] >= self.args.max_extend:
                    break
                extended[side] += 1
                new = lrs[0] ** 2 / lrs[1] if side == "low" else lrs[-1] ** 2 / lrs[-2]  # one grid ratio further
                new = float(f"{new:.2g}")
                print(f"{schedule}: best LR {best:.3g} at the {side} end of the grid; adding {new:.3g}", flush=True)
                losses[new] = [runner(new, s)["val_loss"] for s in self.args.seeds]
            sweep[schedule] = dict(sorted(losses.items()))
        return sweep


# -- tables --------------------------------------------------------------------------------------------------


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def _signed(values: list[float]) -> str:
    return ", ".join(f"{v:+.4f}" for v in values)


def best_of(losses: dict[float, list[float]]) -> float:
    return min(losses, key=lambda lr: statistics.mean(losses[lr]))


def lr_tables(sweep: dict, seeds: list[int]) -> tuple[list[str], dict]:
    lines = ["| peak LR | " + " | ".join(sweep) + " |", "|---" * (len(sweep) + 1) + "|"]
    for lr in sorted({lr for losses in sweep.values() for lr in losses}):
        cells = []
        for losses in sweep.values():
            if lr not in losses:
                cells.append("")
                continue
            bold = "**" if lr == best_of(losses) else ""
            cells.append(f"{bold}{mean_sd(losses[lr])}{bold}")
        lines.append(f"| {lr:.3g} | " + " | ".join(cells) + " |")
    summary = {}
    lines.append("")
    for schedule, losses in sweep.items():
        best = best_of(losses)
        summary[schedule] = {"best_lr": best, "losses": losses[best]}
        lines.append(f"- {schedule}: best LR {best:.3g}, {mean_sd(losses[best])} over seeds {seeds}")
    if {"cosine", "wsd"} <= set(sweep):
        c, w = summary["cosine"]["losses"], summary["wsd"]["losses"]
        diff = statistics.mean(w) - statistics.mean(c)
        p = stats.ttest_ind(w, c, equal_var=False).pvalue if len(c) > 1 else math.nan
        per_seed = [b - a for a, b in zip(c, w, strict=True)]  # seed for seed: the same init and data order
        spread = max(statistics.stdev(c), statistics.stdev(w)) if len(c) > 1 else math.nan
        summary["wsd_minus_cosine"] = {"mean": diff, "per_seed": per_seed, "seed_sd": spread, "welch_p": p}
        lines.append(
            f"- best WSD − best cosine: **{diff:+.4f}** (per seed {_signed(per_seed)}; "
            f"seed-to-seed sd up to {spread:.4f}; Welch's t-test p = {p:.2g})"
        )
    return lines, summary


def cooldown_table(bench: Bench, lr: float, seed: int) -> tuple[list[str], dict]:
    constant = bench.stable(lr, seed)["val_loss"]
    lines = [
        f"Stable run: peak LR {lr:.3g}, seed {seed}, constant after {bench.warmup} warmup steps; each cooldown "
        f"forked at step {bench.steps} − its length and ending at step {bench.steps} (to 0).",
        "",
        "| cooldown | fork step | " + " | ".join(SHAPES) + " |",
        "|---" * (len(SHAPES) + 2) + "|",
        f"| none (constant LR) | – | {constant:.4f} | {constant:.4f} |",
    ]
    table = {}
    for frac, n in zip(COOLDOWN_FRACS, bench.cooldowns, strict=True):
        row = {shape: bench.wsd(lr, seed, shape, n)["val_loss"] for shape in SHAPES}
        table[n] = row
        cells = " | ".join(f"{row[s]:.4f}" for s in SHAPES)
        lines.append(f"| {n} steps ({frac:.0%}) | {bench.steps - n} | {cells} |")
    envelope = {s: min(table[n][s] for n in table) for s in SHAPES}
    lines.append("")
    gaps = [table[n]["1-sqrt"] - table[n]["linear"] for n in table]
    lines.append(f"- 1-sqrt − linear per length: {_signed(gaps)}")
    lines.append(f"- best of each shape: {', '.join(f'{s} {v:.4f}' for s, v in envelope.items())}")
    return lines, {"lr": lr, "seed": seed, "constant": constant, "cooldowns": table}


def fork_check(bench: Bench, lr: float, seed: int) -> str:
    """One single WSD run (no fork) against the fork from the stable run that stands for it."""
    name = f"wsd_single/lr{lr:.3g}_seed{seed}_1-sqrt{bench.cooldown20}"
    single = bench.fit(name, bench.config(seed, lr, bench.wsd_scheduler("1-sqrt", bench.cooldown20)))
    forked = bench.wsd(lr, seed)
    same = "identical" if single["val_loss"] == forked["val_loss"] else "DIFFERENT"
    return (
        f"- check: the single WSD run (LR {lr:.3g}, seed {seed}) scores {single['val_loss']:.6f}, its fork from the "
        f"stable run {forked['val_loss']:.6f}: {same}"
    )


def swa_table(bench: Bench, lrs: list[float], seeds: list[int], best: float | None) -> tuple[list[str], dict]:
    cols = ["constant LR", *AVERAGES.values(), "20% 1-sqrt cooldown"]
    lines = ["| peak LR | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    table = {}
    for lr in lrs:
        rows = [(bench.stable(lr, s), bench.wsd(lr, s)) for s in seeds]
        values = {
            "constant": [st["val_loss"] for st, _ in rows],
            **{label: [st[label] for st, _ in rows] for label in AVERAGES},
            "cooldown": [cd["val_loss"] for _, cd in rows],
        }
        table[lr] = values
        lines.append(f"| {lr:.3g} | " + " | ".join(mean_sd(v) for v in values.values()) + " |")
    lines.append("")
    for lr in [best] if best in table else []:
        v = table[lr]
        gap = [c - k for k, c in zip(v["constant"], v["cooldown"], strict=True)]
        lines.append(f"- LR {lr:.3g}: cooldown − constant LR {statistics.mean(gap):+.4f} (per seed {_signed(gap)})")
        for label, what in AVERAGES.items():
            gaps = [a - c for a, c in zip(v[label], v["cooldown"], strict=True)]
            lines.append(f"- LR {lr:.3g}: {what} − cooldown {statistics.mean(gaps):+.4f} (per seed {_signed(gaps)})")
    labels = ["constant", *AVERAGES, "cooldown"]
    best_swa = {label: min(statistics.mean(table[lr][label]) for lr in table) for label in labels}
    lines.append(
        "- each at its own best LR: " + ", ".join(f"{label} {v:.4f}" for label, v in best_swa.items()) + " (means)"
    )
    return lines, {str(lr): v for lr, v in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["lr", "cooldown", "swa", "all"], default="all")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 10%% of --steps)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1.5e-3, 2.1e-3, 3e-3, 4.2e-3])
    parser.add_argument("--max-extend", type=int, default=2, help="LRs added past a best end of the grid, per side")
    parser.add_argument("--cooldown-lr", type=float, default=None, help="the stable run's LR (default: WSD's best)")
    parser.add_argument("--swa-every", type=int, default=1, help="the averages sample every this many steps")
    parser.add_argument("--model", default="gpt2_tiny")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--val-tokens", type=int, default=2**15, help="the same held-out tokens score every run")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default; 1 is steadier, and on 2 shared cores 3x faster, than 2)",
    )
    parser.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps % 10 or (args.steps // 10) % args.swa_every:
        parser.error("--steps must be a multiple of 10, and --steps/10 (the SWA window) a multiple of --swa-every")

    started = time.time()
    bench = Bench(args)
    print(f"runs in {bench.out}", flush=True)
    sections, summary = [], {"args": vars(args)}
    sweep = None
    if args.part in ("lr", "all"):
        sweep = bench.lr_sweep()
        lines, summary["lr"] = lr_tables(sweep, args.seeds)
        sections.append(("LR sweep: final validation loss, mean ± sd over seeds (bold: each schedule's best)", lines))
    best_wsd = args.cooldown_lr
    if args.part in ("cooldown", "all"):
        if best_wsd is None:
            sweep = sweep or bench.lr_sweep(("wsd",))
            best_wsd = best_of(sweep["wsd"])
        lines, summary["cooldown"] = cooldown_table(bench, best_wsd, args.seeds[0])
        lines.append(fork_check(bench, best_wsd, args.seeds[0]))
        sections.append(("Cooldown length and shape, from one stable run", lines))
    if args.part in ("swa", "all"):
        lrs = sorted(sweep["wsd"]) if sweep and "wsd" in sweep else sorted(args.lrs)
        best = best_wsd if best_wsd is not None else (best_of(sweep["wsd"]) if sweep and "wsd" in sweep else None)
        lines, summary["swa"] = swa_table(bench, lrs, args.seeds, best)
        sections.append(("Windowed SWA vs a cooldown on the stable runs (mean ± sd over seeds)", lines))
    minutes = (time.time() - started) / 60
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_minutes = (usage.ru_utime + usage.ru_stime) / 60
    summary.update(minutes=minutes, cpu_minutes=cpu_minutes, trained_steps=bench.trained_steps)
    text = [
        f"{args.model}, embedded corpus, batch {args.batch_size} × {args.seq_len} tokens, {args.steps} steps, "
        f"{bench.warmup} warmup steps, AdamW; {minutes:.1f} min wall ({cpu_minutes:.1f} CPU-min) for "
        f"{bench.trained_steps} trained steps",
    ]
    for title, lines in sections:
        text += ["", f"### {title}", "", *lines]
    print("\n" + "\n".join(text), flush=True)
    (bench.out / "tables.md").write_text("\n".join(text) + "\n")
    (bench.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nruns, tables.md and summary.json in {bench.out}")


if __name__ == "__main__":
    main()
