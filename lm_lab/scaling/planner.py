"""The compute-optimal planner: a budget and a law -> N_opt, D_opt -> a concrete model of the family and its run.

    plan = make_plan(BudgetConfig(name="gpu_hours", hours=3, gpu="a100"), LAWS["chinchilla"], vocab_size=50257)
    plan.model, plan.steps, plan.command

The model is a GPT-2-family shape with head size 64 whose parameter count, counted as the law counts them
(every parameter: Hoffmann et al. 2022 include embeddings), is within `tolerance` (5%) of N_opt, and whose
aspect ratio d_model / n_layer lies in [32, 128], a factor of 4 around GPT-2's own 64 (768 / 12): Kaplan et al.
2020 (§3.1, Fig. 5) find that at a fixed (non-embedding) N the loss varies only a few percent over a wide range of
shapes. Among those shapes the one closest to 64 is chosen, then the one closest to N_opt. Its steps are what the budget pays
for in the lab's FLOP count (`budget.flop_count`, as `python run.py budget=flops` derives them), so the ready
command reproduces the plan exactly.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field

from lm_lab.errors import ConfigError
from lm_lab.models import ModelConfig, chinchilla_flops_per_token, flops_per_token, non_embedding_params, param_count
from lm_lab.scaling.budget import BudgetConfig, budget_steps

HEAD_DIM = 64
ASPECT_RANGE = (32, 128)  # d_model / n_layer; Kaplan et al. 2020 §3.1: the loss barely depends on the shape
ASPECT_TARGET = 64  # GPT-2 small: 768 / 12


@dataclass
class Plan:
    flops: float
    """The budget in FLOPs."""
    law: str
    law_source: str
    params_opt: float
    """The law's N_opt (every parameter, embeddings included)."""
    tokens_opt: float
    """The law's D_opt (with C = 6·N·D)."""
    loss_opt: float | None
    """The law's predicted loss at (N_opt, D_opt), where it gives one."""
    n_layer: int
    n_head: int
    d_model: int
    params: int
    """The model's parameters, counted as the law counts them (all of them, tied embedding once)."""
    params_non_embedding: int
    aspect_ratio: float
    seq_len: int
    batch_size: int
    steps: int
    tokens: int
    flop_count: str
    """The convention the steps follow from: `6n` (6N + 12·L·T·d) or `chinchilla` (App. F)."""
    flops_6n: float
    flops_chinchilla: float
    loss_predicted: float | None
    """The law's loss for this model at the tokens it will see."""
    command: str
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def shape(
    target: float,
    *,
    vocab_size: int,
    seq_len: int,
    tolerance: float = 0.05,
    head_dim: int = HEAD_DIM,
    aspect_range: tuple[float, float] = ASPECT_RANGE,
) -> tuple[ModelConfig, list[str]]:
    """The family's model for `target` parameters (see the module's docstring), with warnings when no shape
    meets both the tolerance and the aspect range (then the aspect ratio nearest the range among the shapes
    within the tolerance, else the nearest count)."""
    best, fallback, nearest = None, None, None
    for n_layer in range(1, 129):
        for n_head in range(1, 129):
            d = n_head * head_dim
            cfg = ModelConfig(
                name="planned", n_layer=n_layer, n_head=n_head, d_model=d, block_size=seq_len, vocab_size=vocab_size
            )
            miss = abs(param_count(cfg) / target - 1)
            if nearest is None or miss < nearest[0]:
                nearest = (miss, cfg)
            if miss > tolerance:
                continue
            key = (abs(math.log(d / n_layer / ASPECT_TARGET)), miss)
            if aspect_range[0] <= d / n_layer <= aspect_range[1]:
                if best is None or key < best[0]:
                    best = (key, cfg)
            elif fallback is None or key < fallback[0]:
                fallback = (key, cfg)
    if best is not None:
        return best[1], []
    if fallback is not None:
        cfg = fallback[1]
        return cfg, [
            f"no shape with head size {head_dim} within {tolerance:.0%} of N_opt={target:.4g} has d_model/n_layer in "
            f"{list(aspect_range)}; the nearest ratio is {cfg.d_model / cfg.n_layer:.1f}"
        ]
    miss, cfg = nearest
    return cfg, [
        f"no shape with head size {head_dim} is within {tolerance:.0%} of N_opt={target:.4g} with d_model/n_layer in "
        f"{list(aspect_range)}; the nearest count is {param_count(cfg):,} ({miss:+.1%} off)"
    ]


