"""The run's typed configuration: every group's dataclass, built and cross-checked before any work.

`RunConfig.from_dict` turns the composed Hydra config into dataclasses and collects every problem it finds
into one `ConfigError` (one line each, naming field, value and fix), so a bad run fails in a second
instead of after the data is tokenised or the model is built.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from omegaconf import DictConfig

from lm_lab.data.config import DataConfig
from lm_lab.data.tokenizers import TokenizerConfig
from lm_lab.errors import ConfigError, raise_if
from lm_lab.models import ModelConfig
from lm_lab.optim import OptimizerConfig, SchedulerConfig, lr_multiplier


@dataclass
class TrainConfig:
    """The run's length, batch and evaluation cadence. Users state the global batch; accumulation is derived."""

    seed: int = 1337
    max_steps: int = 1000
    """Optimizer steps; also the LR schedule's horizon."""
    seq_len: int | None = None
    """Tokens per training window; None means model.block_size."""
    batch_size: int = 32
    """Global batch in sequences per optimizer step, over all devices and accumulation steps."""
    micro_batch_size: int | None = None
    """Sequences per device per forward pass; None means batch_size / world size (no accumulation)."""
    val_every: int = 100
    """Validate every this many optimizer steps (and always at the end)."""
    val_tokens: int | None = 2**18
    """Validation tokens scored each time (the first ones of the split, always the same); None = whole split."""
    log_every: int = 10
    """Log training metrics every this many optimizer steps."""
    on_nonfinite: str = "stop"
    """A non-finite loss or gradient norm: `stop` the run (the last checkpoint stays as it was) or `skip` the
    update and go on (stopping after `max_skipped_steps` in a row)."""
    max_skipped_steps: int = 10
    """With `on_nonfinite=skip`: stop after this many consecutive skipped updates."""
    compile: bool = False
    """`torch.compile` the model (in place: checkpoints keep their parameter names)."""


@dataclass
class RunConfig:
    model: ModelConfig
    tokenizer: TokenizerConfig
    data: DataConfig
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    train: TrainConfig
    world_size: int

    @property
    def accumulate_grad_batches(self) -> int:
        return self.train.batch_size // (self.train.micro_batch_size * self.world_size)

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.train.seq_len

    @classmethod
    def from_dict(cls, cfg: dict, world_size: int = 1) -> RunConfig:
        """Build every group's dataclass from a plain (resolved) dict, reporting all problems at once."""
        problems: list[str] = []
        built = {}
        model_fields = dict(cfg["model"])
        for group, klass in [
            ("tokenizer", TokenizerConfig),
            ("data", DataConfig),
            ("optimizer", OptimizerConfig),
            ("scheduler", SchedulerConfig),
            ("train", TrainConfig),
        ]:
            built[group] = _build(klass, group, cfg.get(group) or {}, problems)
        if built["tokenizer"] is not None:
            tok_vocab = built["tokenizer"].vocab_size
            if model_fields.get("vocab_size") is None:
                model_fields["vocab_size"] = tok_vocab
            elif model_fields["vocab_size"] < tok_vocab:
                problems.append(
                    f"model.vocab_size={model_fields['vocab_size']} is smaller than tokenizer.vocab_size={tok_vocab}; "
                    f"remove model.vocab_size to take it from the tokenizer"
                )
        built["model"] = _build(ModelConfig, "model", model_fields, problems)
        train, model = built["train"], built["model"]
        if train is not None:
            problems += _check_train(train, model, world_size)
        if not problems and built["scheduler"] is not None:
            try:  # the schedule must fit in the run (e.g. warmup <= max_steps)
                lr_multiplier(built["scheduler"], train.max_steps)
            except ConfigError as e:
                problems += e.problems
        problems += _check_trainer(cfg.get("trainer") or {})
        problems += _check_gpu_only(model, train, cfg.get("trainer") or {})
        trainer = cfg.get("trainer") or {}
        optimizer, scheduler = built["optimizer"], built["scheduler"]
        if optimizer is not None:
            problems += optimizer.check_environment(uses_cuda(trainer), str(trainer.get("strategy", "auto")))
            if optimizer.name == "schedule_free" and scheduler is not None and scheduler.name != "constant":
                problems.append(
                    f"optimizer.name=schedule_free replaces the LR schedule; use scheduler=constant (with "
                    f"scheduler.warmup_steps=0 and optimizer.warmup_steps for its warmup), not scheduler.name={scheduler.name!r}"
                )
            elif optimizer.name == "schedule_free" and scheduler is not None and scheduler.warmup_steps:
                problems.append(
                    f"scheduler.warmup_steps={scheduler.warmup_steps} would warm schedule-free AdamW up twice; set "
                    f"scheduler.warmup_steps=0 and use optimizer.warmup_steps for its warmup"
                )
            if optimizer.name == "schedule_free" and train is not None and train.on_nonfinite == "skip":
                problems.append(
                    "train.on_nonfinite=skip cannot skip a schedule-free update (its averaging advances on every "
                    "step); use train.on_nonfinite=stop with optimizer.name=schedule_free"
                )
        problems += _check_callbacks(cfg.get("callbacks") or {})
        init = cfg.get("init") or {}
        if init.get("name") == "checkpoint" and not init.get("path"):
            problems.append(
                "init=checkpoint needs init.path=CHECKPOINT (e.g. a stable run's checkpoints/step1000.ckpt)"
            )
        for group, names in IMPLEMENTED.items():
            name = (cfg.get(group) or {}).get("name")
            if name not in names:
                problems.append(f"{group}.name={name!r} is not available yet; choose one of {list(names)}")
        raise_if(problems)
        return cls(**built, world_size=world_size)


