"""`lm-lab`: the lab's tools beside training (training itself is `python run.py`, or `lm_lab.train.fit`).

lm-lab prepare-data data=NAME tokenizer=NAME [data.num_proc=N ...]   tokenise a corpus once into shards
lm-lab count --model gpt2_medium [--vocab-size 50257] [--seq-len 1024] [KEY=VALUE ...]   params, FLOPs/token
lm-lab plan --flops F | --gpu-hours H --gpu NAME [--mfu M] [--law chinchilla|hoffmann|epoch | --fit FIT.json]
                                                                  the compute-optimal model and its run.py command
lm-lab cooldowns RUN --step K --lengths N1,N2 [--shape 1-sqrt] [KEY=VALUE ...]   fork WSD cooldowns, gather results
lm-lab sample CKPT --prompt TEXT [--tokens N --temperature T --top-k K --seed S]   text from a trained model
lm-lab report DIR [--csv FILE] [--by FIELD ...] [--metric val_loss]   every run under DIR, seeds grouped, compared
lm-lab sweep isoflop --budgets C1,C2,C3 [--points 5] [KEY=VALUE ...]   an IsoFLOP grid as one Hydra multirun
lm-lab sweep cooldowns --models M1,M2 --lengths T1,T2,T3 [KEY=VALUE ...]   scaling-law points from cooldown forks
lm-lab fit --method isoflop|parametric|hyperparams --input RUNS.csv [--predict C ...] [--plot FILE.png]   laws
lm-lab search --space NAME --sampler tpe|gp|cmaes|random|coordinate|random_gradient --trials N [--budget-flops F]
lm-lab analyze CKPT_OR_HF_DIR [--batch 4] [--seq-len T] [--out DIR]   attention degeneration: k*, m*, lazy layers
lm-lab export CKPT OUT                                          a lab model as a Hugging Face folder
lm-lab eval CKPT_OR_HF_DIR --tasks arc_easy,piqa [--limit N] [--include-path DIR]   zero-shot with lm-eval
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import OmegaConf

from lm_lab.config import compose
from lm_lab.errors import ConfigError
from lm_lab.models import (
    ModelConfig,
    active_param_count,
    chinchilla_flops_per_token,
    component_flops_per_token,
    component_params,
    flops_per_token,
    non_embedding_params,
    param_count,
)
from lm_lab.optim import SchedulerConfig
from lm_lab.results import Results


def load_model_config(name: str, overrides: list[str], vocab_size: int) -> ModelConfig:
    """The model `python run.py model=NAME model.KEY=VALUE ...` would build, with the given vocabulary."""
    cfg = compose(
        [f"model={name}", f"model.vocab_size={vocab_size}", *(f"model.{o.removeprefix('model.')}" for o in overrides)]
    )
    return ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True))


def count(args: argparse.Namespace) -> dict:
    cfg = load_model_config(args.model, args.overrides, args.vocab_size)
    seq_len = args.seq_len or cfg.block_size
    return {
        "model": cfg.name,
        "params": param_count(cfg),
        "params_non_embedding": non_embedding_params(cfg),
        "params_active": active_param_count(cfg),
        "params_by_component": component_params(cfg),
        "vocab_size": cfg.vocab_size,
        "padded_vocab_size": cfg.padded_vocab_size,
        "seq_len": seq_len,
        "flops_per_token": flops_per_token(cfg, seq_len),
        "flops_per_token_chinchilla": chinchilla_flops_per_token(cfg, seq_len),
        "flops_per_token_by_component": component_flops_per_token(cfg, seq_len),
    }


def prepare_data(args: argparse.Namespace) -> dict:
    import logging

    from lm_lab.data.config import DataConfig
    from lm_lab.data.prepare import prepare
    from lm_lab.data.shards import read_meta
    from lm_lab.data.tokenizers import TokenizerConfig

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = OmegaConf.to_container(compose(args.overrides), resolve=True)
    data, tokenizer = DataConfig(**cfg["data"]), TokenizerConfig(**cfg["tokenizer"])
    folder = prepare(data, tokenizer, val_only=data.mode == "streaming")
    meta = read_meta(folder)
    return {
        "folder": str(folder),
        **{k: meta[k] for k in ("name", "tokenizer", "vocab_size", "dtype", "tokens_per_sec")},
        "splits": {
            k: {"tokens": v["tokens"], "documents": v["documents"], "shards": len(v["shards"])}
            for k, v in meta["splits"].items()
        },
    }


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give positive integers separated by commas, e.g. 200,400"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers separated by commas, e.g. 200,400")
    return values


FORK_DROPS = ("scheduler", "init", "ckpt_path", "name", "train.max_steps", "hydra", "callbacks=", "callbacks.snapshots")


def cooldowns(args: argparse.Namespace) -> dict:
    """Fork cooldowns of several lengths from one checkpoint of a stable run (Hägele et al. 2024 §3: one run
    plus short cooldowns give a family of training lengths), run them one after another in this process, and
    gather their results."""
    import contextlib
    import csv
    import logging

    from lm_lab.launch import fit_from_config

    source = Path(args.run_dir)
    if not (source / "config.yaml").is_file() or not (source / "checkpoints").is_dir():
        raise ConfigError(f"{source} is not a run directory of the lab (no config.yaml and checkpoints/ in it)")
    config = OmegaConf.load(source / "config.yaml")
    ckpt = source / "checkpoints" / f"step{args.step}.ckpt"
    if not ckpt.exists():
        kept = sorted(p.name for p in (source / "checkpoints").glob("step*.ckpt"))
        raise ConfigError(
            f"{ckpt} not found; the run kept {kept or 'no step checkpoints'} (train it with callbacks=with_snapshots)"
        )
    sched, total = config.scheduler, config.train.max_steps
    stable_until = (
        total - SchedulerConfig(**OmegaConf.to_container(sched)).cooldown_length(total)
        if sched.name == "wsd"
        else total
    )
    if sched.name not in ("constant", "wsd") or not sched.warmup_steps <= args.step <= stable_until:
        raise ConfigError(
            f"step {args.step} of {source} is not in a stable phase (scheduler {sched.name}, warmup {sched.warmup_steps}, "
            f"constant until step {stable_until}); fork from a constant-LR or WSD run's stable phase"
        )
    previous = (
        OmegaConf.to_container(OmegaConf.load(source / "overrides.yaml"))  # as written: ${...} stays unresolved
        if (source / "overrides.yaml").exists()
        else []
    )
    mine = {o.lstrip("+~").split("=")[0] for o in args.overrides}  # the forks' own overrides win
    kept = [
        o for o in previous if not o.lstrip("+~").startswith(FORK_DROPS) and o.lstrip("+~").split("=")[0] not in mine
    ]
    sweep = source / "cooldowns" / f"step{args.step}"
    common = [
        *kept,
        "callbacks=default",
        "scheduler=wsd",
        f"scheduler.warmup_steps={sched.warmup_steps}",
        f"scheduler.warmup_start_frac={sched.warmup_start_frac}",
        f"scheduler.cooldown_shape={args.shape}",
        f"scheduler.final_lr_frac={args.final_lr_frac}",
        "init=fork",
        f"init.path={ckpt}",
        f"name={config.name}_cooldowns",
    ]
    forks = {n: [*common, f"scheduler.cooldown_steps={n}", *args.overrides] for n in args.lengths}
    if args.dry_run:
        return {"runs": {str(sweep / f"cooldown{n}"): overrides for n, overrides in forks.items()}}
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for n, overrides in forks.items():  # stdout: the JSON summary only
        print(f"cooldown of {n} steps from step {args.step}: {sweep / f'cooldown{n}'}", file=sys.stderr)
        cfg = compose([*overrides, f"run_dir={sweep / f'cooldown{n}'}"])
        with contextlib.redirect_stdout(sys.stderr):  # Lightning's model summary prints to stdout
            results = fit_from_config(cfg, overrides)
        if results.stop_reason != "max_steps":
            raise ConfigError(f"the cooldown of {n} steps stopped early ({results.stop_reason}: {results.failure})")
    rows = []
    for n in args.lengths:
        results = Results.load(sweep / f"cooldown{n}").to_dict()
        row = {"fork_step": args.step, "cooldown_steps": n}
        row.update({k: results[k] for k in ("steps", "tokens", "flops", "val_loss", "best_val_loss", "wall_seconds")})
        rows.append(row)
    with open(sweep / "cooldowns.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"sweep": str(sweep), "csv": str(sweep / "cooldowns.csv"), "runs": rows}


def plan(args: argparse.Namespace) -> dict | str:
    """The compute-optimal model for a budget (see `lm_lab.scaling.planner`), and the run.py command that trains
    it under that budget."""
    from lm_lab.scaling.budget import BudgetConfig
    from lm_lab.scaling.laws import law, load_fit
    from lm_lab.scaling.planner import make_plan, render

    if (args.flops is None) == (args.gpu_hours is None):
        raise ConfigError("give one budget: --flops F, or --gpu-hours H with --gpu NAME")
    if args.flops is not None and (args.gpu, args.mfu, args.peak_tflops) != (None, None, None):
        raise ConfigError("--gpu, --mfu and --peak-tflops go with --gpu-hours, not --flops")
    if args.fit and args.law:
        raise ConfigError("give --law NAME or --fit FIT.json, not both")
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise ConfigError(f"--tolerance {args.tolerance:g}: give a positive fraction, e.g. 0.05")
    if args.flops is not None:
        settings = {"name": "flops", "flops": args.flops}
    else:
        settings = {"name": "gpu_hours", "hours": args.gpu_hours, "gpu": args.gpu, "peak_tflops": args.peak_tflops}
        settings["mfu"] = 1.0 if args.mfu is None else args.mfu
    try:  # the budget's own checks, in the flags' names
        budget = BudgetConfig(**settings, flop_count=args.flop_count)
    except ConfigError as e:
        raise ConfigError([_as_flags(line) for line in e.problems]) from None
    chosen = load_fit(args.fit) if args.fit else law(args.law or "chinchilla")
    overrides = list(args.overrides)
    if not any(o.lstrip("+").startswith("tokenizer=") for o in overrides):
        overrides.insert(0, "tokenizer=gpt2")  # a real run's vocabulary, not the main job's 4096-token BPE
    cfg = compose(overrides)
    vocab = OmegaConf.to_container(cfg.model, resolve=True).get("vocab_size") or cfg.tokenizer.vocab_size
    result = make_plan(
        budget,
        chosen,
        vocab_size=vocab,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        tolerance=args.tolerance,
        overrides=overrides,
    )
    return result.to_dict() if args.json else render(result)


PLAN_FLAGS = {
    "budget=gpu_hours needs ": "--gpu-hours needs ",
    "budget.flops": "--flops",
    "budget.hours": "--gpu-hours",
    "budget.gpu": "--gpu",
    "budget.mfu": "--mfu",
    "budget.peak_tflops": "--peak-tflops",
}


def _as_flags(line: str) -> str:
    """A BudgetConfig message in `lm-lab plan`'s flag names."""
    for setting, flag in PLAN_FLAGS.items():
        line = line.replace(setting, flag)
    return line


