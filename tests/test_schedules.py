"""LR schedules against their formulas (Hägele et al. 2024 and their code), continuity, restore, cooldown forks."""

import math

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from lm_lab.errors import ConfigError
from lm_lab.optim import SchedulerConfig, cooldown, cosine, cosine_restarts, linear, lr_multiplier, warmup, wsd
from lm_lab.optim.schedules import COOLDOWN_SHAPES

W, T, S = 10, 110, 0.01  # warmup steps, total steps, warmup start fraction
KW = {"warmup_steps": W, "total_steps": T, "start_frac": S}


def test_warmup_follows_hagele_et_al():
    # their code: step / n_warmup + (1 - step / n_warmup) / init_div_factor, with init_div_factor = 100
    for step in range(W + 1):
        assert warmup(step, W, S) == pytest.approx(step / W + (1 - step / W) / 100)
    assert warmup(W, W, S) == 1.0 and warmup(0, 0, S) == 1.0


@pytest.mark.parametrize("fn", [linear, cosine])
def test_decays_hit_the_formula_at_the_landmarks(fn):
    kw = {**KW, "final_lr_frac": 0.1}
    assert fn(W - 1, **kw) == pytest.approx(warmup(W - 1, W, S))  # warmup end
    assert fn(W, **kw) == pytest.approx(1.0)  # decay start
    mid = 0.1 + 0.9 * (0.5 if fn is linear else 0.5 * (1 + math.cos(math.pi / 2)))
    assert fn(60, **kw) == pytest.approx(mid)  # half-way
    assert fn(T, **kw) == pytest.approx(0.1) and fn(T + 50, **kw) == pytest.approx(0.1)  # end, and after


@pytest.mark.parametrize(  # exp decays to final_lr_frac, which must then be > 0
    "shape, final", [(s, f) for s in COOLDOWN_SHAPES for f in (0.0, 0.05) if not (s == "exp" and f == 0.0)]
)
def test_wsd_against_the_formulas(shape, final):
    c = 20  # cooldown steps: stable until 90
    kw = {**KW, "cooldown_steps": c, "shape": shape, "final_lr_frac": final}
    assert wsd(W - 1, **kw) == pytest.approx(warmup(W - 1, W, S))
    assert wsd(W, **kw) == 1.0 and wsd(50, **kw) == 1.0 and wsd(89, **kw) == 1.0  # stable phase
    assert wsd(90, **kw) == pytest.approx(1.0)  # cooldown start: continuous
    t = 0.5  # mid-cooldown, step 100
    expected = {
        "linear": 1 - t,
        "1-sqrt": 1 - math.sqrt(t),
        "cosine": 0.5 * (1 + math.cos(math.pi * t)),
        "mirror_cosine": 2 * (1 - t) - 0.5 * (1 + math.cos(math.pi * t)),
        "square": 1 - t * t,
    }
    want = final**t if shape == "exp" else final + (1 - final) * expected[shape]
    assert wsd(100, **kw) == pytest.approx(want)
    assert wsd(T, **kw) == pytest.approx(final) and wsd(T - 1, **kw) == pytest.approx(cooldown(19 / 20, shape, final))
    values = [wsd(s, **kw) for s in range(T + 1)]
    assert max(abs(a - b) for a, b in zip(values, values[1:], strict=False)) < 0.25  # no jumps anywhere


def test_cosine_restarts_cycle_and_grow():
    kw = {"warmup_steps": W, "period": 20, "mult": 2.0, "final_lr_frac": 0.1, "start_frac": S}
    assert cosine_restarts(W, **kw) == pytest.approx(1.0)
    assert cosine_restarts(W + 10, **kw) == pytest.approx(0.55)  # half a 20-step cycle
    assert cosine_restarts(W + 20, **kw) == pytest.approx(1.0)  # restart
    assert cosine_restarts(W + 20 + 20, **kw) == pytest.approx(0.55)  # half of the 40-step second cycle
    assert cosine_restarts(W + 60, **kw) == pytest.approx(1.0)


def schedule_values(cfg: SchedulerConfig, total: int, steps: int, state=None) -> tuple[list[float], dict]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = LambdaLR(opt, lr_multiplier(cfg, total))
    if state is not None:
        sched.load_state_dict(state)
        opt.param_groups[0]["lr"] = sched.get_last_lr()[0]
    values = []
    for _ in range(steps):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return values, sched.state_dict()


