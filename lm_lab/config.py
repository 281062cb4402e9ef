"""The run's typed configuration: one dataclass per group, and every derived value computed in one step.

`RunConfig()` with no arguments is the main job, the run `python run.py` makes (a test proves it). A config
becomes a run in two visible steps, both before any work:

1. **build** — `RunConfig.from_dict(plain)` turns a composed Hydra config into the groups' dataclasses; each
   checks its own fields in `__post_init__`. Every problem is collected into one `ConfigError`.
2. **derive** — `run.derive(...)` returns a copy with every derived value filled in: the vocabulary from the
   tokenizer, `train.seq_len` from the model, the micro-batch and accumulation from the world size, a fork's
   `train.max_steps` from its checkpoint or from the compute budget, and then checks the groups against each other.
   Nothing else assigns a config value.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from lm_lab.data.config import DataConfig
from lm_lab.data.tokenizers import TokenizerConfig
from lm_lab.errors import ConfigError, raise_if
from lm_lab.models import ModelConfig
from lm_lab.optim import OptimizerConfig, SchedulerConfig, lr_multiplier
from lm_lab.scaling.budget import BudgetConfig, budget_steps
from lm_lab.scaling.width_depth import register_resolvers
from lm_lab.strategies import FSDPConfig, build_strategy, slurm_nodes, slurm_tasks_per_node

register_resolvers()  # ${lm_lab.width_for:...} in conf/experiment/width_depth.yaml, wherever a config is resolved


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class TrainConfig:
    """The run's length, batch and evaluation cadence. Users state the global batch; accumulation is derived."""

    seed: int = 1337
    """Seeds model init, dropout and the data order."""
    max_steps: int = 400
    """Optimizer steps; also the LR schedule's horizon. A cooldown fork (see `init`) or a compute budget (see
    `budget`) derives it."""
    seq_len: int | None = None
    """Tokens per training window; None means model.block_size."""
    batch_size: int = 16
    """Global batch in sequences per optimizer step, over all devices and accumulation steps."""
    micro_batch_size: int | None = None
    """Sequences per device per forward pass; None means batch_size / world size (no accumulation)."""
    val_every: int = 100
    """Validate every this many optimizer steps (and always at the end)."""
    val_tokens: int | None = 2**18
    """Validation tokens scored each time (the first ones of the split, always the same); None = whole split."""
    final_val_tokens: Any = "val_tokens"
    """Tokens the final weights are scored on for results.json: `val_tokens` (the same as every validation),
    a number, or null for the whole held-out split (Hägele et al. score all ~3M held-out tokens at the end)."""
    log_every: int = 10
    """Log training metrics every this many optimizer steps."""
    on_nonfinite: str = "stop"
    """A non-finite loss or gradient norm: `stop` the run (the last checkpoint stays as it was) or `skip` the
    update and go on (stopping after `max_skipped_steps` in a row)."""
    max_skipped_steps: int = 10
    """With `on_nonfinite=skip`: stop after this many consecutive skipped updates."""
    compile: bool = False
    """`torch.compile` the model (in place: checkpoints keep their parameter names)."""

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            problems.append(f"train.seed={self.seed!r} must be an integer in [0, 2^32)")
        for name in ("max_steps", "batch_size", "val_every", "log_every", "max_skipped_steps"):
            if not _positive_int(getattr(self, name)):
                problems.append(f"train.{name}={getattr(self, name)!r} must be a positive integer")
        for name in ("seq_len", "micro_batch_size", "val_tokens"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                problems.append(f"train.{name}={value!r} must be a positive integer or null")
        final = self.final_val_tokens
        if not (final is None or final == "val_tokens" or _positive_int(final)):
            problems.append(
                f"train.final_val_tokens={final!r} must be `val_tokens`, a positive integer or null (whole split)"
            )
        if self.on_nonfinite not in ("stop", "skip"):
            problems.append(f"train.on_nonfinite={self.on_nonfinite!r} must be `stop` or `skip`")
        if not isinstance(self.compile, bool):
            problems.append(f"train.compile={self.compile!r} must be true or false")
        raise_if(problems)

    @property
    def final_tokens(self) -> int | None:
        """Tokens of the final evaluation (None: the whole held-out split)."""
        return self.val_tokens if self.final_val_tokens == "val_tokens" else self.final_val_tokens


PRECISIONS = (
    "auto",
    "32-true",
    "32",
    "64-true",
    "64",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "transformer-engine",
)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
# Lightning Trainer arguments the lab sets itself, with the setting that controls each
DERIVED_TRAINER_ARGS = {
    "max_steps": "train.max_steps",
    "max_epochs": "train.max_steps",
    "accumulate_grad_batches": "train.batch_size and train.micro_batch_size (accumulation is derived from them)",
    "val_check_interval": "train.val_every",
    "check_val_every_n_epoch": "train.val_every",
    "log_every_n_steps": "train.log_every",
    "gradient_clip_val": "optimizer.grad_clip",
    "gradient_clip_algorithm": "optimizer.grad_clip",
    "callbacks": "callbacks.NAME",
    "logger": "logger.NAME",
    "plugins": "checkpoint_io",
    "default_root_dir": "hydra.run.dir",
    "use_distributed_sampler": "the data module (it gives each rank its own part)",
}


@dataclass
class TrainerConfig:
    """The Lightning Trainer's hardware settings (`conf/trainer/`); everything else about the loop is derived."""

    accelerator: str = "auto"
    """`auto` (a CUDA GPU when visible), `cpu`, `gpu`/`cuda` or `mps`."""
    devices: Any = 1
    """Devices per node: a positive number, `auto`/-1 (under SLURM the tasks per node, else all visible GPUs),
    or a list of device indices."""
    num_nodes: Any = 1
    """Nodes: a positive number, or `auto` (under SLURM the job's nodes, else 1)."""
    strategy: str = "auto"
    """Lightning's strategy: `auto` (one device), `ddp`, `fsdp` (with `trainer.fsdp`), or another Lightning name."""
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    """`trainer.strategy=fsdp`: what is sharded, activation checkpointing, the checkpoint format."""
    precision: str = "auto"
    """`auto` (bf16-mixed on a GPU with native bf16, else 32-true) or any Lightning precision, e.g. bf16-mixed."""
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    num_sanity_val_steps: int = 2
    """Validation batches run before training, to fail fast on a broken validation step."""
    deterministic: Any = None
    """Lightning's `deterministic` (None: torch's default kernels)."""

    def __post_init__(self) -> None:
        self.precision = str(self.precision)
        problems = []
        if self.accelerator not in ACCELERATORS:
            problems.append(f"trainer.accelerator={self.accelerator!r} is unknown; choose one of {list(ACCELERATORS)}")
        if self.precision not in PRECISIONS:
            problems.append(
                f"trainer.precision={self.precision!r} is unknown; choose one of {list(PRECISIONS)} (fp32 is 32-true)"
            )
        d = self.devices
        ok = (
            d in ("auto", -1, "-1")
            or _positive_int(d)
            or (isinstance(d, str) and d.isdigit() and int(d) > 0)
            or (isinstance(d, list | tuple) and d and all(isinstance(i, int) and i >= 0 for i in d))
        )
        if not ok:
            problems.append(f"trainer.devices={d!r} must be a positive number, auto (or -1) or a list of device ids")
        if not (_positive_int(self.num_nodes) or self.num_nodes == "auto"):
            problems.append(f"trainer.num_nodes={self.num_nodes!r} must be a positive integer or auto")
        if isinstance(self.fsdp, dict):
            try:
                self.fsdp = FSDPConfig(**self.fsdp)
            except ConfigError as e:
                problems += e.problems
            except TypeError as e:
                problems.append(f"trainer.fsdp: {e}")
        if not isinstance(self.num_sanity_val_steps, int) or self.num_sanity_val_steps < -1:
            problems.append(f"trainer.num_sanity_val_steps={self.num_sanity_val_steps!r} must be an integer >= -1")
        for name in ("enable_progress_bar", "enable_model_summary"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"trainer.{name}={getattr(self, name)!r} must be true or false")
        raise_if(problems)

    @property
    def uses_cuda(self) -> bool:
        """Whether the Trainer this config builds runs on CUDA GPUs (`auto` picks them when any is visible)."""
        return self.accelerator in ("gpu", "cuda") or (self.accelerator == "auto" and torch.cuda.is_available())

    def resolved_devices(self):
        """`devices` for the Trainer: `auto` under SLURM is its tasks per node (one process per GPU)."""
        if self.devices in ("auto", -1, "-1") and slurm_tasks_per_node():
            return slurm_tasks_per_node()
        return self.devices

    def resolved_nodes(self) -> int:
        """`num_nodes` for the Trainer: `auto` is the SLURM job's node count, or 1 outside SLURM."""
        if self.num_nodes == "auto":
            return slurm_nodes() or 1
        return self.num_nodes

    @property
    def world_size(self) -> int:
        """Processes the Trainer will start, known before it is built (so accumulation can be derived)."""
        d = self.resolved_devices()
        if isinstance(d, list | tuple):
            n = len(d)
        elif d in ("auto", -1, "-1"):
            n = torch.cuda.device_count() if self.uses_cuda else 1
        else:
            n = int(d)
        return max(1, n) * self.resolved_nodes()

    def resolved_precision(self) -> str:
        """`auto`: bf16-mixed on a CUDA GPU that supports it, full fp32 elsewhere."""
        if self.precision != "auto":
            return self.precision
        # only GPUs with native bf16 (Ampere and newer); emulated bf16 on older ones is slower than fp32
        native_bf16 = self.uses_cuda and torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16-mixed" if native_bf16 else "32-true"

    def lightning_kwargs(self, model: ModelConfig | None = None) -> dict:
        """The Trainer arguments of this config: precision, devices and nodes resolved, the strategy built for
        `model` (FSDP wraps its blocks). `fit` adds the plugins (checkpoint IO, Lightning's SLURM environment)."""
        kwargs = {k: v for k, v in asdict(self).items() if k != "fsdp"}
        strategy = build_strategy(self.strategy, self.fsdp, model) if model is not None else self.strategy
        return {
            **kwargs,
            "precision": self.resolved_precision(),
            "devices": self.resolved_devices(),
            "num_nodes": self.resolved_nodes(),
            "strategy": strategy,
        }


INITS = ("random", "fork", "weights", "inheritune", "stacking", "hybrid_stacking", "half_width", "every_other")


@dataclass
class InitConfig:
    """Where a new run starts (`conf/init/`). Resuming this run's own checkpoint is `ckpt_path`, not an init.

    - `random`: a fresh initialisation.
    - `fork`: continue another run's trajectory from one of its checkpoints: weights, optimizer state, step,
      data position and random state. With `scheduler=wsd scheduler.cooldown_steps=N` it is a cooldown fork
      that ends at the checkpoint's step + N (Hägele et al. 2024 §3). (`checkpoint` is its old name.)
    - `weights`: only the model weights of a lab checkpoint, through `map` (weight surgery plugs in here);
      a fresh optimizer, step 0 and a fresh data order.

    Weight surgery (`lm_lab.inherit.surgery`), each like `weights` (a fresh optimizer, step 0); the tensors a
    definition does not give keep the model's fresh initialisation:

    - `inheritune`: the first model.n_layer blocks of `reference`, with its embeddings, final norm and head
      (Sanyal et al. 2024, §3); `modules` chooses the blocks' sub-modules (§4.2). With `path` too (a trained
      smaller target) it grows that model with the reference's next blocks (Algorithm 1).
    - `stacking`: the trained model at `path` repeated to model.n_layer layers (Gong et al. 2019).
    - `hybrid_stacking`: the reference's first n/2 blocks stacked to n (Inheritune §4 baselines).
    - `half_width`: the reference at half width, all its layers (§4); the model must be its half-width config.
    - `every_other`: block i is the teacher `reference`'s block 2i (DistilBERT, Sanh et al. 2019).
    """

    name: str = "random"
    path: str | None = None
    """`fork`, `weights`: the checkpoint file (e.g. RUN/checkpoints/step1000.ckpt or RUN/checkpoints/last.ckpt);
    `stacking`: the trained model to stack; `inheritune`: the trained smaller target to grow (optional)."""
    map: Any = None
    """`weights`: a function `(source_state_dict, source_config, target_config) -> state_dict` mapping the source
    model's weights onto the new model, as a dotted name (`my_module.first_layers`) or, from Python, the
    function; None loads the weights as they are. A mapped dict may leave tensors out: they keep their init."""
    allow_optimizer_change: bool = False
    """`fork`: allow another peak LR, betas or weight decay than the source run's (the fork then matches no
    single run of one schedule)."""
    reference: str | None = None
    """`inheritune`, `hybrid_stacking`, `half_width`, `every_other`: the reference (teacher) model, a lab
    checkpoint file or run directory."""
    modules: str = "attn_mlp_ln"
    """`inheritune`: the sub-modules inherited of each block (Table 3): `attn_mlp_ln` (the paper's), `attn_mlp`
    (without the norms), `attn` (attention and its norm), `mlp_ln` (MLP and its norm)."""

    def __post_init__(self) -> None:
        from lm_lab.inherit.surgery import MODULES  # the choices live with the surgery that defines them

        if self.name == "checkpoint":  # the old name of `fork`
            self.name = "fork"
        problems = []
        by_reference = ("inheritune", "hybrid_stacking", "half_width", "every_other")
        if self.name not in INITS:
            problems.append(f"init.name={self.name!r} is unknown; choose one of {list(INITS)}")
        elif self.name in ("fork", "weights", "stacking") and not self.path:
            problems.append(f"init={self.name} needs init.path=CHECKPOINT (e.g. RUN/checkpoints/step1000.ckpt)")
        elif self.name in by_reference and not self.reference:
            problems.append(f"init={self.name} needs init.reference=MODEL (a lab checkpoint or run directory)")
        if self.path and self.name in by_reference[1:]:
            problems.append(f"init.path is not read by init={self.name}: give the model as init.reference")
        if self.reference and self.name not in by_reference:
            fix = ": give the model to stack as init.path" if self.name == "stacking" else ""
            problems.append(f"init.reference is for init={'/'.join(by_reference)}, not init={self.name}{fix}")
        if self.modules not in MODULES:
            problems.append(f"init.modules={self.modules!r} is unknown; choose one of {list(MODULES)}")
        elif self.modules != "attn_mlp_ln" and self.name != "inheritune":
            problems.append(f"init.modules is for init=inheritune, not init={self.name}")
        if self.map is not None and self.name != "weights":
            problems.append(f"init.map is for init=weights, not init={self.name}")
        if isinstance(self.map, str):
            try:
                locate(self.map)
            except ConfigError as e:
                problems.append(f"init.map: {e}")
        if not isinstance(self.allow_optimizer_change, bool):
            problems.append(f"init.allow_optimizer_change={self.allow_optimizer_change!r} must be true or false")
        raise_if(problems)

    def map_fn(self):
        return locate(self.map) if isinstance(self.map, str) else self.map


DISTILL_KINDS = ("none", "logit", "distilbert")


@dataclass
class DistillConfig:
    """Knowledge distillation from a frozen teacher (Inheritune §4 baselines)."""

    kind: str = "none"
    """`none` (plain LM training), `logit` (Hinton et al. 2015) or `distilbert` (Sanh et al. 2019)."""
    teacher: str | None = None
    """The teacher: a lab checkpoint file or run directory (its checkpoints/last.ckpt)."""
    temperature: float = 1.0
    """Softmax temperature T of the KD term (App. C.1: 1)."""
    alpha: float = 0.6
    """`logit`: weight of the LM cross-entropy; KD gets 1 - alpha (App. C.1: 0.6; see the module docstring)."""
    kd_weight: float = 5.0
    """`distilbert`: weight of the KD term (DistilBERT's alpha_ce)."""
    lm_weight: float = 2.0
    """`distilbert`: weight of the LM cross-entropy (DistilBERT's alpha_mlm; alpha_clm for a causal LM)."""
    cos_weight: float = 1.0
    """`distilbert`: weight of the hidden-state cosine loss (DistilBERT's alpha_cos)."""

    def __post_init__(self) -> None:
        if isinstance(self.teacher, Path):
            self.teacher = str(self.teacher)
        problems = []
        if self.kind not in DISTILL_KINDS:
            problems.append(f"distill.kind={self.kind!r} is unknown; choose one of {list(DISTILL_KINDS)}")
        elif self.kind != "none" and not (isinstance(self.teacher, str) and self.teacher):
            problems.append(f"distill.kind={self.kind} needs distill.teacher=PATH (a lab checkpoint or run directory)")
        if not (_finite_number(self.temperature) and self.temperature > 0):
            problems.append(f"distill.temperature={self.temperature!r} must be a positive number (App. C.1: 1)")
        if not (_finite_number(self.alpha) and 0 <= self.alpha <= 1):
            problems.append(f"distill.alpha={self.alpha!r} must be in [0, 1] (the LM loss's weight; App. C.1: 0.6)")
        weights = ("kd_weight", "lm_weight", "cos_weight")
        for name in weights:
            value = getattr(self, name)
            if not (_finite_number(value) and value >= 0):
                problems.append(f"distill.{name}={value!r} must be a number >= 0")
        if not problems and self.kind == "distilbert" and not any(getattr(self, n) for n in weights):
            problems.append("distill.kd_weight, lm_weight and cos_weight are all 0: nothing to train on; set one > 0")
        raise_if(problems)


def _finite_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _main_job_model() -> ModelConfig:
    return ModelConfig.preset("gpt2_tiny")


@dataclass
class RunConfig:
    """Everything a training run needs, one dataclass per config group. `RunConfig()` is the main job."""

    model: ModelConfig = field(default_factory=_main_job_model)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    init: InitConfig = field(default_factory=InitConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    name: str = "main"
    """Label of the run (Hydra puts its outputs in outputs/<name>/<time>/)."""
    world_size: int | None = None
    """Derived: processes training together (devices x nodes)."""

    @property
    def accumulate_grad_batches(self) -> int:
        return self.train.batch_size // (self.train.micro_batch_size * self.world_size)

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.train.seq_len

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, cfg: dict | DictConfig) -> RunConfig:
        """Build every group's dataclass from a plain (resolved) dict, reporting all problems at once. Keys that
        are not config groups (Hydra's, callbacks, loggers, ckpt_path) are checked where they are used."""
        if isinstance(cfg, DictConfig):
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        problems: list[str] = []
        built = {group: _build(klass, group, cfg.get(group) or {}, problems) for group, klass in GROUP_CLASSES.items()}
        problems += check_hydra_sections(cfg)
        raise_if(problems)
        return cls(**built, name=str(cfg.get("name", "main")))

    def derive(self, *, fork_step: int | None = None) -> RunConfig:
        """This run with every derived value filled in, checked across groups; `self` is left as it was.

        `fork_step`: the step of the checkpoint an `init=fork` run starts from (a cooldown fork's length follows
        from it)."""
        problems = []  # (a derived config derives again to itself, a fork's length recomputed)
        tr, model, sched = self.train, self.model, self.scheduler
        world_size = self.trainer.world_size
        # the vocabulary: the tokenizer's, unless the model asks for more rows
        if model.vocab_size is None:
            model = replace(model, vocab_size=self.tokenizer.vocab_size)
        elif model.vocab_size < self.tokenizer.vocab_size:
            problems.append(
                f"model.vocab_size={model.vocab_size} is smaller than tokenizer.vocab_size={self.tokenizer.vocab_size}; "
                f"remove model.vocab_size to take it from the tokenizer"
            )
        seq_len = tr.seq_len if tr.seq_len is not None else model.block_size
        micro = tr.micro_batch_size
        if micro is None:
            if tr.batch_size % world_size:
                problems.append(
                    f"train.batch_size={tr.batch_size} is not divisible by the world size {world_size}; use a multiple"
                )
            micro = max(1, tr.batch_size // world_size)
        max_steps = tr.max_steps
        if self.init.name == "fork" and fork_step is not None and sched.name == "wsd" and sched.cooldown_steps:
            max_steps = fork_step + sched.cooldown_steps  # a cooldown fork: one WSD run whose cooldown starts there
        from_budget = budget_steps(self.budget, model, seq_len, tr.batch_size * seq_len)
        if from_budget is not None and from_budget < 1:
            problems.append(
                f"budget={self.budget.name} pays for no step of this model ({tr.batch_size * seq_len:,} tokens/step); "
                f"raise the budget, or use a smaller model or batch"
            )
        elif from_budget is not None:
            max_steps = from_budget  # the budget's steps: the LR schedule's horizon (wall clock: a cap)
        train = replace(tr, seq_len=seq_len, micro_batch_size=micro, max_steps=max_steps)
        run = replace(self, model=model, train=train, world_size=world_size)
        raise_if(problems + run._cross_check(fork_step))
        return run

    def _cross_check(self, fork_step: int | None) -> list[str]:
        """Problems between groups of a derived config."""
        problems = []
        tr, model, opt, sched, trainer = self.train, self.model, self.optimizer, self.scheduler, self.trainer
        if tr.seq_len > model.block_size:
            problems.append(
                f"train.seq_len={tr.seq_len} exceeds model.block_size={model.block_size} (learned positions); "
                f"lower train.seq_len or raise model.block_size"
            )
        cap = self.data.val_split_tokens
        if cap is not None and cap < tr.seq_len + 1:  # a validation window is seq_len + 1 tokens
            problems.append(
                f"data.val_split_tokens={cap} leaves no validation window of train.seq_len + 1 = {tr.seq_len + 1} "
                f"tokens; raise it (e.g. data.val_split_tokens={100 * (tr.seq_len + 1)})"
            )
        per_pass = tr.micro_batch_size * self.world_size
        if tr.batch_size % per_pass:
            ok = [m for m in range(1, tr.batch_size + 1) if tr.batch_size % (m * self.world_size) == 0]
            problems.append(
                f"train.batch_size={tr.batch_size} is not a multiple of train.micro_batch_size={tr.micro_batch_size} "
                f"x world size {self.world_size}; pick micro_batch_size from {ok}"
            )
        problems += _check_budget(self)
        try:  # the schedule must fit in the run (e.g. warmup <= max_steps)
            lr_multiplier(sched, tr.max_steps)
        except ConfigError as e:
            why = f" (the steps budget={self.budget.name} pays for)" if self.budget.counts_flops else ""
            problems += [f"{line}{why}" for line in e.problems]
        if fork_step is not None and fork_step >= tr.max_steps:
            problems.append(
                f"init.path={self.init.path!r} is at step {fork_step}, not before train.max_steps={tr.max_steps}; "
                f"lengthen the run"
            )
        problems += _check_devices(model, tr, trainer)
        problems += opt.check_environment(trainer.uses_cuda, str(trainer.strategy))
        if opt.name == "schedule_free":
            if sched.name != "constant":
                problems.append(
                    f"optimizer.name=schedule_free replaces the LR schedule; use scheduler=constant (with "
                    f"scheduler.warmup_steps=0 and optimizer.warmup_steps for its warmup), not scheduler.name={sched.name!r}"
                )
            elif sched.warmup_steps:
                problems.append(
                    f"scheduler.warmup_steps={sched.warmup_steps} would warm schedule-free AdamW up twice; set "
                    f"scheduler.warmup_steps=0 and use optimizer.warmup_steps for its warmup"
                )
            if tr.on_nonfinite == "skip":
                problems.append(
                    "train.on_nonfinite=skip cannot skip a schedule-free update (its averaging advances on every "
                    "step); use train.on_nonfinite=stop with optimizer.name=schedule_free"
                )
        problems += _check_writable("data.cache_dir", self.data.cache_dir)
        return problems


GROUP_CLASSES = {
    "model": ModelConfig,
    "tokenizer": TokenizerConfig,
    "data": DataConfig,
    "optimizer": OptimizerConfig,
    "scheduler": SchedulerConfig,
    "train": TrainConfig,
    "trainer": TrainerConfig,
    "init": InitConfig,
    "budget": BudgetConfig,
    "distill": DistillConfig,
}


def _build(klass, group: str, values: dict, problems: list[str]):
    known = {f.name for f in fields(klass)}
    unknown = sorted(set(values) - known)
    if unknown:
        for k in unknown:
            hint = (
                f"; the lab sets it from {DERIVED_TRAINER_ARGS[k]}"
                if klass is TrainerConfig and k in DERIVED_TRAINER_ARGS
                else f"; known: {sorted(known)}"
            )
            problems.append(f"{group}.{k} is not a {group} setting{hint}")
        return None
    try:
        return klass(**values)
    except ConfigError as e:
        problems += e.problems
    except TypeError as e:  # e.g. a list where a number belongs
        problems.append(f"{group}: {e}")
    return None


def locate(target: str):
    """The object a dotted name (`package.module.name`) refers to, or a ConfigError saying why not."""
    module_name, _, attr = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{target!r} cannot be imported ({type(e).__name__}: {e}); check the spelling") from None


def check_hydra_sections(cfg: dict) -> list[str]:
    """The sections run.py instantiates (callbacks, loggers, checkpoint_io): every `_target_` imports, and the
    lab's own callbacks get valid settings. Checked before any work, like the groups."""
    problems = []
    for section in ("callbacks", "logger"):
        for name, item in (cfg.get(section) or {}).items():
            if not isinstance(item, dict) or "_target_" not in item:
                problems.append(f"{section}.{name} must have a _target_ (the class to build)")
                continue
            problems += _check_target(f"{section}.{name}", item)
    if isinstance(cfg.get("checkpoint_io"), dict):
        problems += _check_target("checkpoint_io", cfg["checkpoint_io"])
    return problems


def _check_target(where: str, item: dict) -> list[str]:
    try:
        target = locate(item["_target_"])
    except ConfigError as e:
        return [f"{where}._target_: {e.problems[0]}"]
    settings = getattr(target, "settings", None)  # a lab callback names the dataclass that checks its settings
    if isinstance(settings, type) and hasattr(settings, "problems"):
        return settings.problems(where, {k: v for k, v in item.items() if k != "_target_"})
    return []


def _check_budget(run: RunConfig) -> list[str]:
    """A budget against the rest of the run (its own fields are checked by `BudgetConfig`)."""
    budget, sched = run.budget, run.scheduler
    if budget.name == "none":
        return []
    problems = []
    if run.init.name == "fork" and sched.name == "wsd" and sched.cooldown_steps:
        problems.append(
            f"budget={budget.name} and a cooldown fork (init=fork with scheduler.cooldown_steps) both set the run's "
            f"length; use budget=none for the fork, or drop scheduler.cooldown_steps"
        )
    if budget.name == "wall_clock" and sched.name == "wsd" and sched.cooldown_steps is not None:
        problems.append(
            "budget=wall_clock times the cooldown from the clock: set its share with scheduler.cooldown_frac, "
            "not scheduler.cooldown_steps"
        )
    return problems


def _check_devices(model: ModelConfig, train: TrainConfig, trainer: TrainerConfig) -> list[str]:
    """Options that need a GPU (or a compiler) and would otherwise fail deep inside torch, later."""
    problems = []
    if trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return [
            f"trainer.accelerator={trainer.accelerator!r} but no CUDA GPU is visible; use trainer=auto or trainer=cpu"
        ]
    on_cpu = not trainer.uses_cuda
    if on_cpu and "16" in trainer.precision:  # bf16-mixed, 16-mixed, bf16-true, 16-true
        problems.append(
            f"trainer.precision={trainer.precision!r} needs a CUDA GPU; on CPU use trainer.precision=32-true (or trainer=auto)"
        )
    if model.attn_impl == "flash":
        if importlib.util.find_spec("flash_attn") is None:
            problems.append(
                "model.attn_impl=flash but flash-attn is not installed; `pip install -e .[gpu]` or use model.attn_impl=auto"
            )
        elif on_cpu:
            problems.append("model.attn_impl=flash needs a CUDA GPU; on CPU use model.attn_impl=auto (SDPA)")
        if model.head_dim % 8 or model.head_dim > 256:
            problems.append(
                f"model.attn_impl=flash needs a head size (d_model / n_head = {model.head_dim}) that is a multiple "
                f"of 8 and at most 256; change model.n_head or use model.attn_impl=sdpa"
            )
    if train.compile:
        if sys.platform == "win32":
            problems.append("train.compile=true is not supported on Windows; set train.compile=false")
        elif on_cpu and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
            problems.append(
                "train.compile=true on CPU needs a C++ compiler (g++ or clang++) on PATH; install one or set train.compile=false"
            )
    return problems


def _check_writable(field_name: str, folder: str | os.PathLike) -> list[str]:
    """A folder the run will write to: a probe file can be made in it, or in its nearest existing parent."""
    path = Path(folder).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        if not path.is_dir():
            raise NotADirectoryError(path)
        tempfile.TemporaryFile(dir=path).close()  # as root, permission bits alone say nothing: try it
    except OSError as e:
        return [
            f"{field_name}={str(folder)!r} is not writable ({path}: {e.strerror or type(e).__name__}); choose another folder"
        ]
    return []


def check_run_dir(run_dir: str | os.PathLike) -> None:
    """The run directory must be writable before anything else happens."""
    raise_if(_check_writable("run directory (hydra.run.dir)", run_dir))


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str] = (), *, hydra_config: bool = False) -> DictConfig:
    """The config `python run.py OVERRIDES` would see, composed without running anything (for tools and tests);
    `hydra_config`: with Hydra's own node (`hydra.run.dir` ...)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    if not CONF_DIR.is_dir():
        raise ConfigError(f"config folder {CONF_DIR} not found; install lm_lab from a checkout with `pip install -e .`")
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=["run_dir=.", *overrides], return_hydra_config=hydra_config)


def register_schemas() -> None:
    """Register each group's dataclass with Hydra, so every field can be overridden (and is type-checked) even
    when a group's YAML file leaves it at its default: `model.dropout=0.1` works without a `+`. Called by the
    tools that compose (run.py, `compose`), never on import."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, klass in GROUP_CLASSES.items():
        cs.store(group=group, name="schema", node=klass)
