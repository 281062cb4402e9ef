"""`fit()`: the one training function. run.py, `lm-lab cooldowns`, the benchmarks and the tests call it.

    from lm_lab.config import RunConfig
    from lm_lab.train import fit

    results = fit(RunConfig(), "runs/main")  # the main job; results.module is the trained LightningModule

A run goes through three phases, and nothing is written before the second:

1. **check** — the config is derived and cross-checked, the inputs (tokenizer, corpus, token files, the
   checkpoint to resume or fork, the weights to start from) are opened and checked, the run directory is
   locked against a second run;
2. **build** — data module, LightningModule, callbacks, loggers and Trainer, in that order;
3. **train** — `Trainer.fit`, then the final evaluation, and `results.json`.

It never exits the process: a non-finite stop, Ctrl-C/SIGTERM or a callback's stop is the returned results'
`stop_reason`. It can be called many times in one process: it seeds itself and leaves no global state behind.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import OmegaConf

from callbacks.budget import ComputeBudget
from callbacks.checkpoint import LastCheckpoint
from callbacks.throughput import TokenThroughput
from lm_lab.checkpoint import (
    check_compatible,
    check_fork_optimizer,
    full_checkpoint,
    read_checkpoint,
    resume_checkpoint,
    start_weights,
)
from lm_lab.checkpoint_io import AtomicCheckpointIO
from lm_lab.config import InitConfig, RunConfig, TrainConfig, check_run_dir
from lm_lab.data.datamodule import LMDataModule
from lm_lab.data.prepare import preflight
from lm_lab.devices import peak_flops
from lm_lab.errors import ConfigError
from lm_lab.fileio import atomic_write_text
from lm_lab.guards import NonFiniteError, StopRequested
from lm_lab.lock import RunLock
from lm_lab.models import (
    active_param_count,
    chinchilla_flops_per_token,
    flops_per_token,
    non_embedding_params,
    param_count,
)
from lm_lab.module import LMModule
from lm_lab.results import Results
from lm_lab.scaling.budget import NO_STEP_LIMIT, describe, token_flops
from lm_lab.strategies import cluster_plugins

log = logging.getLogger(__name__)


def default_callbacks(run_dir: str | Path) -> list[Callback]:
    """The callbacks of `conf/callbacks/default.yaml`, built in Python (a test checks the two agree)."""
    from callbacks import LossSpikes

    ckpts = str(Path(run_dir) / "checkpoints")
    return [
        LastCheckpoint(dirpath=ckpts, every_n_steps=100, every_minutes=30),
        ModelCheckpoint(
            dirpath=ckpts,
            filename="best-step{step}",
            auto_insert_metric_name=False,
            monitor="val/loss",
            mode="min",
            save_top_k=1,
            save_last=False,
        ),
        TokenThroughput(window_size=5),
        LossSpikes(window=100, k=6.0),
        TQDMProgressBar(refresh_rate=10),
    ]


def default_loggers(run_dir: str | Path) -> list[Logger]:
    """The logger of `conf/logger/tensorboard.yaml`: TensorBoard event files in RUN_DIR/tensorboard/."""
    return [TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)]


def fit(
    run: RunConfig,
    run_dir: str | Path,
    *,
    resume: str | None = "last",
    init: InitConfig | None = None,
    callbacks: Sequence[Callback] | None = None,
    loggers: Sequence[Logger] | None = None,
    module_cls: Callable[..., LMModule] = LMModule,
    checkpoint_io=None,
    overrides: Sequence[str] = (),
    record: dict | None = None,
) -> Results:
    """Train `run` in `run_dir` and return its results (with `results.module`, the trained module).

    resume: `last` continues this run directory's newest good checkpoint if it has one (else starts afresh); a
        path resumes that checkpoint; None always starts afresh.
    init: where a fresh run starts (overrides `run.init`): random weights, a fork of another run's trajectory,
        or another model's weights through a mapping function (see `InitConfig`).
    callbacks, loggers: Lightning callbacks and loggers (default: `default_callbacks`, `default_loggers`).
    module_cls: the LightningModule class, or a function making one (LMModule's arguments); `run.distill` chooses
        the distillation module when this is left at LMModule.
    overrides: the command line that made this run (recorded in results.json).
    record: more settings to save in config.yaml beside the run's (run.py: the callbacks and loggers).
    """
    started = time.time()
    run_dir = Path(run_dir)
    if run.distill.kind != "none" and module_cls is LMModule:  # distill=logit|distilbert: a frozen teacher
        from lm_lab.inherit.distill import DistillModule

        module_cls = partial(DistillModule, distill=run.distill)
    if init is not None:
        run = replace(run, init=init)
    # -- 1. check everything; nothing is written yet ---------------------------------------------------------
    check_run_dir(run_dir)
    base, run = run, run.derive()  # every field and cross-group check before the run directory is touched
    rank_zero = rank_zero_only.rank == 0
    with RunLock(run_dir, enabled=rank_zero), _rank_zero_logs():
        ckpt_path, ckpt = resume_checkpoint(resume, run_dir / "checkpoints", clean=rank_zero)  # this run's own
        resuming, fork, weights = ckpt is not None, None, None
        if resuming:  # a resumed fork keeps the length its first start derived; its source is not read again
            fork_step = ckpt.get("hyper_parameters", {}).get("fork_step")
        else:
            fork_step = None
            source = Path(run.init.path).expanduser() if run.init.path else None
            # a fork continues a training state (a file); weights may also come from a run directory or HF folder
            if run.init.name in ("fork", "weights") and not (
                source.is_file() or (run.init.name == "weights" and source.is_dir())
            ):
                raise ConfigError(
                    f"init.path={run.init.path!r} does not exist; give a checkpoint file (e.g. RUN/checkpoints/last.ckpt)"
                    + (", a run directory or a Hugging Face folder" if run.init.name == "weights" else "")
                )
            if run.init.name == "fork":
                ckpt_path = Path(run.init.path).expanduser()
                ckpt = fork = read_checkpoint(ckpt_path)
                fork_step = fork["global_step"]
                check_fork_optimizer(ckpt_path, ckpt, run.optimizer, allow=run.init.allow_optimizer_change)
        run = base.derive(fork_step=fork_step)
        tr = run.train
        _check_strategy(run, callbacks, ckpt_path, ckpt)
        preflight(run.data, run.tokenizer)
        if ckpt is not None:
            check_compatible(ckpt_path, ckpt, run)
            done = _finished(run_dir, run)
            if done is not None:
                log.info(
                    "this run already finished (step %d of %d): nothing to do (%s)",
                    done.steps,
                    tr.max_steps,
                    run_dir / "results.json",
                )
                done.module = module_cls(run.model, run.optimizer, run.scheduler, max_steps=tr.max_steps)
                done.module.configure_model()
                weights = full_checkpoint(ckpt_path)["state_dict"] if ckpt.get("sharded") else ckpt["state_dict"]
                done.module.load_state_dict(weights)  # its final weights (x for schedule-free)
                return done
        elif run.init.name not in ("random", "fork"):  # weights, or a weight surgery (init=inheritune, ...)
            weights = start_weights(run.init, run.model)  # mapped onto this model and checked, tensors named

        # -- 2. build: from here on the run leaves evidence -----------------------------------------------------
        if rank_zero_only.rank == 0:
            saved = {**run.to_dict(), **(record or {})}
            atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(_plain(saved))))
            atomic_write_text(run_dir / "overrides.yaml", OmegaConf.to_yaml(list(overrides)))
        L.seed_everything(tr.seed, workers=True, verbose=False)
        if run.trainer.uses_cuda:
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for any fp32 work
        data = data_module(run)
        module = module_cls(
            run.model,
            run.optimizer,
            run.scheduler,
            max_steps=tr.max_steps,
            on_nonfinite=tr.on_nonfinite,
            max_skipped_steps=tr.max_skipped_steps,
            compile=tr.compile,
            tokenizer=_plain(run.tokenizer),
            data=_plain(run.data),
            fork_step=fork_step,
        )
        if weights is not None:
            module.start_from(weights)  # start_weights logged where they came from (a fresh optimizer, step 0)
        callbacks = _ordered(list(callbacks) if callbacks is not None else default_callbacks(run_dir))
        budget = _budget_callback(run, callbacks, resuming)
        for cb in callbacks:
            if isinstance(cb, LastCheckpoint):
                cb.resuming = resuming  # re-log what a killed start of this run left unlogged (not a fork's source)
        if not run.trainer.enable_progress_bar:  # trainer.enable_progress_bar=false silences the bar it names
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        loggers = list(loggers) if loggers is not None else default_loggers(run_dir)
        purge = _purge_step(ckpt) if resuming else 0  # TensorBoard forgets what a killed start logged after it
        for lg in loggers:
            if isinstance(lg, TensorBoardLogger):
                lg._kwargs["purge_step"] = purge  # read when the SummaryWriter is created, at the first log
        trainer = L.Trainer(
            **run.trainer.lightning_kwargs(run.model),
            max_steps=tr.max_steps,
            accumulate_grad_batches=run.accumulate_grad_batches,
            val_check_interval=tr.val_every * run.accumulate_grad_batches,  # counted in micro-batches
            check_val_every_n_epoch=None,  # validate on the step count: the training stream is one endless epoch
            use_distributed_sampler=False,  # the data module gives each rank its own disjoint part
            log_every_n_steps=tr.log_every,
            callbacks=callbacks,
            logger=loggers,
            # atomic: a crash mid-write never damages a checkpoint; under SLURM, Lightning's SLURM environment
            plugins=[checkpoint_io or AtomicCheckpointIO(), *cluster_plugins()],
            default_root_dir=run_dir,
        )
        if trainer.world_size != run.world_size:
            raise ConfigError(
                f"trainer started {trainer.world_size} processes, expected {run.world_size}; set trainer.devices explicitly"
            )
        fpt = flops_per_token(run.model, tr.seq_len)
        if run.budget.name != "none":
            log.info("%s", describe(run.budget, run.model, tr.seq_len, run.tokens_per_step))
            if base.train.max_steps not in (tr.max_steps, TrainConfig.max_steps) and run.budget.counts_flops:
                log.warning("budget=%s replaces train.max_steps=%d", run.budget.name, base.train.max_steps)
        length = (
            f"steps until the clock runs out x {run.tokens_per_step} tokens"
            if tr.max_steps == NO_STEP_LIMIT
            else f"{tr.max_steps} steps x {run.tokens_per_step} tokens = {tr.max_steps * run.tokens_per_step:.3g} "
            f"tokens, {tr.max_steps * run.tokens_per_step * fpt:.3g} FLOPs"
        )
        log.info(
            "model %s: %s params (%s non-embedding%s), %.3g FLOPs/token | %s | "
            "batch %d = %d micro x %d accumulation x %d devices | precision %s%s",
            run.model.name,
            f"{param_count(run.model):,}",
            f"{non_embedding_params(run.model):,}",
            f", {active_param_count(run.model):,} active" if run.model.has_moe() else "",
            fpt,
            length,
            tr.batch_size,
            tr.micro_batch_size,
            run.accumulate_grad_batches,
            run.world_size,
            trainer.precision,
            f" | {'resuming' if resuming else 'forking'} from {ckpt_path} (step {ckpt['global_step']})"
            if ckpt_path
            else "",
        )
        del ckpt, fork  # memory-mapped; Lightning reads the file again

        # -- 3. train ---------------------------------------------------------------------------------------------
        stop_reason, failure = _guarded(
            trainer, trainer.fit, module, datamodule=data, ckpt_path=ckpt_path, weights_only=True
        )
        if trainer.interrupted and stop_reason is None:
            stop_reason = "interrupted"
        scored = stop_reason is None or stop_reason == "interrupted"
        larger_final = tr.final_tokens != tr.val_tokens  # the final weights on the whole (or more of the) split
        # (or: resumed from a checkpoint at max_steps whose final validation never finished: score it now)
        if (
            stop_reason is None
            and data.val is not None
            and (larger_final or module.last_val_step != trainer.global_step)
        ):
            if larger_final:
                data.val_tokens, module.val_key = tr.final_tokens, "val/loss_final"
            stop_reason, failure = _guarded(trainer, trainer.validate, module, datamodule=data, verbose=False)
            scored = stop_reason is None
        module.evaluation_weights()  # schedule-free: the returned module holds x, as its checkpoints do
        metrics = trainer.callback_metrics
        val_loss = float(metrics.get(module.val_key, metrics.get("val/loss", math.nan))) if scored else math.nan
        if stop_reason is None:
            stop_reason = _stop_reason(run, module, trainer, budget)
        results = _results(run, data, module, trainer, val_loss, stop_reason, failure, overrides, started, budget)
        if trainer.is_global_zero:
            try:
                results.save(run_dir)
            except OSError as e:  # e.g. the disk is full: the results are still returned (and the checkpoints intact)
                log.error("results.json could not be written (%s: %s)", type(e).__name__, e)
            log.info(
                "val_loss %.4f (ppl %.2f, %.4f bits/byte) vs unigram entropy %.4f nats | %d steps, %s tokens, %.1f s | %s",
                val_loss,
                results.val_ppl or math.nan,
                results.val_bpb or math.nan,
                results.val_unigram_entropy or math.nan,
                results.steps,
                f"{results.tokens:,}",
                results.wall_seconds,
                run_dir / "results.json",
            )
            log.info("%s", throughput_line(results))
        return results


def _check_strategy(run: RunConfig, callbacks, ckpt_path, ckpt) -> None:
    """What a strategy cannot do, refused before any work: a sharded checkpoint resumed without FSDP, and weight
    averaging under FSDP (its average is a full, unsharded copy of the model)."""
    from lightning.pytorch.callbacks import WeightAveraging

    fsdp = run.trainer.strategy == "fsdp"
    if ckpt is not None and ckpt.get("sharded") and not fsdp:
        raise ConfigError(
            f"{ckpt_path} is a sharded FSDP checkpoint: resume it with trainer=fsdp, or make one file of it "
            f"(lm-lab consolidate {ckpt_path} OUT.ckpt) and resume that with ckpt_path=OUT.ckpt"
        )
    if fsdp and any(isinstance(c, WeightAveraging) for c in callbacks or ()):
        raise ConfigError(
            "weight averaging (callbacks with AveragedWeights) keeps a full, unsharded copy of the model and does "
            "not run under trainer.strategy=fsdp; use trainer=ddp, or drop the averaging callback"
        )


def data_module(run: RunConfig, val_tokens: int | None | str = "val_tokens") -> LMDataModule:
    """The data module of a derived run: its corpus, tokenizer, windows and batches; `val_tokens` scores that many
    validation tokens instead of `train.val_tokens` (None: the whole split)."""
    tr = run.train
    return LMDataModule(
        run.data,
        run.tokenizer,
        seq_len=tr.seq_len,
        micro_batch_size=tr.micro_batch_size,
        batch_size=tr.batch_size,
        val_tokens=tr.val_tokens if val_tokens == "val_tokens" else val_tokens,
        seed=tr.seed,
    )


def _guarded(trainer, step, *args, **kwargs) -> tuple[str | None, str | None]:
    """Run `trainer.fit` or `trainer.validate`; what stops it becomes (stop_reason, failure), never an exit."""
    try:
        step(*args, **kwargs)
    except StopRequested as e:
        log.warning("%s: saved at step %d, stopping (the same command resumes it)", e, trainer.global_step)
        return "interrupted", None
    except (KeyboardInterrupt, SystemExit):  # Lightning exits after a Ctrl-C outside the training steps
        return "interrupted", None
    except NonFiniteError as e:
        log.error("%s", e)
        return "non_finite", str(e)
    except OSError as e:  # a full disk, a vanished folder: the previous checkpoint is intact (atomic writes)
        failure = f"{type(e).__name__}: {e}"
        log.error("%s; the last checkpoint that was written is intact", failure)
        return "failed", failure
    return None, None


def _budget_callback(run: RunConfig, callbacks: list[Callback], resuming: bool) -> ComputeBudget | None:
    """The run's `ComputeBudget` (the one given, e.g. with a mock clock, or a new one), bound to the run; the
    device-peak override reaches the throughput callback too."""
    budget = next((c for c in callbacks if isinstance(c, ComputeBudget)), None)
    if budget is None and run.budget.name != "none":
        budget = ComputeBudget()
        callbacks.insert(len(callbacks) - sum(isinstance(c, LastCheckpoint) for c in callbacks), budget)
    if budget is not None:
        budget.bind(run, resuming)
    for cb in callbacks:
        if isinstance(cb, TokenThroughput):
            cb.peak_tflops = run.budget.peak_tflops
    return budget


def _stop_reason(run: RunConfig, module: LMModule, trainer: L.Trainer, budget) -> str:
    """`budget` when the budget ended the run (its FLOPs' steps, the clock, or the horizon the clock decided)."""
    step = trainer.global_step
    if run.budget.name != "none" and (
        (run.budget.counts_flops and step >= run.train.max_steps)
        or (budget is not None and budget.stopped)
        or (module.horizon_decided and step >= module.max_steps)
    ):
        return "budget"
    return "max_steps" if step >= run.train.max_steps else "stopped"


def _budget_figures(run: RunConfig, tokens: int, seconds: float, budget) -> dict:
    """The budget, what the run spent of it, in its own units."""
    b = run.budget
    out = dict.fromkeys(("budget_flops", "budget_seconds", "budget_flop_count", "budget_flops_used"))
    out.update(budget=b.name, budget_seconds_used=None, budget_fraction=None)
    if b.name == "none":
        return out
    clock = b.name == "wall_clock" and budget is not None and budget.seconds_used is not None
    used = budget.seconds_used if clock else seconds  # the budget's own clock, else train_seconds
    out["budget_seconds_used"] = used
    if b.counts_flops:
        spent = tokens * token_flops(run.model, run.train.seq_len, b.flop_count)
        out.update(budget_flops=b.total_flops(), budget_flop_count=b.flop_count, budget_flops_used=spent)
        out["budget_fraction"] = spent / b.total_flops()
    else:
        out.update(budget_seconds=b.seconds, budget_fraction=used / b.seconds)
    return out


def _throughput(run: RunConfig, trainer: L.Trainer, tokens: int, seconds: float) -> dict:
    """Tokens and sequences per second, overall and per device, and MFU (PaLM App. B: model FLOPs per second over
    the devices' dense peak): over train_seconds (validations and checkpoints inside), and over this start's
    training steps alone (the throughput callback's clock)."""
    tr, world = run.train, trainer.world_size
    device = trainer.strategy.root_device
    peak = peak_flops(device, trainer.precision, run.budget.peak_tflops)
    fpt = flops_per_token(run.model, tr.seq_len)
    per_sec = tokens / seconds if seconds > 0 else None
    measured = next((c.measured() for c in trainer.callbacks if isinstance(c, TokenThroughput)), None)
    steps, step_seconds = measured if measured else (0, 0.0)
    step_rate = steps * run.tokens_per_step / step_seconds if steps and step_seconds > 0 else None
    return {
        "tokens_per_sec": per_sec,
        "samples_per_sec": per_sec / tr.seq_len if per_sec else None,
        "tokens_per_sec_per_device": per_sec / world if per_sec else None,
        "samples_per_sec_per_device": per_sec / tr.seq_len / world if per_sec else None,
        "mfu": per_sec * fpt / (peak * world) if per_sec and peak else None,
        "step_tokens_per_sec": step_rate,
        "step_mfu": step_rate * fpt / (peak * world) if step_rate and peak else None,
        "devices": world,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "peak_flops_per_device": peak,
    }


def throughput_line(results: Results) -> str:
    """The run's speed in one line (logged at the end of every run)."""
    r = results

    def rate(x: float | None, unit: str) -> str:
        return f"{x:,.0f} {unit}/s" if x else f"- {unit}/s"

    mfu = f"MFU {100 * r.mfu:.1f}%" if r.mfu is not None else "MFU n/a (no peak for this device)"
    step = f" | training steps alone: {rate(r.step_tokens_per_sec, 'tokens')}" if r.step_tokens_per_sec else ""
    if r.step_mfu is not None:
        step += f", MFU {100 * r.step_mfu:.1f}%"
    peak = f" of {r.peak_flops_per_device / 1e12:.1f} TFLOP/s" if r.peak_flops_per_device else ""
    return (
        f"throughput: {rate(r.tokens_per_sec, 'tokens')} ({rate(r.tokens_per_sec_per_device, 'tokens')} per device), "
        f"{rate(r.samples_per_sec, 'samples')} ({rate(r.samples_per_sec_per_device, 'samples')} per device) on "
        f"{r.devices} x {r.device_name} | {mfu}{peak}{step}"
    )


def _results(run, data, module, trainer, val_loss, stop_reason, failure, overrides, started, budget) -> Results:
    tr = run.train
    has_data = data.val is not None  # False only if the run was stopped while preparing its data
    best = next(
        (cb.best_model_score for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None) == "val/loss"),
        None,
    )  # the callback that keeps the best weights by validation loss (restored on resume)
    best = float(best) if best is not None and math.isfinite(float(best)) else None
    averaged = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val/loss_ema", "val/loss_swa")}
    tokens = trainer.global_step * run.tokens_per_step
    fpt = flops_per_token(run.model, tr.seq_len)
    fpt_chinchilla = chinchilla_flops_per_token(run.model, tr.seq_len)
    total = module.train_seconds()
    val_tokens = data.val_token_count() if has_data else None
    val_bytes = data.val_bytes() if has_data else None
    return Results(
        val_loss=val_loss,
        val_ppl=math.exp(val_loss) if math.isfinite(val_loss) else None,
        val_bpb=_bits_per_byte(val_loss, val_tokens, val_bytes),
        val_bytes=val_bytes,
        best_val_loss=best if best is not None else (val_loss if math.isfinite(val_loss) else None),
        val_loss_ema=averaged.get("val/loss_ema"),
        val_loss_swa=averaged.get("val/loss_swa"),
        val_unigram_entropy=data.val_unigram_entropy() if has_data else None,
        val_tokens=val_tokens,
        val_step=module.last_val_step,
        steps=trainer.global_step,
        tokens=tokens,
        epochs=data.epochs_at(trainer.global_step) if has_data else None,
        stop_reason=stop_reason,
        failure=failure,
        skipped_steps=module.skipped_steps,
        flops=float(tokens * fpt),
        flops_per_token=fpt,
        flops_chinchilla=float(tokens * fpt_chinchilla),
        flops_per_token_chinchilla=fpt_chinchilla,
        params=param_count(run.model),
        params_non_embedding=non_embedding_params(run.model),
        params_active=active_param_count(run.model),
        tokens_per_step=run.tokens_per_step,
        train_seconds=total,
        train_seconds_last_start=total - module.train_seconds_before,
        **_throughput(run, trainer, tokens, total),
        **_budget_figures(run, tokens, total, budget),
        wall_seconds=time.time() - started,
        starts=module.starts,
        model=run.model.name,
        n_layer=run.model.n_layer,
        n_head=run.model.n_head,
        d_model=run.model.d_model,
        vocab_size=run.model.vocab_size,
        seq_len=tr.seq_len,
        batch_size=tr.batch_size,
        lr=run.optimizer.lr,
        seed=tr.seed,
        tokenizer=data.tokenizer.name if has_data and data.tokenizer is not None else run.tokenizer.cache_key,
        data=run.data.name,
        init=run.init.name,
        init_path=run.init.path,
        init_reference=run.init.reference,
        distill=f"{run.distill.kind}:{run.distill.teacher}" if run.distill.kind != "none" else None,
        overrides=list(overrides),
        module=module,
    )


def _bits_per_byte(val_loss: float, tokens: int | None, n_bytes: int | None) -> float | None:
    """Nats per token -> bits per byte of the same text (the tokenizer-free unit of e.g. Gao et al. 2020's Pile)."""
    if not (math.isfinite(val_loss) and tokens and n_bytes):
        return None
    return val_loss * tokens / n_bytes / math.log(2)


def _finished(run_dir: Path, run: RunConfig) -> Results | None:
    """The results of a run that already reached `train.max_steps` (or the end of its wall-clock budget) and
    scored its final weights, else None. A FLOP budget raised since is not finished: the run goes on."""
    try:
        done = Results.load(run_dir)
    except ConfigError:
        return None
    clock_ended = done.stop_reason == "budget" and run.budget.name == "wall_clock"
    return done if done.finished and (done.steps >= run.train.max_steps or clock_ended) else None


def _ordered(callbacks: list[Callback]) -> list[Callback]:
    """`LastCheckpoint` last: the checkpoint a run resumes from is written after every other callback has done
    its step (weight averaging, the spike monitor, the best-checkpoint bookkeeping), so it holds all of it."""
    return [c for c in callbacks if not isinstance(c, LastCheckpoint)] + [
        c for c in callbacks if isinstance(c, LastCheckpoint)
    ]


def _purge_step(ckpt: dict) -> int:
    """The first TensorBoard step a resumed run logs again (see `LastCheckpoint.state_dict`)."""
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("LastCheckpoint") and "log_from" in state:
            return state["log_from"]
    return ckpt["global_step"]  # a checkpoint saved after a validation has every step before it logged


def _plain(obj):
    """Dataclasses to plain data for YAML (tuples as lists, callables by name)."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if callable(obj):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    return obj


@contextmanager
def _rank_zero_logs():
    """The lab's log lines come from rank zero only (every DDP rank runs fit)."""
    lab = logging.getLogger("lm_lab")
    level = lab.level
    if rank_zero_only.rank != 0:
        lab.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lab.setLevel(level)


__all__ = ["data_module", "default_callbacks", "default_loggers", "fit"]