@pytest.mark.parametrize("name", ["constant", "linear", "cosine", "wsd", "cosine_restarts"])
def test_a_restored_scheduler_continues_with_the_same_values(name):
    cfg = SchedulerConfig(name=name, warmup_steps=10, restart_steps=15)
    straight, _ = schedule_values(cfg, 100, 60)
    _, state = schedule_values(cfg, 100, 37)
    resumed, _ = schedule_values(cfg, 100, 23, state)
    assert resumed == pytest.approx(straight[37:])


def test_reduce_on_plateau_composes_and_survives_a_restore():
    cfg = SchedulerConfig(name="constant", warmup_steps=0, plateau_factor=0.5, plateau_patience=2)
    s = lr_multiplier(cfg, 100)
    assert [s.observe(x) for x in (3.0, 2.9, 2.9, 2.9, 2.9, 2.9)] == [False, False, False, True, False, True]
    assert s(50) == pytest.approx(0.25)
    again = lr_multiplier(cfg, 100)
    again.__dict__.update({k: v for k, v in s.__dict__.items()})  # what LambdaLR.load_state_dict does
    assert again(50) == pytest.approx(0.25)


def test_a_cooldown_fork_reproduces_one_wsd_run():
    """Forking a cooldown of n steps (`cooldown_steps`) from step k of a long WSD run's stable phase gives, step for
    step, the LR sequence of one WSD run of k + n steps whose 20% cooldown (`cooldown_frac`) starts at k (what
    init=checkpoint + cooldown_steps does; tests/test_forks.py checks the same end to end)."""
    k, n = 60, 15
    stable = lr_multiplier(SchedulerConfig(name="wsd", warmup_steps=10, final_lr_frac=0.0), 10_000)  # cooldown at 8000
    fork = lr_multiplier(SchedulerConfig(name="wsd", warmup_steps=10, cooldown_steps=n, final_lr_frac=0.0), k + n)
    single = lr_multiplier(SchedulerConfig(name="wsd", warmup_steps=10, cooldown_frac=0.2, final_lr_frac=0.0), k + n)
    run = [stable(s) for s in range(k)] + [fork(s) for s in range(k, k + n)]
    assert run == [single(s) for s in range(k + n)]  # exactly, not approximately
    assert single(k - 1) == 1.0 and single(k) == 1.0 and single(k + 1) < 1.0  # the cooldown starts at k
    assert single(k + n) == 0.0


def test_schedules_at_the_edges_of_the_run_are_accepted():
    assert lr_multiplier(SchedulerConfig(warmup_steps=100), 100)(99) < 1.0  # a run that is all warmup
    one = lr_multiplier(SchedulerConfig(name="wsd", warmup_steps=0, cooldown_steps=1, final_lr_frac=0.0), 100)
    assert one(98) == one(99) == 1.0 and one(100) == 0.0  # a one-step cooldown
    no_stable = lr_multiplier(SchedulerConfig(name="wsd", warmup_steps=40, cooldown_steps=60), 100)
    assert no_stable(39) < 1.0 and no_stable(40) == 1.0 and no_stable(41) < 1.0  # warmup straight into cooldown
    short = cosine(1, warmup_steps=1, total_steps=2, final_lr_frac=0.1)  # one decay step: 1 -> final at once
    assert short == 1.0 and cosine(2, warmup_steps=1, total_steps=2, final_lr_frac=0.1) == pytest.approx(0.1)
    assert linear(2, warmup_steps=1, total_steps=2, final_lr_frac=0.1) == pytest.approx(0.1)


def test_schedules_that_do_not_fit_the_run_are_refused():
    with pytest.raises(ConfigError, match=r"scheduler\.warmup_steps=300 exceeds train\.max_steps=100"):
        lr_multiplier(SchedulerConfig(warmup_steps=300), 100)
    with pytest.raises(
        ConfigError, match=r"scheduler\.warmup_steps=50 \+ cooldown 60 steps exceed train\.max_steps=100"
    ):
        lr_multiplier(SchedulerConfig(name="wsd", warmup_steps=50, cooldown_steps=60), 100)
    with pytest.raises(ConfigError, match=r"cooldown_shape=exp decays to final_lr_frac, which must then be > 0"):
        SchedulerConfig(name="wsd", cooldown_shape="exp", final_lr_frac=0.0)
    with pytest.raises(ConfigError, match=r"scheduler\.cooldown_shape='sqrt' is unknown"):
        SchedulerConfig(cooldown_shape="sqrt")


