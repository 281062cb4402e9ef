"""Compute budgets: FLOP budgets derive the steps and the schedule's end; wall-clock budgets (on a mock clock) stop
on time, start and re-time the WSD cooldown, fix the cosine horizon, and survive a kill and resume."""

import math
from dataclasses import replace

import lightning as L
import pytest

from callbacks import ComputeBudget, LastCheckpoint, TokenThroughput
from lm_lab.config import InitConfig, RunConfig
from lm_lab.errors import ConfigError
from lm_lab.models import chinchilla_flops_per_token, flops_per_token
from lm_lab.optim import SchedulerConfig
from lm_lab.results import Results
from lm_lab.scaling.budget import NO_STEP_LIMIT, BudgetConfig, clock_cost, clock_steps, describe
from lm_lab.train import fit
from tests.test_fit import MockClock as Clock
from tests.test_fit import smoke

PEAK_LR = 1e-3  # OptimizerConfig's default


def budgeted(cache_dir, budget: BudgetConfig, scheduler: SchedulerConfig, **train) -> RunConfig:
    run = smoke(cache_dir, **train)
    return replace(run, budget=budget, scheduler=scheduler)


class LRs(L.Callback):
    """The LR each optimizer update uses, by its 0-based index (the global step before it)."""

    def __init__(self):
        self.lrs: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


# -- FLOP budgets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flop_count", ["6n", "chinchilla"])
def test_flop_budget_derives_the_steps(cache_dir, flop_count):
    run = budgeted(cache_dir, BudgetConfig(), SchedulerConfig(warmup_steps=5), max_steps=5)
    model = run.derive().model
    per_token = flops_per_token(model, 128) if flop_count == "6n" else chinchilla_flops_per_token(model, 128)
    budget = BudgetConfig(name="flops", flops=per_token * 8 * 128 * 37.9, flop_count=flop_count)
    derived = replace(run, budget=budget).derive()
    assert derived.train.max_steps == 37  # floor(37.9), whatever train.max_steps said
    assert derived.derive().train.max_steps == 37  # deriving again changes nothing
    line = describe(budget, derived.model, 128, 8 * 128)
    assert "= 37 steps" in line and ("6N + 12LTd" if flop_count == "6n" else "Chinchilla App. F") in line


@pytest.mark.parametrize(
    "scheduler, final",
    [
        (SchedulerConfig(name="cosine", warmup_steps=5, final_lr_frac=0.1), 0.1),
        (SchedulerConfig(name="wsd", warmup_steps=5, final_lr_frac=0.0, cooldown_frac=0.2), 0.0),
    ],
    ids=["cosine", "wsd"],
)
def test_a_flop_budget_stops_at_its_step_with_the_schedule_at_its_end(tmp_path, cache_dir, scheduler, final):
    run = budgeted(cache_dir, BudgetConfig(), scheduler, max_steps=100)  # (the budget replaces it)
    per_token = flops_per_token(run.derive().model, 128)
    flops = per_token * 8 * 128 * 30.5
    run = replace(run, budget=BudgetConfig(name="flops", flops=flops, peak_tflops=0.002))
    lrs, throughput = LRs(), TokenThroughput()
    results = fit(run, tmp_path / "run", callbacks=[lrs, throughput])
    assert throughput.peak_tflops == 0.002  # budget.peak_tflops overrides the device table for MFU as well
    assert results.steps == 30 == results.val_step and results.stop_reason == "budget" and results.finished
    module = results.module
    assert module.lr_schedulers().get_last_lr()[0] == pytest.approx(PEAK_LR * final, abs=1e-12)  # after step 30
    assert sorted(lrs.lrs) == list(range(30)) and lrs.lrs[29] > PEAK_LR * final  # the last update still learns
    if scheduler.name == "wsd":  # 6 cooldown steps (20% of 30): constant until update 24
        assert lrs.lrs[23] == lrs.lrs[24] == PEAK_LR and lrs.lrs[25] < PEAK_LR
    assert results.budget == "flops" and results.budget_flops == pytest.approx(flops)
    assert results.budget_flops_used == 30 * 8 * 128 * per_token == results.flops
    assert results.budget_fraction == pytest.approx(30 / 30.5) and results.budget_flop_count == "6n"
    assert results.budget_seconds is None and results.budget_seconds_used == pytest.approx(results.train_seconds)
    assert results.mfu == pytest.approx(results.flops / (results.train_seconds * 2e9), rel=1e-12)
    assert Results.load(tmp_path / "run") == results
    again = fit(run, tmp_path / "run")  # finished by its budget: nothing to do
    assert again.steps == 30 and again.starts == 1
    if scheduler.name == "cosine":  # a larger budget continues the run (a longer horizon: another schedule)
        more = replace(run, budget=replace(run.budget, flops=per_token * 8 * 128 * 36.5))
        longer = fit(more, tmp_path / "run")
        assert longer.steps == 36 and longer.starts == 2 and longer.stop_reason == "budget"