def sample(args: argparse.Namespace) -> str:
    from lm_lab.sample import sample as generate_text

    top_k = None if args.top_k == 0 else args.top_k
    return generate_text(
        args.checkpoint, args.prompt, tokens=args.tokens, temperature=args.temperature, top_k=top_k, seed=args.seed
    )


def export(args: argparse.Namespace) -> str:
    from lm_lab.hf import export as to_hf

    return f"exported to {to_hf(args.checkpoint, args.out)}"


def consolidate(args: argparse.Namespace) -> str:
    from lm_lab.checkpoint import consolidate as to_file
    from lm_lab.checkpoint import read_model_state

    src = Path(args.checkpoint).expanduser()
    if src.is_dir() and (src / "checkpoints" / "last.ckpt").exists():  # a run directory: its last checkpoint
        src = src / "checkpoints" / "last.ckpt"
    out = Path(args.out) if args.out else src.with_name(src.name.removesuffix(".ckpt") + ".consolidated.ckpt")
    ckpt = to_file(src, out)
    cfg, state = read_model_state(out)  # read back as every tool reads it
    return f"{out}: step {ckpt['global_step']}, {len(state)} tensors of {cfg.name} (read back with load_model)"


def evaluate(args: argparse.Namespace) -> dict:
    from lm_lab.evaluate import evaluate as run_tasks

    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks:
        raise ConfigError("--tasks is empty; give lm-eval task names, e.g. --tasks arc_easy,piqa")
    return run_tasks(
        args.checkpoint,
        tasks,
        include_path=args.include_path,
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        num_fewshot=args.num_fewshot,
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lm-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("count", help="parameter counts and training FLOPs per token of a model config")
    p.add_argument("--model", default="gpt2_small", help="a conf/model name (default gpt2_small)")
    p.add_argument("--vocab-size", type=_positive, default=50257, help="vocabulary size (default 50257, GPT-2's)")
    p.add_argument("--seq-len", type=_positive, default=None, help="training sequence length (default block_size)")
    p.add_argument("overrides", nargs="*", help="model field overrides, e.g. n_layer=16")
    p.set_defaults(func=count)
    p = sub.add_parser("cooldowns", help="fork cooldowns of several lengths from a stable run's checkpoint")
    p.add_argument("run_dir", help="the stable run's directory (a constant-LR or WSD run that kept step checkpoints)")
    p.add_argument("--step", type=int, required=True, help="fork from checkpoints/step<STEP>.ckpt")
    p.add_argument("--lengths", type=_int_list, required=True, help="cooldown lengths in steps, e.g. 200,400,800")
    p.add_argument("--shape", default="1-sqrt", help="cooldown shape (default 1-sqrt, Hägele et al.'s best)")
    p.add_argument("--final-lr-frac", type=float, default=0.0, help="LR at the end of the cooldown (default 0)")
    p.add_argument("--dry-run", action="store_true", help="print each fork's overrides, run nothing")
    p.add_argument("overrides", nargs="*", help="extra overrides for every fork")
    p.set_defaults(func=cooldowns)
    p = sub.add_parser("plan", help="the compute-optimal model and run for a FLOP or GPU-hour budget")
    p.add_argument("--flops", type=float, help="the budget in training FLOPs, e.g. 3.4e18")
    p.add_argument("--gpu-hours", type=float, help="the budget in GPU-hours (with --gpu)")
    p.add_argument("--gpu", help="the GPU of --gpu-hours: a device-table key (a100, h100_sxm, h200, ...)")
    p.add_argument("--mfu", type=float, help="assumed MFU in (0, 1] for --gpu-hours (default 1: the nominal budget)")
    p.add_argument("--peak-tflops", type=float, help="dense peak TFLOP/s of the GPU, instead of the device table")
    p.add_argument("--law", help="chinchilla (20 tokens/param, the default), hoffmann or epoch")
    p.add_argument("--fit", help="a JSON law from `lm-lab fit --method parametric` or `--method isoflop`")
    p.add_argument("--seq-len", type=_positive, default=1024, help="training sequence length (default 1024)")
    p.add_argument("--batch-size", type=_positive, default=64, help="sequences per optimizer step (default 64)")
    p.add_argument("--flop-count", choices=["6n", "chinchilla"], default="6n", help="FLOPs/token the steps follow from")
    p.add_argument("--tolerance", type=float, default=0.05, help="parameters within this of N_opt (0.05)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("overrides", nargs="*", help="run.py overrides for the command, e.g. data=slimpajama_6b")
    p.set_defaults(func=plan)
    p = sub.add_parser("sample", help="generate text from a lab checkpoint (file or run directory)")
    p.add_argument("checkpoint", help="a checkpoint (RUN/checkpoints/last.ckpt) or a run directory")
    p.add_argument("--prompt", default="", help="the text to continue (default: a new document)")
    p.add_argument("--tokens", type=_positive, default=100, help="tokens to generate (default 100)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the K likeliest tokens; 0: all (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling (default 0)")
    p.set_defaults(func=sample)
    from lm_lab.scaling import fits, report, search, sweep

    p = sub.add_parser("report", help="every run under a folder as one row; seeds grouped; settings compared")
    report.add_arguments(p)
    p.set_defaults(func=report.command)
    p = sub.add_parser("sweep", help="launch a study: an IsoFLOP grid, or scaling-law points from cooldowns")
    sweep.add_arguments(p)
    p = sub.add_parser("fit", help="fit a scaling law (isoflop, parametric) or hyperparameter power laws to a CSV")
    fits.add_arguments(p)
    p.set_defaults(func=fits.command)
    p = sub.add_parser("search", help="a hyperparameter search on Optuna: resumable, shared by workers, FLOP-capped")
    search.add_arguments(p)
    p.set_defaults(func=search.command)
    from lm_lab.analysis import command as analysis

    p = sub.add_parser("analyze", help="attention degeneration of a model: k*, m* and lazy layers, table and plots")
    analysis.add_arguments(p)
    p.set_defaults(func=analysis.command)
    p = sub.add_parser("export", help="a lab checkpoint as a Hugging Face folder (from_pretrained loads it)")
    p.add_argument("checkpoint", help="a lab checkpoint or a run directory")
    p.add_argument("out", help="a new (or empty) folder")
    p.set_defaults(func=export)
    p = sub.add_parser("consolidate", help="one checkpoint file from a sharded FSDP checkpoint folder")
    p.add_argument("checkpoint", help="a sharded checkpoint folder (RUN/checkpoints/last.ckpt) or a run directory")
    p.add_argument("out", nargs="?", default=None, help="the file to write (default: NAME.consolidated.ckpt beside it)")
    p.set_defaults(func=consolidate)
    p = sub.add_parser("eval", help="zero-shot tasks through lm-evaluation-harness (the model exported on the fly)")
    p.add_argument("checkpoint", help="a lab checkpoint, a run directory or a Hugging Face model folder")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks, e.g. arc_easy,lambada_openai,sciq")
    p.add_argument("--limit", type=_positive, default=None, help="documents per task (default: all)")
    p.add_argument("--num-fewshot", type=int, default=0, help="few-shot examples (default 0)")
    p.add_argument("--batch-size", type=_positive, default=8, help="lm-eval batch size (default 8)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--include-path", default=None, help="a folder of extra task YAMLs (offline tasks)")
    p.set_defaults(func=evaluate)
    p = sub.add_parser("prepare-data", help="tokenise a corpus once into sharded token files (cached)")
    p.add_argument(
        "overrides", nargs="*", help="config overrides as for run.py, e.g. data=slimpajama_6b tokenizer=gpt2"
    )
    p.set_defaults(func=prepare_data)
    # overrides may come anywhere on the line (Hydra style): what argparse does not know is an override
    args, rest = parser.parse_known_args(argv)
    if any(r.startswith("-") for r in rest):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.overrides = [*getattr(args, "overrides", []), *rest]
    if args.func in (sample, export, evaluate, consolidate) and args.overrides:
        parser.error(f"unrecognized arguments: {' '.join(args.overrides)}")
    try:
        out = args.func(args)
        print(out if isinstance(out, str) else json.dumps(out, indent=2))
    except ConfigError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except HydraException as e:  # unknown model name or field: Hydra's message lists the choices
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
