"""Cosine vs WSD at equal compute (Hägele et al. 2024, Fig. 3): the same model, data, steps, tokens and seeds,
trained once with warmup + cosine to 10% and once with warmup + constant + a 20% 1-sqrt cooldown to 0.

    python benchmarks/schedules.py [--steps 600] [--seeds 1337 1338] [--lr 3e-3] [--model gpt2_tiny]

Each run is `python run.py` in its own directory; the script prints every final validation loss, the mean
per schedule, the WSD - cosine difference and the seed-to-seed spread to judge it against.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
        "cosine": ["scheduler=cosine", "scheduler.final_lr_frac=0.1"],
        "wsd": [
            "scheduler=wsd",
            "scheduler.cooldown_frac=0.2",
            "scheduler.cooldown_shape=1-sqrt",
            "scheduler.final_lr_frac=0.0",
        ],
    }
    losses: dict[str, list[float]] = {name: [] for name in schedules}
    for seed in args.seeds:
        for name, overrides in schedules.items():
            run_dir = out / f"{name}_seed{seed}"
            cmd = [
                sys.executable, "run.py", f"model={args.model}", *overrides, f"scheduler.warmup_steps={args.warmup}",
                f"optimizer.lr={args.lr}", f"train.max_steps={args.steps}", f"train.seed={seed}", f"train.val_every={args.steps // 4}",
                "ckpt_path=null", "~callbacks.progress_bar", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}",
            ]  # fmt: skip
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            results = json.loads((run_dir / "results.json").read_text())
            losses[name].append(results["val_loss"])
            print(
                f"{name:7s} seed {seed}: val_loss {results['val_loss']:.4f}  ({results['steps']} steps, {results['tokens']:,} tokens)",
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