def test_the_clock_cost_counts_each_validation_once():
    """val_every 10, 1 s a step, 4 s a mid-run validation, 5 s the final one."""
    times = {"step_seconds": 1.0, "val_seconds": 4.0, "final_seconds": 5.0, "val_every": 10}
    assert clock_cost(71, 12, **times) == 12 + 4 + 5  # steps 72-83; the validation after 80; the final after 83
    assert clock_cost(80, 1, **times) == 1 + 4 + 5  # the validation due after step 80 runs first
    assert clock_cost(79, 1, **times) == 1 + 5  # step 80 ends the run: its validation is the final one
    assert clock_cost(71, 19, **times) == 19 + 4 + 5  # ... as at 90
    assert clock_steps(71, 21.0, **times) == 12 and clock_steps(71, 20.9, **times) == 11
    assert clock_steps(80, 9.9, **times) == 0  # not even one step fits


def test_gpu_hours_are_flops_of_the_device_peak():
    b = BudgetConfig(name="gpu_hours", hours=3, gpu="a100")
    assert b.total_flops() == 3 * 3600 * 312e12  # seed 000: 3.37e18
    assert BudgetConfig(name="gpu_hours", hours=2, gpu="NVIDIA H100 80GB HBM3", mfu=0.4).total_flops() == (
        2 * 3600 * 989.4e12 * 0.4
    )
    assert BudgetConfig(name="gpu_hours", hours=1, peak_tflops=100).total_flops() == 3600 * 100e12
    assert BudgetConfig(name="gpu_hours", hours=1, gpu="a100", peak_tflops=100).total_flops() == 3600 * 100e12
    assert BudgetConfig(name="gpu_hours", hours=3, gpu="a100").overrides() == [
        "budget=gpu_hours",
        "budget.hours=3",
        "budget.gpu=a100",
    ]


def test_the_a100_3h_budget_is_seed_000s(cache_dir):
    from lm_lab.config import compose

    run = RunConfig.from_dict(compose(["budget=a100_3h", f"data.cache_dir={cache_dir}"]))
    assert run.budget == BudgetConfig(name="gpu_hours", hours=3, gpu="a100", mfu=1.0)
    derived = run.derive()
    per_step = flops_per_token(derived.model, derived.train.seq_len) * derived.tokens_per_step
    assert derived.train.max_steps == math.floor(3 * 3600 * 312e12 / per_step)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"name": "tpu_hours"}, "budget.name='tpu_hours' is unknown"),
        ({"name": "flops"}, "budget=flops needs budget.flops"),
        ({"name": "flops", "flops": -1.0}, "budget.flops=-1.0 must be a positive number"),
        ({"name": "flops", "flops": math.inf}, "budget.flops=inf must be a positive number"),
        ({"name": "flops", "flops": 1e18, "hours": 3}, "budget.hours is not a setting of budget=flops"),
        ({"name": "gpu_hours", "hours": 3}, "budget=gpu_hours needs budget.gpu"),
        ({"name": "gpu_hours", "hours": 3, "gpu": "tpu_v5"}, "budget.gpu='tpu_v5' is not in the device table"),
        ({"name": "gpu_hours", "hours": 3, "gpu": "v100"}, "budget.gpu='v100' has no bf16 peak"),
        ({"name": "gpu_hours", "hours": 0, "gpu": "a100"}, "budget.hours=0 must be a positive number"),
        ({"name": "gpu_hours", "hours": 3, "gpu": "a100", "mfu": 1.5}, "budget.mfu=1.5 must be in (0, 1]"),
        ({"name": "gpu_hours", "hours": 3, "gpu": "a100", "mfu": 0}, "budget.mfu=0 must be in (0, 1]"),
        ({"name": "wall_clock"}, "needs exactly one of budget.hours and budget.minutes"),
        ({"name": "wall_clock", "hours": 1, "minutes": 2}, "needs exactly one of budget.hours and budget.minutes"),
        ({"name": "wall_clock", "minutes": -2}, "budget.minutes=-2 must be a positive number"),
        ({"name": "wall_clock", "minutes": 2, "mfu": 0.5}, "budget.mfu is for budget=gpu_hours"),
        ({"name": "wall_clock", "minutes": 2, "calibration_steps": 1}, "budget.calibration_steps=1 must be"),
        ({"name": "flops", "flops": 1e18, "flop_count": "kaplan"}, "budget.flop_count='kaplan' is unknown"),
        ({"name": "flops", "flops": 1e18, "peak_tflops": -3}, "budget.peak_tflops=-3 must be a positive number"),
    ],
)
def test_bad_budgets_are_one_line_each(fields, message):
    with pytest.raises(ConfigError) as e:
        BudgetConfig(**fields)
    assert len(e.value.problems) == 1 and message in e.value.problems[0]