def make_plan(
    budget: BudgetConfig,
    law,
    *,
    vocab_size: int,
    seq_len: int = 1024,
    batch_size: int = 64,
    tolerance: float = 0.05,
    overrides: list[str] = (),
) -> Plan:
    """The plan for a FLOP budget (`flops` or `gpu_hours`) under `law`; `overrides`: more run.py overrides for
    the command (which states the budget as given, so run.py derives the plan's steps from it)."""
    if not budget.counts_flops:
        raise ConfigError(f"the planner needs a FLOP budget (flops or gpu_hours), not budget={budget.name}")
    flops, flop_count = budget.total_flops(), budget.flop_count
    n_opt, d_opt = law.optimum(flops)
    cfg, warnings = shape(n_opt, vocab_size=vocab_size, seq_len=seq_len, tolerance=tolerance)
    tokens_per_step = batch_size * seq_len
    steps = budget_steps(budget, cfg, seq_len, tokens_per_step)
    if steps < 1:
        raise ConfigError(
            f"a budget of {flops:.3g} FLOPs pays for no step of {batch_size} x {seq_len} tokens of a "
            f"{param_count(cfg):,}-parameter model; raise it or lower --batch-size / --seq-len"
        )
    if steps < 100:
        warnings.append(f"only {steps} steps: a smaller --batch-size gives the schedule room")
    tokens = steps * tokens_per_step
    args = [
        "model=gpt2_small",
        f"model.name=gpt2_{_size(param_count(cfg))}",
        f"model.n_layer={cfg.n_layer}",
        f"model.n_head={cfg.n_head}",
        f"model.d_model={cfg.d_model}",
        f"model.block_size={seq_len}",
        f"train.batch_size={batch_size}",
        *budget.overrides(),
        *overrides,
    ]
    predicted = law.loss(param_count(cfg), tokens)
    return Plan(
        flops=float(flops),
        law=law.name,
        law_source=law.source,
        params_opt=n_opt,
        tokens_opt=d_opt,
        loss_opt=law.loss(n_opt, d_opt),
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        d_model=cfg.d_model,
        params=param_count(cfg),
        params_non_embedding=non_embedding_params(cfg),
        aspect_ratio=cfg.d_model / cfg.n_layer,
        seq_len=seq_len,
        batch_size=batch_size,
        steps=steps,
        tokens=tokens,
        flop_count=flop_count,
        flops_6n=float(tokens * flops_per_token(cfg, seq_len)),
        flops_chinchilla=float(tokens * chinchilla_flops_per_token(cfg, seq_len)),
        loss_predicted=predicted,
        command="python run.py " + " ".join(shlex.quote(a) for a in args),
        warnings=warnings,
    )


def _size(params: int) -> str:
    """171.4M -> 171m, 228,736 -> 229k."""
    return f"{params / 1e6:.0f}m" if params >= 1e6 else f"{params / 1e3:.0f}k"


def render(plan: Plan) -> str:
    """The plan as a person reads it."""
    loss = f", predicted loss {plan.loss_opt:.3f}" if plan.loss_opt is not None else ""
    lines = [
        f"budget      {plan.flops:.4g} FLOPs",
        f"law         {plan.law} ({plan.law_source}): N_opt {plan.params_opt / 1e6:.1f}M parameters, "
        f"D_opt {plan.tokens_opt / 1e9:.3g}B tokens ({plan.tokens_opt / plan.params_opt:.1f} per parameter){loss}",
        f"model       {plan.n_layer} layers x d_model {plan.d_model} ({plan.n_head} x {HEAD_DIM}-wide heads), "
        f"d_model/n_layer {plan.aspect_ratio:.0f}",
        f"params      {plan.params:,} ({plan.params / plan.params_opt - 1:+.1%} vs N_opt; embeddings included, as "
        f"Hoffmann et al. count; {plan.params_non_embedding:,} without them, as Kaplan et al. count)",
        f"run         seq_len {plan.seq_len}, batch {plan.batch_size} ({plan.batch_size * plan.seq_len:,} tokens/step), "
        f"{plan.steps:,} steps = {plan.tokens / 1e9:.3g}B tokens ({plan.tokens / plan.tokens_opt - 1:+.1%} vs D_opt)",
        f"FLOPs       {plan.flops_6n:.4g} (6N + 12LTd), {plan.flops_chinchilla:.4g} (Chinchilla App. F); steps from "
        f"the {'6N + 12LTd' if plan.flop_count == '6n' else 'App. F'} count",
    ]
    if plan.loss_predicted is not None:
        lines.append(f"loss        {plan.loss_predicted:.3f} predicted by the law for this model and these tokens")
    lines += [f"warning     {w}" for w in plan.warnings]
    lines.append(f"command     {plan.command}")
    return "\n".join(lines)