def _check_callbacks(callbacks: dict) -> list[str]:
    """The weight-averaging callbacks' settings (the others are Lightning's own and checked by it)."""
    from callbacks.averaging import problems

    found = []
    for name, cb in callbacks.items():
        if isinstance(cb, dict) and str(cb.get("_target_", "")).endswith("AveragedWeights"):
            found += problems(f"callbacks.{name}", **{k: v for k, v in cb.items() if k != "_target_"})
    return found


IMPLEMENTED = {"budget": ("none",), "init": ("random", "checkpoint")}  # groups that later work fills


def uses_cuda(trainer: dict) -> bool:
    """Whether the Trainer this config builds runs on CUDA GPUs (`auto` picks them when any is visible)."""
    accelerator = trainer.get("accelerator", "auto")
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _check_trainer(trainer: dict) -> list[str]:
    accelerator = trainer.get("accelerator", "auto")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return [f"trainer.accelerator={accelerator!r} but no CUDA GPU is visible; use trainer=auto or trainer=cpu"]
    on_cpu = not uses_cuda(trainer)
    precision = str(trainer.get("precision", "32-true"))
    if on_cpu and "16" in precision:  # bf16-mixed, 16-mixed, bf16-true, 16-true
        return [
            f"trainer.precision={precision!r} needs a CUDA GPU; on CPU use trainer.precision=32-true (or trainer=auto)"
        ]
    return []


def _check_gpu_only(run_model: ModelConfig | None, train: TrainConfig | None, trainer: dict) -> list[str]:
    """Options that need a GPU (or a compiler) and would otherwise fail deep inside torch, later."""
    problems = []
    on_cpu = not uses_cuda(trainer)
    if run_model is not None and run_model.attn_impl == "flash":
        if importlib.util.find_spec("flash_attn") is None:
            problems.append(
                "model.attn_impl=flash but flash-attn is not installed; `pip install -e .[gpu]` or use model.attn_impl=auto"
            )
        elif on_cpu:
            problems.append("model.attn_impl=flash needs a CUDA GPU; on CPU use model.attn_impl=auto (SDPA)")
        if run_model.head_dim % 8 or run_model.head_dim > 256:
            problems.append(
                f"model.attn_impl=flash needs a head size (d_model / n_head = {run_model.head_dim}) that is a multiple "
                f"of 8 and at most 256; change model.n_head or use model.attn_impl=sdpa"
            )
    if train is not None and train.compile:
        if sys.platform == "win32":
            problems.append("train.compile=true is not supported on Windows; set train.compile=false")
        elif on_cpu and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
            problems.append(
                "train.compile=true on CPU needs a C++ compiler (g++ or clang++) on PATH; install one or set train.compile=false"
            )
    return problems


