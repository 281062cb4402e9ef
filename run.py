"""Train a language model: `python run.py [experiment=NAME] [model=NAME] [group.key=value ...]`.

The one training path. It composes the config (conf/), checks all of it and the run's inputs (tokenizer,
token files, corpus, checkpoint) before writing anything, then builds in one visible sequence
data -> model -> callbacks -> loggers -> trainer, trains, and leaves the evidence in the run directory:
the resolved config, TensorBoard logs, checkpoints and results.json.

Running the same command again with the same `hydra.run.dir` resumes from its last checkpoint
(`ckpt_path=last`, the default); a fresh timestamped directory starts afresh.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from lm_lab.checkpoint import check_compatible, read_checkpoint, resume_checkpoint
from lm_lab.config import RunConfig, register_schemas, uses_cuda, world_size_of
from lm_lab.data.prepare import preflight
from lm_lab.errors import ConfigError
from lm_lab.fileio import atomic_write_json, atomic_write_text
from lm_lab.guards import NonFiniteError
from lm_lab.models import flops_per_token, non_embedding_params, param_count

log = logging.getLogger("lm_lab")

register_schemas()  # typed defaults for every group, before Hydra composes


def resolve_precision(precision: str, trainer: dict) -> str:
    """`auto`: bf16-mixed on a CUDA GPU that supports it, full fp32 elsewhere."""
    if precision != "auto":
        return precision
    on_gpu = uses_cuda(trainer)
    # only GPUs with native bf16 (Ampere and newer); emulated bf16 on older ones is slower than fp32
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported(including_emulation=False) else "32-true"


def start_checkpoint(plain: dict) -> tuple[Path | None, dict | None]:
    """`init=checkpoint`: the checkpoint a new run starts from (weights, optimizer, data position, random state).

    With `scheduler=wsd` and `scheduler.cooldown_steps=N` it is a cooldown fork: `train.max_steps` becomes the
    checkpoint's step + N, so the fork's LR sequence is that of one WSD run whose cooldown starts there.
    """
    init = plain.get("init") or {}
    if init.get("name") != "checkpoint":
        return None, None
    path = Path(init["path"]).expanduser()
    if not path.exists():
        raise ConfigError(
            f"init.path={init['path']!r} does not exist; give a checkpoint file (e.g. RUN/checkpoints/step1000.ckpt)"
        )
    ckpt = read_checkpoint(path)
    sched = plain.get("scheduler") or {}
    if sched.get("name") == "wsd" and sched.get("cooldown_steps"):
        plain["train"]["max_steps"] = ckpt["global_step"] + sched["cooldown_steps"]
        log.info("cooldown fork of %s: %d cooldown steps from step %d, to step %d", path, sched["cooldown_steps"],
                 ckpt["global_step"], plain["train"]["max_steps"])  # fmt: skip
    return path, ckpt


def train(cfg: DictConfig) -> dict:
    started = time.time()
    run_dir = Path(cfg.run_dir)
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    trainer_kwargs = dict(plain["trainer"])
    trainer_kwargs["precision"] = resolve_precision(trainer_kwargs["precision"], trainer_kwargs)
    world_size = world_size_of(trainer_kwargs)

    # -- 1. check everything; nothing has been read, built or written yet --------------------------------------
    init_path, init_ckpt = start_checkpoint(plain)  # init=checkpoint: may fix train.max_steps (a cooldown fork)
    run = RunConfig.from_dict(plain, world_size=world_size)
    tr = run.train
    preflight(run.data, run.tokenizer)
    ckpt_path, ckpt = resume_checkpoint(cfg.ckpt_path, run_dir / "checkpoints")  # this run's own, first
    if ckpt is None and init_ckpt is not None:
        ckpt_path, ckpt = init_path, init_ckpt
        if ckpt["global_step"] >= tr.max_steps:
            raise ConfigError(
                f"init.path={str(init_path)!r} is at step {ckpt['global_step']}, not before train.max_steps={tr.max_steps}; lengthen the run"
            )
    if ckpt is not None:
        identity = {
            "data": run.data.name,
            "mode": run.data.mode,
            "seq_len": tr.seq_len,
            "batch_size": tr.batch_size,
            "seed": tr.seed,
        }
        check_compatible(ckpt_path, ckpt, asdict(run.model), identity, optimizer=run.optimizer.name)
        done = _finished_results(run_dir, tr.max_steps)
        if done is not None:
            log.info(
                "this run already finished (step %d of %d): nothing to do (%s)",
                done["steps"],
                tr.max_steps,
                run_dir / "results.json",
            )
            return done

    # -- 2. from here on the run leaves evidence -----------------------------------------------------------------
    import lightning as L
    from hydra.utils import instantiate

    from lm_lab.data.datamodule import LMDataModule
    from lm_lab.module import LMModule

    resolved = OmegaConf.to_yaml(OmegaConf.create(plain))  # resolved, with derived values (a fork's max_steps)
    atomic_write_text(run_dir / "config.yaml", resolved)
    atomic_write_text(run_dir / "overrides.yaml", OmegaConf.to_yaml(list(_overrides())))
    log.info("resolved config (saved to %s):\n%s", run_dir / "config.yaml", resolved)
    L.seed_everything(tr.seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for any fp32 work

    data = LMDataModule(
        run.data,
        run.tokenizer,
        seq_len=tr.seq_len,
        micro_batch_size=tr.micro_batch_size,
        batch_size=tr.batch_size,
        val_tokens=tr.val_tokens,
        seed=tr.seed,
    )
    module = LMModule(
        run.model, run.optimizer, run.scheduler, max_steps=tr.max_steps,
        on_nonfinite=tr.on_nonfinite, max_skipped_steps=tr.max_skipped_steps, compile=tr.compile,
    )  # fmt: skip
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    # a resumed run re-does the steps after its checkpoint: TensorBoard drops what the killed run logged for them
    resume_step = {"purge_step": ckpt["global_step"]} if ckpt is not None else {}
    loggers = [instantiate(lg, **(resume_step if "TensorBoard" in lg._target_ else {})) for lg in cfg.logger.values()]
    trainer = L.Trainer(
        **trainer_kwargs,
        max_steps=tr.max_steps,
        accumulate_grad_batches=run.accumulate_grad_batches,
        val_check_interval=tr.val_every * run.accumulate_grad_batches,  # counted in micro-batches
        check_val_every_n_epoch=None,  # validate on the step count: the training stream is one endless epoch
        use_distributed_sampler=False,  # the data module gives each rank its own disjoint part
        log_every_n_steps=tr.log_every,
        callbacks=callbacks,
        logger=loggers,
        plugins=[instantiate(cfg.checkpoint_io)],  # atomic: a crash mid-write never damages a checkpoint
        default_root_dir=run_dir,
    )
    if trainer.world_size != world_size:
        raise ConfigError(
            f"trainer started {trainer.world_size} processes, expected {world_size}; set trainer.devices explicitly"
        )

    fpt = flops_per_token(run.model, tr.seq_len)
    log.info(
        "model %s: %s params (%s non-embedding), %.3g FLOPs/token | %d steps x %d tokens = %.3g tokens, %.3g FLOPs | "
        "batch %d = %d micro x %d accumulation x %d devices | precision %s%s",
        run.model.name, f"{param_count(run.model):,}", f"{non_embedding_params(run.model):,}", fpt,
        tr.max_steps, run.tokens_per_step, tr.max_steps * run.tokens_per_step, tr.max_steps * run.tokens_per_step * fpt,
        tr.batch_size, tr.micro_batch_size, run.accumulate_grad_batches, world_size, trainer_kwargs["precision"],
        f" | resuming from {ckpt_path} (step {ckpt['global_step']})" if ckpt_path else "",
    )  # fmt: skip
    del ckpt  # memory-mapped; Lightning reads the file again

    fit_started = time.time()
    stop_reason, failure = None, None
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:  # Lightning exits after a graceful Ctrl-C: record what the run reached, then exit
        if not trainer.interrupted:
            raise
    except NonFiniteError as e:
        stop_reason, failure = "non_finite", str(e)
        log.error("%s", e)  # into run.log
        print(f"error: {e}", file=sys.stderr)
    train_seconds = time.time() - fit_started
    if failure is None and not trainer.interrupted and module.last_val_step != trainer.global_step:
        # resumed from a checkpoint at max_steps whose final validation never finished: score the weights now
        trainer.validate(module, datamodule=data, verbose=False)
    val_loss = float(trainer.callback_metrics.get("val/loss", math.nan))
    tokens = trainer.global_step * run.tokens_per_step
    if stop_reason is None:
        stop_reason = (
            "interrupted" if trainer.interrupted else "max_steps" if trainer.global_step >= tr.max_steps else "stopped"
        )
    # the callback that keeps the best weights by validation loss (restored on resume), not any ModelCheckpoint
    best = next((cb.best_model_score for cb in trainer.checkpoint_callbacks if cb.monitor == "val/loss"), None)

    has_data = data.val is not None  # False only if the run was stopped while preparing its data
    results = {
        "val_loss": val_loss,
        "val_ppl": math.exp(val_loss) if math.isfinite(val_loss) else math.nan,
        "best_val_loss": float(best) if best is not None else val_loss,
        "val_unigram_entropy": data.val_unigram_entropy() if has_data else math.nan,
        "val_tokens": data.val_token_count() if has_data else None,
        "val_step": module.last_val_step,
        "steps": trainer.global_step,
        "tokens": tokens,
        "epochs": data.epochs_at(trainer.global_step) if has_data else None,
        "flops": tokens * fpt,
        "flops_per_token": fpt,
        "params": param_count(run.model),
        "params_non_embedding": non_embedding_params(run.model),
        "tokens_per_step": run.tokens_per_step,
        "tokens_per_sec": tokens / train_seconds if train_seconds > 0 else math.nan,
        "train_seconds": train_seconds,
        "wall_seconds": time.time() - started,
        "stop_reason": stop_reason,
        "failure": failure,
        "skipped_steps": module.skipped_steps,
        "model": run.model.name,
        "n_layer": run.model.n_layer,
        "n_head": run.model.n_head,
        "d_model": run.model.d_model,
        "vocab_size": run.model.vocab_size,
        "seq_len": tr.seq_len,
        "batch_size": tr.batch_size,
        "lr": run.optimizer.lr,
        "seed": tr.seed,
        "tokenizer": data.tokenizer.name if has_data else run.tokenizer.cache_key,
        "data": run.data.name,
        "overrides": list(_overrides()),
    }
    for key, value in trainer.callback_metrics.items():  # averaged weights' losses: val_loss_ema, val_loss_swa
        if key.startswith("val/loss_"):
            results[key.replace("/", "_")] = float(value)
    if trainer.is_global_zero:
        # strict JSON: a loss that does not exist (no validation yet) is null, not NaN
        finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in results.items()}
        atomic_write_json(run_dir / "results.json", finite)
        log.info(
            "val_loss %.4f (ppl %.2f) vs unigram entropy %.4f nats | %d steps, %s tokens, %.1f s | %s",
            val_loss, results["val_ppl"], results["val_unigram_entropy"], trainer.global_step, f"{tokens:,}",
            results["wall_seconds"], run_dir / "results.json",
        )  # fmt: skip
    if failure is not None:
        sys.exit(3)
    if trainer.interrupted:
        sys.exit(130)
    return results


def _finished_results(run_dir: Path, max_steps: int) -> dict | None:
    """The results of a run that already reached `max_steps` and was scored there, else None."""
    path = run_dir / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    complete = results.get("stop_reason") == "max_steps" and results.get("steps", 0) >= max_steps
    return results if complete and results.get("val_step") == results.get("steps") else None


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # memmap windows need none
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # Lightning vs newer torch
    try:
        return train(cfg)["val_loss"]
    except ConfigError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except MissingMandatoryValue as e:  # a `???` in a config group, e.g. data=local without data.path
        print(f"error: {e.full_key} is required (e.g. {e.full_key}=...)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
