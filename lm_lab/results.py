"""`Results`: the schema of `results.json`, the one record every run leaves and every tool reads.

`fit()` returns it (with the trained module attached, for a notebook or a loop); `Results.save` writes it
atomically as strict JSON (a loss that does not exist is null, not NaN); `Results.load(run_dir)` reads it back.
The README's `results.json` table lists exactly these fields (a test checks it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lm_lab.errors import ConfigError
from lm_lab.fileio import atomic_write_json

ADDED_LATER = (
    "val_bpb",
    "val_bytes",
    "params_active",
    "init_reference",
    "distill",
    "samples_per_sec",
    "tokens_per_sec_per_device",
    "samples_per_sec_per_device",
    "step_tokens_per_sec",
    "step_mfu",
    "devices",
    "device_name",
    "peak_flops_per_device",
)
"""Keys that results.json files of older lm_lab versions lack; they load as null."""


@dataclass
class Results:
    # -- the score -----------------------------------------------------------------------------------------
    val_loss: float | None
    """Mean next-token loss (nats) of the final weights on the final evaluation's held-out tokens."""
    val_ppl: float | None
    """exp(val_loss)."""
    val_bpb: float | None
    """Bits per UTF-8 byte of the scored text: val_loss x val_tokens / val_bytes / ln 2 (comparable across
    tokenizers; special tokens count 0 bytes)."""
    val_bytes: int | None
    """UTF-8 bytes of the text of the final evaluation's target tokens."""
    best_val_loss: float | None
    """Lowest periodic validation loss (on `train.val_tokens`) of the run; its weights are checkpoints/best-step<N>.ckpt."""
    val_loss_ema: float | None
    """Loss of the EMA of the weights (callbacks `AveragedWeights` with kind=ema), else null."""
    val_loss_swa: float | None
    """Loss of the SWA average of the weights (kind=swa), else null."""
    val_unigram_entropy: float | None
    """Unigram entropy (nats) of the final evaluation's target tokens: the loss of a model that knows only token
    frequencies."""
    val_tokens: int | None
    """Held-out tokens the final evaluation scored."""
    val_step: int | None
    """The step whose weights `val_loss` scores (equals `steps` when the run finished)."""
    # -- how far it got ------------------------------------------------------------------------------------
    steps: int
    """Optimizer steps taken (in total, over every start of the run)."""
    tokens: int
    """Training tokens seen: steps x tokens_per_step."""
    epochs: float | None
    """Passes over the training split (null when streaming)."""
    stop_reason: str
    """`max_steps`, `budget` (the compute budget ended it: its steps, or the clock), `non_finite`, `interrupted` (Ctrl-C, SIGTERM: saved at a step boundary), `stopped` (a
    callback stopped it) or `failed` (see `failure`)."""
    failure: str | None
    """What stopped a `non_finite` or `failed` run, else null."""
    skipped_steps: int
    """Updates skipped for a non-finite gradient (train.on_nonfinite=skip)."""
    # -- cost ----------------------------------------------------------------------------------------------
    flops: float
    """Training FLOPs: tokens x flops_per_token (6N + attention, Kaplan et al. 2020 / PaLM appendix B)."""
    flops_per_token: int
    flops_chinchilla: float
    """Training FLOPs counted op by op as in Hoffmann et al. 2022 App. F (the convention of Chinchilla's and
    Hägele et al.'s scaling laws; the embedding lookup counted as a matmul): +27% for gpt2_small at T=1024."""
    flops_per_token_chinchilla: float
    params: int
    """Parameters, tied embedding counted once."""
    params_non_embedding: int
    params_active: int | None
    """Parameters one token uses: `params` with a mixture of experts' k routed experts instead of all (equal to
    `params` for a dense model); FLOPs follow the active count."""
    tokens_per_step: int
    train_seconds: float
    """Seconds of training summed over every start of the run (each start counted up to the checkpoint the next
    one resumed from, the last one to its end): what the final weights cost."""
    train_seconds_last_start: float
    """Seconds of training of the last start alone."""
    tokens_per_sec: float | None
    """tokens / train_seconds."""
    samples_per_sec: float | None
    """Training sequences (of seq_len tokens) per second: steps x batch_size / train_seconds."""
    tokens_per_sec_per_device: float | None
    """tokens_per_sec / devices."""
    samples_per_sec_per_device: float | None
    """samples_per_sec / devices."""
    mfu: float | None
    """Achieved model FLOPs utilisation: flops / (train_seconds x devices x the device's dense peak) (PaLM App. B),
    the validations and checkpoints inside train_seconds included; the mean over devices, which is also each
    device's (they share the work equally). Null off a GPU of the device table (or give budget.peak_tflops)."""
    step_tokens_per_sec: float | None
    """Tokens per second of the last start's training steps alone (validation excluded; callbacks.throughput's
    clock): the figure to compare with a benchmark. Null without the throughput callback, or when the start was
    interrupted (the callback's clock is read when training ends)."""
    step_mfu: float | None
    """MFU of the same training steps (step_tokens_per_sec x flops_per_token / (devices x peak))."""
    devices: int | None
    """Processes that trained together (devices per node x nodes)."""
    device_name: str | None
    """The accelerator (`torch.cuda.get_device_name()`, or `cpu`)."""
    peak_flops_per_device: float | None
    """The dense peak FLOP/s per device MFU is measured against (lm_lab/devices.py, at the run's precision)."""
    wall_seconds: float
    """Wall-clock seconds of the last start, checks, data preparation and evaluation included."""
    starts: int
    """How many times the run was started (1 + resumes)."""
    # -- the compute budget (conf/budget/) --------------------------------------------------------------------
    budget: str
    """`none`, `flops`, `gpu_hours` or `wall_clock`."""
    budget_flops: float | None
    """A FLOP budget (`flops`, or `gpu_hours` turned into FLOPs), in the `budget_flop_count` convention."""
    budget_flop_count: str | None
    """How a FLOP budget counts: `6n` (as `flops`) or `chinchilla` (as `flops_chinchilla`)."""
    budget_flops_used: float | None
    """Training FLOPs spent, in the budget's convention."""
    budget_seconds: float | None
    """A wall-clock budget in seconds."""
    budget_seconds_used: float | None
    """Seconds the budget counted: for wall_clock, from the Trainer's start (sanity check included) to the end
    of the final validation, over every start; otherwise train_seconds."""
    budget_fraction: float | None
    """Spent / budget, in the budget's unit (FLOPs or seconds)."""
    # -- what was trained ----------------------------------------------------------------------------------
    model: str
    n_layer: int
    n_head: int
    d_model: int
    vocab_size: int
    seq_len: int
    batch_size: int
    lr: float
    seed: int
    tokenizer: str
    data: str
    init: str
    """`random`, `fork`, `weights` or a weight surgery (`inheritune`, `stacking`, ...)."""
    init_path: str | None
    init_reference: str | None
    """The reference model of a surgery (`init.reference`), else null."""
    distill: str | None
    """`logit` or `distilbert` with the teacher's path (`logit:PATH`) for a distillation run, else null."""
    overrides: list[str]
    """The command-line overrides of run.py (empty from Python)."""
    module: Any = field(default=None, repr=False, compare=False)
    """The trained LightningModule (not saved; None when loaded from disk)."""

    @classmethod
    def json_keys(cls) -> list[str]:
        """The keys of results.json."""
        return [f.name for f in fields(cls) if f.name != "module"]

    def to_dict(self) -> dict:
        # not asdict(): it deep-copies every field, the trained module (all its weights) included
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "module"}
        out["overrides"] = list(out["overrides"])
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()}

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / "results.json"
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> Results:
        """The results of a run directory, or a ConfigError naming what is missing."""
        path = Path(run_dir) / "results.json"
        if not path.is_file():
            raise ConfigError(f"{path} not found: {run_dir} is not a finished or stopped lm_lab run")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e})") from None
        data = {**dict.fromkeys(ADDED_LATER), **data}  # a run of an older lm_lab: these were not measured
        missing = [k for k in cls.json_keys() if k not in data]
        if missing:
            raise ConfigError(f"{path} lacks {missing}: it was written by an older lm_lab or another tool")
        return cls(**{k: data[k] for k in cls.json_keys()})

    @property
    def finished(self) -> bool:
        """Reached its last step and scored the final weights."""
        return self.stop_reason in ("max_steps", "budget") and self.val_step == self.steps