def test_budgets_against_the_rest_of_the_run(cache_dir):
    run = smoke(cache_dir)
    with pytest.raises(ConfigError, match="budget=flops pays for no step of this model"):
        replace(run, budget=BudgetConfig(name="flops", flops=1e6)).derive()
    wsd = SchedulerConfig(name="wsd", warmup_steps=5, cooldown_steps=10)
    with pytest.raises(ConfigError, match="set its share with scheduler.cooldown_frac"):
        replace(run, scheduler=wsd, budget=BudgetConfig(name="wall_clock", minutes=2)).derive()
    clock = replace(run, budget=BudgetConfig(name="wall_clock", minutes=2)).derive()
    assert clock.train.max_steps == NO_STEP_LIMIT
    capped = replace(run, budget=BudgetConfig(name="wall_clock", minutes=2, max_steps=500)).derive()
    assert capped.train.max_steps == 500


# -- wall-clock budgets, on a mock clock ------------------------------------------------------------------------


class Tick(L.Callback):
    """`step_seconds(k)` for update k (1 s unless told otherwise; a micro-batch each here), counted when it ends,
    0.25 s per validation batch (a full validation of the smoke run's 16 batches: 4 s; the sanity check: 0.5 s)."""

    def __init__(self, clock: Clock, step_seconds=lambda step: 1.0):
        self.clock, self.step_seconds = clock, step_seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # before the budget's
        self.clock.now += self.step_seconds(trainer.global_step - 1)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.clock.now += 0.25


WSD = SchedulerConfig(name="wsd", warmup_steps=5, cooldown_frac=0.2, final_lr_frac=0.0, cooldown_shape="1-sqrt")
TWO_MINUTES = BudgetConfig(name="wall_clock", minutes=2, max_steps=200)  # (the cap ends a clock that fails to)


def clock_run(tmp_path, cache_dir, scheduler=WSD, step_seconds=lambda step: 1.0, extra=(), every_n_steps=100):
    run = budgeted(cache_dir, TWO_MINUTES, scheduler, val_every=10)
    clock, lrs = Clock(), LRs()
    budget = ComputeBudget(clock=clock)
    callbacks = [Tick(clock, step_seconds), budget, lrs, *extra]
    callbacks.append(LastCheckpoint(str(tmp_path / "checkpoints"), every_n_steps=every_n_steps, every_minutes=None))
    return run, callbacks, budget, lrs


