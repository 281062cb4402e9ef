"""Cosine vs WSD at equal compute (Hägele et al. 2024, Fig. 3): the same model, data, steps, tokens and seeds,
trained once with warmup + cosine to 10% and once with warmup + constant + a 20% 1-sqrt cooldown to 0.

    python benchmarks/schedules.py [--steps 600] [--seeds 1337 1338] [--lr 3e-3] [--model gpt2_tiny]

Each run is an in-process `fit` in its own directory; the script prints every final validation loss, the mean
per schedule, the WSD - cosine difference and the seed-to-seed spread to judge it against.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from lm_lab.config import RunConfig, TrainerConfig
from lm_lab.models import ModelConfig
from lm_lab.optim import SchedulerConfig
from lm_lab.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338])
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--model", default="gpt2_tiny")
    parser.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()

    out = Path(args.out or tempfile.mkdtemp(prefix="schedules-"))
    schedules = {
        "cosine": SchedulerConfig(name="cosine", final_lr_frac=0.1, warmup_steps=args.warmup),
        "wsd": SchedulerConfig(
            name="wsd", cooldown_frac=0.2, cooldown_shape="1-sqrt", final_lr_frac=0.0, warmup_steps=args.warmup
        ),
    }
    main_job = RunConfig()
    trainer = TrainerConfig(enable_progress_bar=False, enable_model_summary=False)
    losses: dict[str, list[float]] = {name: [] for name in schedules}
    for seed in args.seeds:
        for name, scheduler in schedules.items():
            run = replace(
                main_job,
                model=ModelConfig.preset(args.model),
                scheduler=scheduler,
                optimizer=replace(main_job.optimizer, lr=args.lr),
                train=replace(main_job.train, max_steps=args.steps, seed=seed, val_every=args.steps // 4),
                trainer=trainer,
            )
            results = fit(run, out / f"{name}_seed{seed}", resume=None)
            losses[name].append(results.val_loss)
            print(
                f"{name:7s} seed {seed}: val_loss {results.val_loss:.4f}  ({results.steps} steps, {results.tokens:,} tokens)",
                flush=True,
            )
    means = {name: statistics.mean(v) for name, v in losses.items()}
    diffs = [w - c for w, c in zip(losses["wsd"], losses["cosine"], strict=True)]
    spread = max(max(v) - min(v) for v in losses.values())
    print(f"mean val_loss: cosine {means['cosine']:.4f}, wsd {means['wsd']:.4f}")
    print(
        f"wsd - cosine: {statistics.mean(diffs):+.4f} (per seed: {', '.join(f'{d:+.4f}' for d in diffs)}); seed-to-seed spread {spread:.4f}"
    )
    print(f"runs in {out}")


if __name__ == "__main__":
    main()