def _build(klass, group: str, values: dict, problems: list[str]):
    known = {f.name for f in fields(klass)}
    unknown = sorted(set(values) - known)
    if unknown:
        problems += [f"{group}.{k} is not a {group} setting; known: {sorted(known)}" for k in unknown]
        return None
    try:
        return klass(**values)
    except ConfigError as e:
        problems += e.problems
    except TypeError as e:  # e.g. a list where a number belongs
        problems.append(f"{group}: {e}")
    return None


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_train(train: TrainConfig, model: ModelConfig | None, world_size: int) -> list[str]:
    problems = []
    if train.on_nonfinite not in ("stop", "skip"):
        problems.append(f"train.on_nonfinite={train.on_nonfinite!r} must be `stop` or `skip`")
    for name in ("max_steps", "batch_size", "val_every", "log_every", "max_skipped_steps"):
        if not _positive_int(getattr(train, name)):
            problems.append(f"train.{name}={getattr(train, name)!r} must be a positive integer")
    if train.val_tokens is not None and not _positive_int(train.val_tokens):
        problems.append(f"train.val_tokens={train.val_tokens!r} must be a positive integer or null (whole split)")
    if model is not None:
        if train.seq_len is None:
            train.seq_len = model.block_size
        if not _positive_int(train.seq_len):
            problems.append(f"train.seq_len={train.seq_len!r} must be a positive integer")
        elif train.seq_len > model.block_size:
            problems.append(
                f"train.seq_len={train.seq_len} exceeds model.block_size={model.block_size} (learned positions); "
                f"lower train.seq_len or raise model.block_size"
            )
    if problems:
        return problems
    if train.micro_batch_size is None:
        if train.batch_size % world_size:
            return [
                f"train.batch_size={train.batch_size} is not divisible by the world size {world_size}; use a multiple"
            ]
        train.micro_batch_size = train.batch_size // world_size
    if not _positive_int(train.micro_batch_size):
        return [f"train.micro_batch_size={train.micro_batch_size!r} must be a positive integer or null"]
    per_pass = train.micro_batch_size * world_size
    if train.batch_size % per_pass:
        ok = [m for m in range(1, train.batch_size + 1) if train.batch_size % (m * world_size) == 0]
        problems.append(
            f"train.batch_size={train.batch_size} is not a multiple of train.micro_batch_size={train.micro_batch_size} "
            f"x world size {world_size}; pick micro_batch_size from {ok}"
        )
    return problems


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str] = ()) -> DictConfig:
    """The config `python run.py OVERRIDES` would see, composed without running anything (for tools and tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    if not CONF_DIR.is_dir():
        raise ConfigError(f"config folder {CONF_DIR} not found; install lm_lab from a checkout with `pip install -e .`")
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=["run_dir=.", *overrides])


def register_schemas() -> None:
    """Register each group's dataclass with Hydra, so every field can be overridden (and is type-checked)
    even when a group's YAML file leaves it at its default: `model.dropout=0.1` works without a `+`."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, klass in [
        ("model", ModelConfig),
        ("tokenizer", TokenizerConfig),
        ("data", DataConfig),
        ("optimizer", OptimizerConfig),
        ("scheduler", SchedulerConfig),
    ]:
        cs.store(group=group, name="schema", node=klass)


def world_size_of(trainer_cfg: dict) -> int:
    """Processes the Trainer will start, known before it is built (so accumulation can be derived)."""
    devices = trainer_cfg.get("devices", "auto")
    if isinstance(devices, list):
        n = len(devices)
    elif devices in ("auto", -1, "-1"):
        n = torch.cuda.device_count() if uses_cuda(trainer_cfg) else 1
    else:
        n = int(devices)
    return max(1, n) * int(trainer_cfg.get("num_nodes", 1))