def test_a_wall_clock_budget_starts_the_cooldown_on_time_and_ends_annealed_at_the_deadline(tmp_path, cache_dir):
    """At the boundary after step k the clock reads 0.5 (sanity) + k + 4 per validation done (after steps 10, 20,
    ...). The time left first falls to the cooldown's 24 s at step 71 (20.5 s left; at 70: 25.5). 20.5 s pay for
    12 more steps: 12 s of steps, the validation after step 80 and the final one after step 83 (13 steps would
    need 21 s). So the cooldown runs updates 71-82, and the run ends at step 83 with 119.5 s spent."""
    run, callbacks, budget, lrs = clock_run(tmp_path, cache_dir)
    results = fit(run, tmp_path, callbacks=callbacks)
    assert (budget.decided_at, budget.horizon, budget.cooldown_steps, budget.retimed) == (71, 83, 12, 0)
    assert results.steps == 83 == results.val_step and results.stop_reason == "budget"
    assert results.budget_seconds == 120.0 and results.budget_seconds_used == pytest.approx(119.5)
    assert results.budget_fraction == pytest.approx(119.5 / 120) and results.budget_flops is None
    assert results.mfu is None  # a CPU has no peak in the device table (and no budget.peak_tflops here)
    assert all(lrs.lrs[k] == PEAK_LR for k in range(5, 72))  # warmup, then constant through update 71 (t = 0)
    for k in range(71, 83):  # 1-sqrt over the 12 cooldown updates
        assert lrs.lrs[k] == pytest.approx(PEAK_LR * (1 - math.sqrt((k - 71) / 12)), rel=1e-9)
    assert results.module.lr_schedulers().get_last_lr()[0] == 0.0  # annealed: the LR after the last step


