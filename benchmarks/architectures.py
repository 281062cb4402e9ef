"""GPT-2, LLaMA-style, DenseFormer, MoE and a Brainformer pattern at about the same active parameters, and a
width-vs-depth sweep at one non-embedding N (seed 000), on the embedded corpus with in-process `fit`.

    python benchmarks/architectures.py [--part variants|width_depth|all] [--steps 300] [--seeds 1337 1338]
                                       [--lr 2e-3] [--out DIR] [--threads 1]

Every run has the same data order per seed, steps, batch (16 x 128 tokens), warmup (10%), cosine to 10% and peak
LR: the variants are NOT each tuned to their own best LR (one LR for all; the seed spread is reported). The
variants share width 128, 4 heads and 4 layers (the main job's gpt2_tiny shape; BPE 4096):
- `gpt2`: GPT-2 (LayerNorm, GELU 4d, learned positions, biases, tied head);
- `llama`: RMSNorm, SwiGLU (hidden 384 ~ 8/3 d, so its parameters match GPT-2's 4d GELU), RoPE, no biases, GQA with
  2 key/value heads, tied head (as Hägele et al.'s code);
- `denseformer`: `llama` + DenseFormer's DWA after every block (dilation 1, period 1);
- `moe`: `llama` with every FFN an MoE of 8 SwiGLU experts of hidden 192, top-2: the same active FFN width;
- `brainformer`: `llama` width, 2 blocks of `A,E,F,E,F,E` with 8 top-1 experts of hidden 192 and dense FFNs of 192.
Prints params, active params, val loss (mean ± sd over seeds) and tokens/s (median), and writes OUT/tables.md.
`width_depth`: GPT-2 shapes with 12 d^2 L = N for N = 12 * 128^2 * 4 (gpt2_tiny's) at depths 1, 2, 4, 8, 16
(head size 16), one seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from lm_lab.config import RunConfig, TrainerConfig
from lm_lab.models import ModelConfig
from lm_lab.optim import SchedulerConfig
from lm_lab.train import fit

LLAMA = dict(norm="rmsnorm", mlp="swiglu", positions="rope", bias=False, n_kv_head=2, d_ff=384)
MOE = dict(moe_experts=8, moe_expert_mlp="swiglu", moe_capacity_factor=1.25)
VARIANTS = {
    "gpt2": {},
    "llama": LLAMA,
    "denseformer": {**LLAMA, "denseformer": True},
    "moe": {**LLAMA, **MOE, "mlp": "moe", "d_ff": 192, "moe_top_k": 2},
    "brainformer": {**LLAMA, **MOE, "n_layer": 2, "block_pattern": "A,E,F,E,F,E", "d_ff": 192, "moe_top_k": 1},
}


def run_config(args, model: ModelConfig, seed: int) -> RunConfig:
    main = RunConfig()
    return replace(
        main,
        model=model,
        scheduler=SchedulerConfig(name="cosine", warmup_steps=args.steps // 10, final_lr_frac=0.1),
        optimizer=replace(main.optimizer, lr=args.lr),
        train=replace(main.train, max_steps=args.steps, seed=seed, seq_len=128, batch_size=16, val_every=args.steps),
        trainer=TrainerConfig(enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0),
    )


def train(args, name: str, model: ModelConfig, seed: int) -> dict:
    run_dir = args.out / f"{name}_s{seed}"
    r = fit(run_config(args, model, seed), run_dir, resume="last")
    row = {"val_loss": r.val_loss, "params": r.params, "active": r.params_active, "tok_s": r.tokens_per_sec}
    print(f"{name} seed {seed}: {row}", flush=True)
    return row


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def variants(args) -> str:
    lines = [
        f"| variant | params | active | val loss (mean ± sd, {len(args.seeds)} seeds) | tokens/s (median) |",
        "|---|---|---|---|---|",
    ]
    for name, fields in VARIANTS.items():
        model = ModelConfig.preset("gpt2_tiny", block_size=128, **fields)
        rows = [train(args, name, model, seed) for seed in args.seeds]
        lines.append(
            f"| `{name}` | {rows[0]['params']:,} | {rows[0]['active']:,} | {mean_sd([r['val_loss'] for r in rows])} "
            f"| {statistics.median(r['tok_s'] for r in rows):,.0f} |"
        )
    return "\n".join(lines)


def width_depth(args) -> str:
    from lm_lab.scaling.width_depth import shapes

    target = 12 * 128**2 * 4
    lines = ["| layers | d_model | heads | 12 d² L | params | val loss | tokens/s |", "|---|---|---|---|---|---|---|"]
    for shape in shapes(target, [1, 2, 4, 8, 16], head_dim=16):
        n_layer, d, n_head = shape[0], shape[1], shape[2]
        model = ModelConfig.preset("gpt2_tiny", n_layer=n_layer, d_model=d, n_head=n_head, block_size=128)
        r = train(args, f"wd_L{n_layer}", model, args.seeds[0])
        lines.append(
            f"| {n_layer} | {d} | {n_head} | {12 * d * d * n_layer:,} | {r['params']:,} | {r['val_loss']:.4f} "
            f"| {r['tok_s']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["variants", "width_depth", "all"], default="all")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338])
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out = args.out or Path(tempfile.mkdtemp(prefix="lm_lab_arch_"))
    tables = {}
    if args.part in ("variants", "all"):
        tables["variants"] = variants(args)
    if args.part in ("width_depth", "all"):
        tables["width_depth"] = width_depth(args)
    text = "\n\n".join(tables.values())
    print(text)
    (args.out / "tables.md").write_text(text + "\n")
    (args.out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}))


if __name__ == "__main__":
    main()
