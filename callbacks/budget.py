"""`ComputeBudget`: keeps a run inside its compute budget (`conf/budget/`) and records what it spent.

`fit()` adds it whenever `budget` is not `none` (or binds the one it is given, e.g. with a mock clock). A FLOP
budget is spent by its derived `train.max_steps` alone: the callback only times the run. A **wall-clock** budget
is the real clock on the real hardware, from the Trainer's start (the sanity validation included) to the end
of the final validation, summed over every start of a resumed run (each start counted up to the checkpoint the
next one resumed from, as `train_seconds`). The callback times every optimizer step and every validation (the
checkpoint written after it included) and, at each step boundary:

- **stops** before the step that would overshoot: it goes on only if the next step, the validation due at
  this step and a final validation still fit in what is left (the mean of the last 20 step times; what a
  validation adds to its step interval; a validation with its checkpoint for the final one; before the first
  validation, the sanity batches' time scaled to a full validation);
- with `scheduler=wsd`, **starts the cooldown** when the time left first equals the cooldown's share of the
  budget (`scheduler.cooldown_frac` of it), with as many steps as that time pays for, and re-times its end at
  every later step from the measured step time (the start stays; the 1-sqrt shape stretches or shrinks by the
  drift, a step or two on a steady machine), so the run ends annealed at the deadline;
- with `cosine` or `linear`, **fixes the horizon** after `budget.calibration_steps` steps (20 by default: 19
  timed intervals; inside the main job's 40-step warmup, so no LR before it depends on the horizon): the steps
  the rest pays for.

`budget.max_steps` caps all of it: no horizon past it (a run the cap ends first keeps the schedule over the
cap). A fork (`init=fork`) starts its budget afresh: the source's spent seconds and decisions are not taken (its
measured step and validation times are: the same model, most likely on the same hardware).

The decided horizon and cooldown, the seconds spent and the measured times are in the checkpoint: a resumed run
continues the same LR sequence bit for bit and spends only the time left (the time a killed start spent after its
last checkpoint is not counted: that work is done again). On several processes rank 0's clock decides.
"""

from __future__ import annotations

import logging
import statistics
import time

import lightning as L
import torch

from lm_lab.scaling.budget import clock_cost, clock_steps

log = logging.getLogger(__name__)


