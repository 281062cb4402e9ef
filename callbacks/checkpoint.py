"""`LastCheckpoint`: keeps `checkpoints/last.ckpt` current, the checkpoint a run resumes from.

It saves after every validation (so a resumed run never skips or repeats one), every `every_n_steps`
optimizer steps and every `every_minutes` minutes of training, always at a step boundary: never in the
middle of gradient accumulation, and never just before a validation (which saves right after). It runs
after every other callback (`fit` orders it last, behind Lightning's `ModelCheckpoint`), so a checkpoint
holds the step's weight average, spike-monitor state and best-checkpoint bookkeeping. Writes go through the
trainer's checkpoint IO, atomic in this lab. Besides:

- weights that are not finite are never saved (the run stops with the last checkpoint intact);
- SIGTERM or SIGINT (SLURM's preemption or `scancel`, Ctrl-C) saves at the next step boundary and stops the run
  (a second Ctrl-C stops at once);
- under SLURM, the requeue signal (`requeue_signal`, USR2 as submitit's `--signal=USR2@<signal_delay_s>` sends
  before the time limit) saves at the next step boundary, requeues the job (`scontrol requeue`, as Lightning's
  SLURM auto-requeue does) and stops; the requeued job runs the same command, which resumes from this checkpoint.
  Lightning's own handler is off (`lm_lab.strategies.cluster_plugins`): it saves inside the signal handler,
  possibly mid-step or mid-accumulation, from where no run resumes exactly;
- the checkpoint records which TensorBoard steps are complete, and the metrics Lightning logs just after a
  step checkpoint, so a resumed run's curve equals the uninterrupted one step for step;
- on resume, best checkpoints of a killed start that the restored bookkeeping does not know are deleted.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from lm_lab.guards import NonFiniteError, StopRequested
from lm_lab.strategies import requeue_slurm_job, under_slurm

log = logging.getLogger(__name__)


class LastCheckpoint(Checkpoint):
    def __init__(
        self,
        dirpath: str,
        every_n_steps: int | None = 100,
        every_minutes: float | None = 30.0,
        stop_on_signals: bool = True,
        requeue_signal: str = "USR2",
    ):
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps = every_n_steps
        self.every_minutes = every_minutes
        self.stop_on_signals = stop_on_signals
        self.requeue_signal = requeue_signal
        self._requeue = False
        self.clock = time.monotonic  # a test may replace it
        self._since = self.clock()
        self._trainer: L.Trainer | None = None
        self._signal: str | None = None
        self._previous_handlers: dict = {}
        self._restored: dict = {}
        self.resuming = False  # fit() sets it: this start resumes this run (not a fork of another)

    # -- when to save ------------------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:  # the restored bookkeeping is in place; the loop may not even run (at max_steps)
            _prune_unknown_best(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since = self.clock()
        pending = self._restored.get("pending")
        if pending and self.resuming and trainer.global_step == self._restored.get("global_step"):
            for logger in trainer.loggers:  # the metrics a killed start was about to log after this checkpoint
                logger.log_metrics(pending, step=self._restored["log_from"])
                logger.save()
        self._restored = {}
        self._signal, self._requeue = None, False
        if self.stop_on_signals and threading.current_thread() is threading.main_thread():
            signals = [signal.SIGTERM, signal.SIGINT]
            if under_slurm() and self.requeue_signal:
                signals.append(getattr(signal, f"SIG{self.requeue_signal.upper().removeprefix('SIG')}"))
            for sig in signals:
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self._signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self._signal = name
        requeue = name.removeprefix("SIG") == self.requeue_signal.upper().removeprefix("SIG")
        self._requeue = self._requeue or requeue
        then = "requeueing the job" if requeue else "stopping"
        log.warning("%s received: saving at the next step boundary, then %s", name, then)

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.fit_loop._should_accumulate():
            return  # mid-accumulation: a resume could not restart here
        step = trainer.global_step
        validation_follows = (
            (trainer.fit_loop.total_batch_idx + 1) % trainer.val_check_batch == 0
            or step >= trainer.max_steps
            or trainer.should_stop
        )
        by_steps = bool(self.every_n_steps) and step % self.every_n_steps == 0
        by_time = bool(self.every_minutes) and self.clock() - self._since >= 60 * self.every_minutes
        stop, by_time = self._agreed(trainer, self._signal is not None, by_time)
        if validation_follows:
            return  # it saves right after the validation (and stops there, if asked to)
        if by_steps or by_time or stop:
            self._save(trainer, pl_module)
        if stop:
            self._stop(trainer)

    @staticmethod
    def _agreed(trainer: L.Trainer, stop: bool, by_time: bool) -> tuple[bool, bool]:
        """Every rank must save (a collective) and stop at the same step: any rank's signal or clock decides."""
        if trainer.world_size == 1:
            return stop, by_time
        flags = torch.tensor([float(stop), float(by_time)], device=trainer.strategy.root_device)
        flags = trainer.strategy.reduce(flags, reduce_op="max")
        return bool(flags[0]), bool(flags[1])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._save(trainer, pl_module)
        stop, _ = self._agreed(trainer, self._signal is not None, False)
        if stop and trainer.global_step < trainer.max_steps:  # at max_steps the run ends here anyway
            self._stop(trainer)

    def _stop(self, trainer: L.Trainer) -> None:
        """After the save: requeue the SLURM job if its requeue signal came (rank zero asks), then stop."""
        what = f"{self._signal or 'a stop signal'} received"
        if self._requeue and trainer.is_global_zero:
            what += "; " + requeue_slurm_job()
        raise StopRequested(what)

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        finite = torch.stack([p.isfinite().all() for p in pl_module.parameters()]).all()
        if trainer.world_size > 1:  # under FSDP each rank checks its shard: all must agree before the collective save
            finite = trainer.strategy.reduce(finite.float(), reduce_op="min") > 0
        if not finite:  # one synchronisation per checkpoint
            raise NonFiniteError(
                f"the weights are non-finite after step {trainer.global_step}; they were not saved and the last "
                f"checkpoint is untouched: resume with a lower optimizer.lr"
            )
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state; every rank calls it, rank 0 writes
        self._since = self.clock()

    # -- what the checkpoint records about the logs --------------------------------------------------------------

    def state_dict(self) -> dict:
        """`log_from`: the first TensorBoard step a resumed run must log again (Lightning logs step k as k - 1);
        `pending`: at a step checkpoint, the step's metrics that Lightning writes only after this checkpoint;
        `before_validation`: saved (by another callback, e.g. step snapshots) just before a validation, which a
        run resumed from it would skip: `resume_checkpoint` prefers any other."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit" or trainer.sanity_checking:
            return {}
        log_step = trainer.fit_loop.epoch_loop._batches_that_stepped
        state = {"global_step": trainer.global_step, "log_from": log_step + 1, "pending": None}
        if trainer.training:  # saved in on_train_batch_end: this step's metrics are not logged yet
            state["log_from"] = log_step
            state["before_validation"] = (
                (trainer.fit_loop.total_batch_idx + 1) % trainer.val_check_batch == 0
                or trainer.global_step >= trainer.max_steps
                or trainer.should_stop
            )
            connector = trainer._logger_connector
            if connector.should_update_logs or trainer.global_step >= trainer.max_steps:
                metrics = {k: float(v) for k, v in connector.metrics["log"].items()}
                state["pending"] = {**metrics, "epoch": float(trainer.current_epoch)} if metrics else None
        return state

    def load_state_dict(self, state: dict) -> None:
        self._restored = dict(state)


def _prune_unknown_best(trainer: L.Trainer) -> None:
    """Delete `best-*` files in a ModelCheckpoint's folder that its restored bookkeeping does not hold: a start
    killed between saving a new best and deleting the old one leaves the old one behind for good otherwise."""
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint) or cb.monitor is None or cb.save_top_k < 1 or not cb.dirpath:
            continue
        if not cb.best_k_models:  # nothing restored (a moved run directory, a strategy restoring later): keep all
            continue
        prefix = cb.filename.split("{")[0] if cb.filename else ""
        if not prefix:
            continue
        known = {str(Path(p).resolve()) for p in cb.best_k_models} | {str(Path(cb.best_model_path).resolve())}
        for path in Path(cb.dirpath).glob(f"{prefix}*.ckpt"):
            if str(path.resolve()) not in known:
                log.info("removing %s: a best checkpoint the resumed run does not keep", path)
                trainer.strategy.remove_checkpoint(path)  # a file, or a sharded FSDP checkpoint's folder