@pytest.mark.parametrize(
    "fields, formula",
    [
        (
            {"name": "cosine", "warmup_steps": 7, "warmup_start_frac": 0.2, "final_lr_frac": 0.3},
            lambda s: cosine(s, warmup_steps=7, total_steps=T, final_lr_frac=0.3, start_frac=0.2),
        ),
        (
            {"name": "linear", "warmup_steps": 3, "final_lr_frac": 0.05},
            lambda s: linear(s, warmup_steps=3, total_steps=T, final_lr_frac=0.05, start_frac=0.01),
        ),
        (
            {"name": "wsd", "cooldown_steps": 7, "final_lr_frac": 0.0},  # 7, not cooldown_frac's int(0.2 * 110) = 22
            lambda s: wsd(s, warmup_steps=40, total_steps=T, cooldown_steps=7, shape="1-sqrt", final_lr_frac=0.0),
        ),
        (
            {"name": "wsd", "cooldown_frac": 0.5, "cooldown_shape": "square", "final_lr_frac": 0.1, "warmup_steps": 5},
            lambda s: wsd(s, warmup_steps=5, total_steps=T, cooldown_steps=55, shape="square", final_lr_frac=0.1),
        ),
        ({"name": "constant", "warmup_steps": 9, "warmup_start_frac": 0.5}, lambda s: warmup(s, 9, 0.5)),
        (
            {
                "name": "cosine_restarts",
                "warmup_steps": 2,
                "restart_steps": 11,
                "restart_mult": 3.0,
                "final_lr_frac": 0.2,
            },
            lambda s: cosine_restarts(s, warmup_steps=2, period=11, mult=3.0, final_lr_frac=0.2, start_frac=0.01),
        ),
    ],
    ids=["cosine", "linear", "wsd-steps", "wsd-frac-shape", "constant", "restarts"],
)
def test_every_scheduler_field_changes_the_lr(fields, formula):
    """The schedule a config builds is the formula with exactly that config's values, at every step (and not the
    schedule of the default values: each field is seen to matter)."""
    values = [lr_multiplier(SchedulerConfig(**fields), T)(s) for s in range(T + 5)]
    assert values == [formula(s) for s in range(T + 5)]
    default = SchedulerConfig(name=fields["name"])
    assert values != [lr_multiplier(default, T)(s) for s in range(T + 5)]


def test_plateau_edges():
    on = SchedulerConfig(name="constant", warmup_steps=0, plateau_factor=0.5, plateau_patience=2)
    s = lr_multiplier(on, 100)
    # an improvement resets the count of bad validations; a non-finite loss neither counts nor cuts
    assert [s.observe(x) for x in (3.0, 3.0, 2.0, 2.0, float("nan"), 2.0)] == [False, False, False, False, False, True]
    off = lr_multiplier(SchedulerConfig(name="constant", warmup_steps=0), 100)
    assert not any(off.observe(x) for x in (3.0, 3.0, 3.0, 3.0)) and off(50) == 1.0


def test_plateau_fields_decide_when_the_lr_is_cut():
    losses = [3.0, 2.995, 2.99, 2.90, 2.899, 2.898, 2.897]
    expected = {  # (threshold, patience): a cut after which validation, worked out by hand
        (1e-3, 1): [False, False, False, False, True, True, False],
        (1e-3, 2): [False, False, False, False, False, True, False],
        (1e-2, 1): [False, True, True, False, True, True, True],
        (1e-2, 2): [False, False, True, False, False, True, False],
    }
    for (threshold, patience), cuts in expected.items():
        cfg = SchedulerConfig(
            name="constant", warmup_steps=0, plateau_factor=0.3, plateau_patience=patience, plateau_threshold=threshold
        )
        s = lr_multiplier(cfg, 100)
        assert [s.observe(x) for x in losses] == cuts, (threshold, patience)
        assert s(50) == pytest.approx(0.3 ** sum(cuts))


@pytest.mark.parametrize(
    "field, ok, bad",
    [
        ("warmup_steps", 0, -1),
        ("warmup_start_frac", 1.0, 1.01),
        ("final_lr_frac", 1.0, -0.01),
        ("cooldown_frac", 1.0, 0.0),
        ("cooldown_steps", 1, 0),
        ("restart_steps", 1, 0),
        ("restart_mult", 1.0, 0.99),
        ("plateau_factor", 0.999, 1.0),
    ],
)
def test_scheduler_fields_accept_their_edges_and_name_the_field_beyond(field, ok, bad):
    SchedulerConfig(**{field: ok})
    with pytest.raises(ConfigError, match=rf"scheduler\.{field}"):
        SchedulerConfig(**{field: bad})
    if field == "plateau_factor":
        with pytest.raises(ConfigError, match=r"scheduler\.plateau_factor=0\b"):
            SchedulerConfig(plateau_factor=0)