class ComputeBudget(L.Callback):
    def __init__(self, clock=time.monotonic, window: int = 20):
        self.clock = clock  # seconds; tests replace it with a mock clock
        self.window = window
        self.budget = None
        self.resuming = False
        self.seconds_before = 0.0  # spent by earlier starts, up to the checkpoint this start resumed from
        self.horizon: int | None = None  # the step the schedule ends at, once decided (wall clock)
        self.cooldown_steps: int | None = None
        self.decided_at: int | None = None
        self.retimed = 0  # how often the cooldown's end moved with the measured step time
        self.stopped = False  # the clock (or the decided horizon) ended the run
        self.seconds_used: float | None = None
        self._start: float | None = None
        self._step_times: list[float] = []
        self._val_times: list[float] = []  # what a validation adds to its step interval
        self._val_direct: list[float] = []  # a validation with its checkpoint, start to the next batch
        self._val_t0: float | None = None
        self._sanity_per_batch: float | None = None
        self._val_batches = 0
        self._accumulate = 1

    def bind(self, run, resuming: bool = False) -> None:
        """The run's budget and the settings that decide how time is spent (fit calls this); `resuming`: this
        start resumes this run (a fork's source checkpoint holds another run's budget, which is not taken)."""
        self.budget, self.resuming = run.budget, resuming
        self.cap = run.train.max_steps  # budget.max_steps (or no limit) for a wall clock
        self.cap_cooldown_start = (
            self.cap - run.scheduler.cooldown_length(self.cap) if run.scheduler.name == "wsd" else self.cap
        )
        self.val_every = run.train.val_every
        self.scheduler = run.scheduler.name
        self.cooldown_frac = run.scheduler.cooldown_frac
        self.warmup_steps = run.scheduler.warmup_steps

    # -- the clock ---------------------------------------------------------------------------------------------

    def used(self) -> float:
        """Seconds of the budget spent so far, over every start."""
        now = self.clock() - self._start if self._start is not None else 0.0
        return self.seconds_before + now

    @property
    def seconds(self) -> float | None:
        return self.budget.seconds if self.budget is not None else None

    def step_time(self) -> float | None:
        """Mean seconds per optimizer step over the last `window` steps (the first step of a start, with its
        warm-up, left out; data loading and step checkpoints in): recent enough to follow a drift."""
        return statistics.fmean(self._step_times[-self.window :]) if self._step_times else None

    def final_validation_time(self) -> float:
        """Mean seconds of a validation and the checkpoint after it (to the next training batch); before one, the
        sanity check's batches scaled to a full validation."""
        if self._val_direct:
            return statistics.fmean(self._val_direct[-10:])
        if self._sanity_per_batch is not None and self._val_batches:
            return self._sanity_per_batch * self._val_batches
        if self.step_time() is not None:  # nothing measured yet: a forward pass is about a third of a step's
            return self._val_batches * self.step_time() / (3 * self._accumulate)
        return 0.0

    def validation_time(self) -> float:
        """Mean seconds a validation adds to the run in its middle: the step interval around it, less a step
        (the slower steps right after it included)."""
        return statistics.fmean(self._val_times[-10:]) if self._val_times else self.final_validation_time()

    def _times(self) -> dict:
        return {
            "step_seconds": self.step_time(),
            "val_seconds": self.validation_time(),
            "final_seconds": self.final_validation_time(),
            "val_every": self.val_every,
        }

    def steps_paid_by(self, step: int, seconds: float) -> int:
        """The most steps after `step` that `seconds` pay for, validations included (`clock_steps`)."""
        return clock_steps(step, seconds, **self._times())

    # -- hooks -------------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self.clock()  # counted from here, the sanity check included

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # every strategy has restored the checkpoint by now (FSDP does it after on_fit_start); this hook runs
        # before LMModule.on_train_start, which rebuilds the schedule from the horizon set here
        self._val_batches = self._val_batches or _val_batches(trainer)  # (restored, measured, or counted)
        self._accumulate = trainer.accumulate_grad_batches
        if self.horizon is not None:  # decided before the checkpoint: the same schedule goes on
            pl_module.set_horizon(self.horizon, self.cooldown_steps)
        self._last_boundary, self._skip_interval, self._val_since = self.clock(), True, False
        if self.seconds is None:
            return
        step = trainer.global_step
        if self.stopped:  # a start killed after the budget stopped it, before its results were written
            spent = True
        elif self.step_time() is not None:  # the measured times came back with the checkpoint
            spent = self._over(step)
        else:
            spent = self.used() + self.final_validation_time() >= self.seconds
        if self._agree(trainer, [float(spent)])[0]:
            self._stop(trainer, "the budget is spent")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_t0, self._val_count = self.clock(), 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._val_since and self._val_t0 is not None:  # the validation and its checkpoint are done
            self._val_direct.append(self.clock() - self._val_t0)
            self._val_t0 = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._val_count += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit":
            return
        if trainer.sanity_checking:
            if self._val_count:
                self._sanity_per_batch = (self.clock() - self._val_t0) / self._val_count
                self._val_batches = _val_batches(trainer)
        else:
            self._val_since = True  # timed at the next step boundary, with the checkpoint written after it

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop._should_accumulate():
            return
        now = self.clock()
        interval, self._last_boundary = now - self._last_boundary, now
        if self._skip_interval:
            self._skip_interval = False
        elif self._val_since and self._step_times:
            self._val_times.append(max(0.0, interval - self.step_time()))
        elif not self._val_since:
            self._step_times.append(interval)
        self._val_since = False
        if self.seconds is None or self.step_time() is None:
            return
        step = trainer.global_step
        if self.horizon is None:
            decision = self._decide(step)
        elif self.cooldown_steps and step < self.horizon:
            decision = self._retime(step)
        else:
            decision = None
        stop = self._over(step)
        if trainer.world_size > 1:  # every rank must decide alike: rank 0's clock decides
            agreed = self._agree(trainer, [float(stop), *(decision or (0, 0))])
            stop, decision = bool(agreed[0]), (int(agreed[1]), int(agreed[2])) if agreed[1] else None
        if decision is not None:
            first = self.horizon is None
            self.horizon, self.cooldown_steps = decision[0], decision[1] or None
            pl_module.set_horizon(self.horizon, self.cooldown_steps)
            if first:
                self.decided_at = step
                what = f"WSD cooldown of {decision[1]} steps starts" if decision[1] else "LR schedule horizon fixed"
                log.info(
                    "budget: %s at step %d, ending at step %d (%.1f s left; %.3g s/step, %.3g s/validation)",
                    what,
                    step,
                    self.horizon,
                    self.seconds - self.used(),
                    self.step_time(),
                    self.validation_time(),
                )
            else:  # a re-timed cooldown: the same start, another length
                self.retimed += 1
                log.debug("budget: cooldown re-timed at step %d to end at step %d", step, self.horizon)
        if stop and step < pl_module.max_steps:  # (at the horizon the run ends anyway)
            self._stop(trainer, f"{self.used():.1f} s of {self.seconds:g} s spent")

    @staticmethod
    def _agree(trainer: L.Trainer, values: list[float]) -> list[float]:
        """Rank 0's values on every rank (the others send zeros; the reduction takes the maximum)."""
        if trainer.world_size == 1:
            return values
        mine = torch.tensor(values if trainer.is_global_zero else [0.0] * len(values), dtype=torch.float64)
        return trainer.strategy.reduce(mine.to(trainer.strategy.root_device), reduce_op="max").tolist()

    def _decide(self, step: int) -> tuple[int, int] | None:
        """(horizon, cooldown steps or 0) when this step boundary fixes the schedule, else None. Never past the
        step cap (`budget.max_steps`): a run the cap ends first keeps the schedule over the cap."""
        left = self.seconds - self.used()
        if self.scheduler in ("cosine", "linear"):
            if len(self._step_times) >= self.budget.calibration_steps - 1:
                end = step + max(1, self.steps_paid_by(step, left))
                return (end, 0) if end < self.cap else None
        elif (
            self.scheduler == "wsd"
            and self.warmup_steps <= step < self.cap_cooldown_start  # (after it, the cap's own cooldown runs)
            and left <= self.cooldown_frac * self.seconds
        ):
            end = min(self.cap, step + max(1, self.steps_paid_by(step, left)))
            return end, end - step
        return None

    def _retime(self, step: int) -> tuple[int, int] | None:
        """In a WSD cooldown: the end the time left now pays for, when it is not the planned one (the step time
        drifted). The cooldown keeps its start; its length follows, so the run still ends annealed on time."""
        end = min(self.cap, step + self.steps_paid_by(step, self.seconds - self.used()))
        if end == self.horizon or end <= step:
            return None  # on plan, or no step left (the run stops here)
        return end, end - (self.horizon - self.cooldown_steps)

    def _over(self, step: int) -> bool:
        """Whether one more step (with the validation due now and a final one) would overshoot the budget."""
        return self.used() + clock_cost(step, 1, **self._times()) > self.seconds

    def _stop(self, trainer: L.Trainer, why: str) -> None:
        self.stopped = True
        trainer.should_stop = True  # Lightning validates this step, then ends the fit
        log.info("budget: stopping after step %d (%s)", trainer.global_step, why)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds_used = self.used()
        if self.seconds is not None:
            log.info(
                "budget: %.1f s of %g s spent (%+.2f s), %d steps%s",
                self.seconds_used,
                self.seconds,
                self.seconds_used - self.seconds,
                trainer.global_step,
                f"; cooldown ended at step {self.horizon}, re-timed {self.retimed} times"
                if self.cooldown_steps
                else "",
            )

    # -- checkpoint --------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "seconds": self.used(),
            "horizon": self.horizon,
            "cooldown_steps": self.cooldown_steps,
            "decided_at": self.decided_at,
            "retimed": self.retimed,
            "stopped": self.stopped,
            # the measured times go on (Lightning runs no sanity check when it resumes mid-epoch)
            "step_times": self._step_times[-self.window :],
            "val_times": self._val_times[-10:],
            "val_direct": self._val_direct[-10:],
            "sanity_per_batch": self._sanity_per_batch,
            "val_batches": self._val_batches,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.resuming:  # (a fork's source: its budget is not this run's, only its measured times are taken)
            self.seconds_before, self.stopped = state.get("seconds", 0.0), state.get("stopped", False)
            self.horizon, self.cooldown_steps = state.get("horizon"), state.get("cooldown_steps")
            self.decided_at, self.retimed = state.get("decided_at"), state.get("retimed", 0)
        self._step_times, self._val_times = list(state.get("step_times", [])), list(state.get("val_times", []))
        self._val_direct = list(state.get("val_direct", []))
        self._sanity_per_batch, self._val_batches = state.get("sanity_per_batch"), state.get("val_batches", 0)


def _val_batches(trainer: L.Trainer) -> int:
    """Batches of a full validation (the sanity check runs only a few of them)."""
    loaders = trainer.val_dataloaders
    try:
        return sum(len(d) for d in (loaders if isinstance(loaders, list) else [loaders]))
    except TypeError:  # none yet, or one without a length
        return 0