def test_a_wall_clock_budget_killed_mid_cooldown_resumes_with_the_time_left_and_the_same_schedule(tmp_path, cache_dir):
    """Killed after step 78 (its checkpoint at 75 holds 103.5 s spent, the measured times and the cooldown 71-83);
    the resumed start (no sanity check: Lightning skips it mid-epoch) runs steps 76-83 on a fresh clock and spends
    the 16 s left to the second: the same LR for every update, the same end, 119.5 s in all."""
    run, callbacks, _, reference = clock_run(tmp_path / "reference", cache_dir)
    whole = fit(run, tmp_path / "reference", callbacks=callbacks)

    class Kill(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 78:
                raise RuntimeError("killed")

    run, callbacks, _, _ = clock_run(tmp_path / "run", cache_dir, extra=[Kill()], every_n_steps=5)
    with pytest.raises(RuntimeError, match="killed"):
        fit(run, tmp_path / "run", callbacks=callbacks)
    run, callbacks, budget, lrs = clock_run(tmp_path / "run", cache_dir, every_n_steps=5)
    results = fit(run, tmp_path / "run", callbacks=callbacks)
    assert budget.seconds_before == pytest.approx(103.5) and (budget.decided_at, budget.horizon) == (71, 83)
    assert sorted(lrs.lrs) == list(range(75, 83)) and all(lrs.lrs[k] == reference.lrs[k] for k in lrs.lrs)
    assert results.steps == 83 == whole.steps and results.stop_reason == "budget" and results.starts == 2
    assert results.budget_seconds_used == pytest.approx(119.5) and budget.retimed == 0
    assert results.val_loss == pytest.approx(whole.val_loss, abs=1e-6)

    # killed after the budget stopped it but before results.json: the next start trains no further
    (tmp_path / "run" / "results.json").unlink()
    run, callbacks, budget, lrs = clock_run(tmp_path / "run", cache_dir, every_n_steps=5)
    again = fit(run, tmp_path / "run", callbacks=callbacks)
    assert again.steps == 83 and again.stop_reason == "budget" and lrs.lrs == {} and budget.stopped

    # a fork of it starts a budget of its own (none of the source's seconds or horizon, but its measured times):
    # 15 s from step 83, no sanity check (Lightning skips it), 1 s a step; at step 90 another step would need the
    # validation due there, the step and a final validation (7 + 9 > 15 s): it stops there, at 7 + 4 = 11 s
    fork_run = replace(
        run,
        init=InitConfig(name="fork", path=str(tmp_path / "run" / "checkpoints" / "last.ckpt")),
        budget=BudgetConfig(name="wall_clock", minutes=0.25),
    )
    _, callbacks, budget, lrs = clock_run(tmp_path / "fork", cache_dir, every_n_steps=5)
    fork = fit(fork_run, tmp_path / "fork", callbacks=callbacks)
    assert budget.seconds_before == 0.0 and fork.steps > 83 and min(lrs.lrs) == 83
    assert fork.stop_reason == "budget" and fork.steps == 90 and fork.budget_seconds_used == pytest.approx(11.0)


@pytest.mark.parametrize("name", ["wsd", "cosine"])
def test_the_step_cap_of_a_wall_clock_budget_ends_the_run_with_its_own_schedule(tmp_path, cache_dir, name):
    """The clock alone would end the run at step 83; with budget.max_steps=50 the cap comes first, so no horizon
    is decided past it and the schedule over the cap's 50 steps runs as it is: WSD cools down over steps 40-50,
    cosine reaches its final LR at 50."""
    scheduler = WSD if name == "wsd" else SchedulerConfig(name="cosine", warmup_steps=5, final_lr_frac=0.1)
    run, callbacks, budget, lrs = clock_run(tmp_path, cache_dir, scheduler=scheduler)
    run = replace(run, budget=replace(run.budget, max_steps=50))
    results = fit(run, tmp_path, callbacks=callbacks)
    assert budget.horizon is None and results.steps == 50 and results.stop_reason == "max_steps"
    if name == "wsd":
        assert lrs.lrs[39] == PEAK_LR and lrs.lrs[41] == pytest.approx(PEAK_LR * (1 - math.sqrt(0.1)), rel=1e-9)
    final = 0.0 if name == "wsd" else PEAK_LR * 0.1
    assert results.module.lr_schedulers().get_last_lr()[0] == pytest.approx(final, abs=1e-15)


def test_a_slower_cooldown_is_re_timed_and_still_ends_annealed_within_one_step(tmp_path, cache_dir):
    """Steps take 1.2 s from update 72 on (the machine slows during the cooldown): the planned end (83) no longer
    fits, so the cooldown's end moves earlier, its start (71) stays, and the run still ends with the LR at 0, at
    most one step from the deadline."""
    run, callbacks, budget, lrs = clock_run(tmp_path, cache_dir, step_seconds=lambda k: 1.2 if k >= 72 else 1.0)
    results = fit(run, tmp_path, callbacks=callbacks)
    assert budget.decided_at == 71 and budget.retimed >= 1 and results.steps == budget.horizon < 83
    assert budget.horizon - budget.cooldown_steps == 71  # the start stays
    assert results.module.lr_schedulers().get_last_lr()[0] == 0.0
    assert 0 <= 120.0 - results.budget_seconds_used < 1.2  # under, by less than a step
    assert all(lrs.lrs[k] <= lrs.lrs[k - 1] for k in range(72, results.steps))  # the LR only decreases


def test_the_cosine_horizon_is_fixed_after_calibration(tmp_path, cache_dir):
    """20 calibration steps: the 19 timed step intervals are there at step 22 (the first step's is left out, and
    the ones after the validations at steps 10 and 20 count as validation time). 120 - (0.5 + 22 + 8) = 89.5 s
    then pay for 61 more steps (61 s; validations after 30, ..., 80 and the final one after 83: 7 x 4 s); the
    run ends at 83 at 119.5 s, with cosine at its final LR."""
    cosine = SchedulerConfig(name="cosine", warmup_steps=5, final_lr_frac=0.1)
    run, callbacks, budget, lrs = clock_run(tmp_path, cache_dir, scheduler=cosine)
    results = fit(run, tmp_path, callbacks=callbacks)
    assert (budget.decided_at, budget.horizon, budget.cooldown_steps) == (22, 83, None)
    assert results.steps == 83 and results.stop_reason == "budget"
    assert results.budget_seconds_used == pytest.approx(119.5)
    assert results.module.lr_schedulers().get_last_lr()[0] == pytest.approx(PEAK_LR * 0.1, rel=1e-12)
    progress = (50 - 5) / (83 - 5)
    assert lrs.lrs[50] == pytest.approx(PEAK_LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))), rel=1e-9)


def test_the_clock_stops_a_run_before_the_step_that_would_overshoot(tmp_path, cache_dir):
    """A constant LR (nothing to anneal) and steps that slow from 1 s to 3 s at update 60: the run stops at the
    last step whose successor (and the final validation) would not fit, never more than one step over."""
    constant = SchedulerConfig(name="constant", warmup_steps=5)
    run, callbacks, budget, _ = clock_run(
        tmp_path, cache_dir, scheduler=constant, step_seconds=lambda k: 3.0 if k >= 60 else 1.0
    )
    results = fit(run, tmp_path, callbacks=callbacks)
    assert budget.horizon is None and results.stop_reason == "budget" and budget.stopped
    assert results.budget_seconds_used - 120.0 < 3.0  # over by less than one (slow) step
    assert results.budget_seconds_used + 3.0 + 4.0 > 120.0  # and one more step would not have fitted
