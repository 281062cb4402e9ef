"""`LMModule`: the thin Lightning shell that trains any model of the family with next-token cross-entropy.

It is built from plain data (dicts of the config dataclasses), so a checkpoint alone rebuilds the run. What it
adds to the model: the loss and metrics, the optimizer and LR schedule, clipping, the non-finite guard, and
the state a resumed run needs to continue exactly (random state, skipped-step counts).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, replace

import lightning as L
import torch
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric

from lm_lab.checkpoint import rng_state, set_rng_state
from lm_lab.errors import ConfigError
from lm_lab.guards import NonFiniteError
from lm_lab.models import GPT, ModelConfig, flops_per_token, next_token_loss
from lm_lab.optim import HYPERPARAMETERS, OptimizerConfig, Schedule, SchedulerConfig, build_optimizer, lr_multiplier

log = logging.getLogger(__name__)


def _as(cls, value):
    return value if isinstance(value, cls) else cls(**value)


class LMModule(L.LightningModule):
    def __init__(
        self,
        model: ModelConfig | dict,
        optimizer: OptimizerConfig | dict,
        scheduler: SchedulerConfig | dict,
        max_steps: int,
        on_nonfinite: str = "stop",
        max_skipped_steps: int = 10,
        compile: bool = False,
        tokenizer: dict | None = None,
        data: dict | None = None,
        fork_step: int | None = None,
    ):
        """`tokenizer`, `data`: the run's tokenizer and corpus settings, recorded in the checkpoint for tools
        that read a model back with its tokenizer (`lm-lab sample`)."""
        super().__init__()
        self.model_config = _as(ModelConfig, model)
        self.optimizer_config = _as(OptimizerConfig, optimizer)
        self.scheduler_config = _as(SchedulerConfig, scheduler)
        self.max_steps = max_steps
        self.on_nonfinite = on_nonfinite
        self.max_skipped_steps = max_skipped_steps
        # plain dicts only: checkpoints then load with torch.load(weights_only=True)
        self.save_hyperparameters(
            {
                "model": asdict(self.model_config),
                "optimizer": asdict(self.optimizer_config),
                "scheduler": asdict(self.scheduler_config),
                "max_steps": max_steps,
                "on_nonfinite": on_nonfinite,
                "max_skipped_steps": max_skipped_steps,
                "compile": compile,
                "tokenizer": tokenizer,
                "data": data,
                "fork_step": fork_step,  # init=fork: the source checkpoint's step (a cooldown fork's length follows)
            }
        )
        self._compile = compile
        self.model: GPT | None = None  # built in configure_model (under a sharding strategy, sharded as built)
        self._start_weights: dict | None = None
        self.val_loss = MeanMetric()
        self.last_val_step: int | None = None  # global step of the last (non-sanity) validation
        self.skipped_steps = 0  # updates skipped for a non-finite gradient, in total and in a row
        self._skipped_in_a_row = 0
        self._last_loss: torch.Tensor | None = None
        self._rng_to_restore: dict | None = None
        self.val_key = "val/loss"  # fit() scores the final weights under `val/loss_final` on other tokens
        # what the run's trajectory cost so far, over every start (restored from checkpoints)
        self.starts = 1
        self.train_seconds_before = 0.0
        self._fit_started: float | None = None
        self.horizon_decided = False  # set_horizon: a budget fixed max_steps (and the cooldown) while training

    def configure_model(self) -> None:
        """Build the model (once). Lightning calls this inside the strategy's context, before restoring a
        checkpoint, so a strategy such as FSDP can shard the model as it is built."""
        if self.model is not None:
            return
        self.model = GPT(self.model_config)
        if self._start_weights is not None:  # init=weights or a surgery: checked against this model already
            self._load_start_weights()
        if self._compile:
            self.model.compile()  # in place: parameter names (and checkpoints) are unchanged

    def start_from(self, weights: dict[str, torch.Tensor]) -> None:
        """Start from these model weights (init=weights, a weight surgery) instead of a fresh initialisation;
        tensors absent keep their fresh initialisation, an unknown one is refused."""
        self._start_weights = weights
        if self.model is not None:
            self._load_start_weights()

    def _load_start_weights(self) -> None:
        unexpected = sorted(self._start_weights.keys() - self.model.state_dict().keys())
        if unexpected:  # checked before loading: nothing is half-loaded
            raise ConfigError(f"the starting weights have tensors this model does not: {', '.join(unexpected[:6])}")
        # copies into the parameters (a shape mismatch still raises): a tied head stays the embedding's tensor
        self.model.load_state_dict(self._start_weights, strict=False)
        self._start_weights = None

    def flops_per_token(self, seq_len: int) -> int:
        return flops_per_token(self.model_config, seq_len)

    # -- loss and metrics ----------------------------------------------------------------------------------

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of a (B, T + 1) batch of token windows: what validation scores."""
        return next_token_loss(self.model, batch).lm

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = next_token_loss(self.model, batch)
        self._last_loss = loss.total.detach()
        self.log("train/loss", loss.lm, prog_bar=True)
        if loss.aux is not None:
            self.log("train/aux_loss", loss.aux)
            self._log_routing()
        return loss.total

    def _log_routing(self) -> None:
        """MoE routing of the last batch, averaged over the MoE layers: each expert's load (its share of the
        assignments; 1/experts is uniform), the share dropped over capacity, and the unweighted balance and z-losses."""
        layers = [m.aux for m in self.model.moe_layers() if m.aux]
        for key in ("dropped", "balance", "z"):
            self.log(f"moe/{key}", torch.stack([a[key] for a in layers]).mean())
        for e, load in enumerate(torch.stack([a["load"] for a in layers]).mean(0)):
            self.log(f"moe/load_{e}", load)

    def on_train_batch_end(self, outputs, batch: torch.Tensor, batch_idx: int) -> None:
        # Lightning validates on the interval or when told to stop, not at max_steps between intervals: ask it to
        # stop at the last step, so the final weights are scored inside fit, logged and checkpointed.
        if self.global_step >= self.max_steps:
            self.trainer.should_stop = True

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.val_loss.update(self.loss(batch), weight=batch.shape[0] * (batch.shape[1] - 1))

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # token-weighted mean over the whole validation set, all ranks
        self.val_loss.reset()
        if not torch.isfinite(loss) and not self.trainer.sanity_checking:
            # before any checkpoint callback's on_validation_end: weights that score non-finite are never saved
            raise NonFiniteError(
                f"non-finite validation loss ({loss.item()}) at step {self.global_step}; the weights were not saved "
                f"and the last checkpoint is untouched: resume with a lower optimizer.lr"
            )
        self.log(self.val_key, loss, prog_bar=self.val_key == "val/loss")
        if self.val_key == "val/loss":
            self.log("val/ppl", torch.exp(loss))
        if not self.trainer.sanity_checking:
            self.last_val_step = self.global_step
            schedule = self._schedule()
            if schedule is not None and schedule.observe(loss.item()):
                self._set_lrs(schedule)  # the next update already uses the cut LR, as a resume from here would
                log.info(
                    "validation loss stalled: learning rate scaled by %g from step %d",
                    schedule.plateau["scale"],
                    self.global_step,
                )

    def _schedule(self) -> Schedule | None:
        if self.trainer.state.fn != "fit" or not self.trainer.lr_scheduler_configs:
            return None
        fn = self.lr_schedulers().lr_lambdas[0]
        return fn if isinstance(fn, Schedule) else None

    # Schedule-free optimizers hold two weight sequences: y for gradients (train mode) and the average x for
    # evaluation. Validation (and the checkpoint written right after it) must see x, or its numbers are wrong.
    def _optimizer_mode(self, mode: str) -> None:
        if self.trainer.optimizers:  # in fit, and in a validate after it (run.py scores restored final weights)
            switch = getattr(self.trainer.optimizers[0], mode, None)
            if callable(switch) and self.optimizer_config.name == "schedule_free":
                switch()

    def on_validation_start(self) -> None:
        self._optimizer_mode("eval")

    def evaluation_weights(self) -> None:
        """Leave the weights to evaluate in the model: schedule-free's x (other optimizers: nothing to do)."""
        if self._trainer is not None:
            self._optimizer_mode("eval")

    def on_validation_end(self) -> None:  # after the callbacks' on_validation_end: checkpoints hold x
        self._optimizer_mode("train")

    # -- optimisation --------------------------------------------------------------------------------------

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optimizer_config, fused=self._fused())
        scheduler = LambdaLR(optimizer, self._make_schedule())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _fused(self) -> bool:
        # Fused AdamW unscales fp16 gradients inside step(), after this module clips them; so no fusing with a
        # GradScaler (16-mixed), where clipping must see unscaled gradients.
        return self.device.type == "cuda" and self.trainer.precision != "16-mixed"

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Clip here rather than with Trainer(gradient_clip_val): Lightning's AMP plugin refuses that with fused
        # AdamW. Gradients are unscaled here: bf16 has no loss scaling, and with fp16 Lightning unscales first.
        clip = self.optimizer_config.grad_clip or math.inf
        wrapped = self.trainer.strategy.model
        if isinstance(wrapped, FullyShardedDataParallel):  # each rank holds a shard: FSDP's norm is the global one
            norm = wrapped.clip_grad_norm_(clip)
        else:  # one device, or DDP (every rank holds the averaged gradients)
            norm = torch.nn.utils.clip_grad_norm_(self.parameters(), clip)
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            # fp16: an overflowing gradient is routine (the scaler skips that step and lowers its scale); only a
            # non-finite loss is a real failure
            if not torch.isfinite(self._last_loss):
                self._nonfinite(f"non-finite loss ({self._last_loss.item()})", optimizer)
                return
        elif not torch.isfinite(norm):  # one sync per optimizer step; a non-finite loss shows up here too
            self._nonfinite(f"non-finite gradient norm ({norm.item()})", optimizer)
            return
        self._skipped_in_a_row = 0
        self.log("train/grad_norm", norm)
        self.log("train/lr", optimizer.param_groups[0]["lr"])  # the LR this step applies

    def _nonfinite(self, what: str, optimizer: torch.optim.Optimizer) -> None:
        """Stop before the update touches the weights, or skip it (no gradients: AdamW leaves every parameter,
        moment and weight decay as they were)."""
        where = f"{what} at step {self.global_step + 1}"
        if self.on_nonfinite == "stop":
            raise NonFiniteError(
                f"{where}; the run stopped before applying it and its checkpoints are untouched: resume with a lower "
                f"optimizer.lr (the resumed run uses the config's optimizer settings), or set train.on_nonfinite=skip"
            )
        optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self._skipped_in_a_row += 1
        log.warning("%s: update skipped (%d in a row, %d in total)", where, self._skipped_in_a_row, self.skipped_steps)
        self.log("train/skipped_steps", float(self.skipped_steps))
        if self._skipped_in_a_row >= self.max_skipped_steps:
            raise NonFiniteError(
                f"{where}: {self._skipped_in_a_row} updates in a row skipped (train.max_skipped_steps="
                f"{self.max_skipped_steps}), the run stopped; its checkpoints are untouched"
            )

    # -- resuming exactly ----------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        self._fit_started = time.monotonic()

    def train_seconds(self) -> float:
        """Training seconds of the trajectory so far: earlier starts (to their checkpoints) plus this one."""
        now = time.monotonic() - self._fit_started if self._fit_started is not None else 0.0
        return self.train_seconds_before + now

    def on_train_start(self) -> None:
        check = getattr(self.trainer.datamodule, "check_position", None)
        if check is not None:  # the data must resume exactly where the restored step left it
            check(self.global_step)
        self._apply_config_to_restored_optimizer()
        self._optimizer_mode("train")  # schedule-free: whatever mode the checkpoint was saved in
        if self._rng_to_restore is not None:  # dropout continues with the random numbers it would have drawn
            set_rng_state(self._rng_to_restore, rank=self.global_rank, world_size=self.trainer.world_size)
            self._rng_to_restore = None
        elif self.global_rank > 0:
            # every rank was seeded alike (so the model is built alike); its dropout masks must not be alike too:
            # rank r draws from seed + r (nanoGPT's seed offset), rank 0 keeps the single-process stream
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def _apply_config_to_restored_optimizer(self) -> None:
        """A restored optimizer keeps the checkpoint's hyperparameters; this run's config wins instead (a resume
        with a lower `optimizer.lr`, a cooldown fork with another schedule). The LR is a pure function of the
        step and the config, so it is recomputed for the step training continues from."""
        optimizer = self.optimizers().optimizer
        scheduler = self.lr_schedulers()
        fresh = build_optimizer(self.model, self.optimizer_config, fused=self._fused())
        for group, new in zip(optimizer.param_groups, fresh.param_groups, strict=True):
            group.update({k: new[k] for k in HYPERPARAMETERS if k in new})
            group["initial_lr"] = new["lr"]
        scheduler.base_lrs = [g["lr"] for g in fresh.param_groups]
        self._install_schedule()

    def _install_schedule(self) -> None:
        """Put this config's schedule over `max_steps` in the LR scheduler, reduce-on-plateau state carried over,
        and set the LR of the step training continues with."""
        scheduler = self.lr_schedulers()
        schedule = self._make_schedule()
        if isinstance(scheduler.lr_lambdas[0], Schedule):
            schedule.plateau = dict(scheduler.lr_lambdas[0].plateau)
        scheduler.lr_lambdas = [schedule] * len(scheduler.lr_lambdas)
        self._set_lrs(schedule)

    def _make_schedule(self) -> Schedule:
        if self.horizon_decided:  # a budget's horizon, decided during the run: the config was checked before it
            return Schedule(self.scheduler_config, self.max_steps)
        return lr_multiplier(self.scheduler_config, self.max_steps)

    def set_horizon(self, total_steps: int, cooldown_steps: int | None = None) -> None:
        """End the run, and the LR schedule, at `total_steps` (a wall-clock budget decides it while training);
        `cooldown_steps`: a WSD cooldown of that many steps, ending there. The LR of the next update follows."""
        self.max_steps, self.horizon_decided = total_steps, True
        if cooldown_steps is not None:
            self.scheduler_config = replace(self.scheduler_config, cooldown_steps=cooldown_steps)
        if self._trainer is None or self.trainer.state.fn != "fit":
            return  # restored before training: on_train_start builds the schedule from these
        self.trainer.fit_loop.epoch_loop.max_steps = total_steps
        self._install_schedule()

    def _set_lrs(self, schedule: Schedule) -> None:
        """Set the LR of the step training continues with from the schedule (a pure function of the step)."""
        optimizer, scheduler = self.optimizers().optimizer, self.lr_schedulers()
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * schedule(scheduler.last_epoch)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # every rank runs this hook; each rank's own random state goes into the one file rank 0 writes
        gather = (lambda t: self.all_gather(t.to(self.device)).cpu()) if self.trainer.world_size > 1 else None
        checkpoint["rng"] = rng_state(gather=gather)
        checkpoint["skipped_steps"] = [self.skipped_steps, self._skipped_in_a_row]
        checkpoint["cost"] = {"train_seconds": self.train_seconds(), "starts": self.starts}
        if self.optimizer_config.name == "schedule_free" and self.trainer.optimizers:
            self._save_schedule_free_weights(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng")
        self.skipped_steps, self._skipped_in_a_row = checkpoint.get("skipped_steps", [0, 0])
        cost = checkpoint.get("cost", {})
        self.train_seconds_before = cost.get("train_seconds", 0.0)
        self.starts = cost.get("starts", 0) + 1
        train_weights = checkpoint.get("schedule_free_train_weights")
        if train_weights is not None:  # resume from y, the sequence the gradients are taken at
            checkpoint["state_dict"].update({f"model.{k}": v for k, v in train_weights.items()})

    # Schedule-free AdamW (Defazio et al. 2024) keeps y (where gradients are taken, the weights in train mode), z
    # and their average x (the weights to evaluate); its authors: store x in checkpoints. So the state_dict of
    # every checkpoint holds x, for exports, forks' evaluation and analysis, and `schedule_free_train_weights`
    # holds y, computed exactly as the optimizer's own mode switch would, so a resume continues bit for bit.
    @torch.no_grad()
    def _save_schedule_free_weights(self, checkpoint: dict) -> None:
        optimizer = self.trainer.optimizers[0]
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        xs, ys = {}, {}
        for name, p in self.model.state_dict(keep_vars=True).items():
            state = optimizer.state.get(p, {}) if isinstance(p, torch.nn.Parameter) else {}
            if "z" not in state:
                xs[name] = ys[name] = p.detach()
                continue
            group, z = group_of[id(p)], state["z"].to(p.device)
            beta1 = group["betas"][0]
            if group["train_mode"]:  # p is y; x as in optimizer.eval()
                ys[name], xs[name] = p.detach().clone(), torch.lerp(p.detach(), z, 1 - 1 / beta1)
            else:  # p is x; y as optimizer.train() will make it
                xs[name], ys[name] = p.detach().clone(), torch.lerp(p.detach(), z, 1 - beta1)
        checkpoint["state_dict"].update({f"model.{k}": v for k, v in xs.items()})
        checkpoint["schedule_free_train_weights"] = ys
        for state in checkpoint.get("optimizer_states", [])[:1]:  # absent from a weights-only checkpoint
            for group in state["param_groups"]:
                group["train_mode"] = True  # its parameters are restored as y
