import math

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from lm_lab.errors import ConfigError
from lm_lab.optim import SchedulerConfig, cosine, lr_multiplier

KW = {"warmup_steps": 10, "total_steps": 110, "final_lr_frac": 0.1}


def test_warmup_is_linear_and_reaches_peak():
    assert cosine(0, **KW) == pytest.approx(0.1)
    assert cosine(4, **KW) == pytest.approx(0.5)
    assert cosine(9, **KW) == pytest.approx(1.0)
    assert cosine(10, **KW) == pytest.approx(1.0)  # first decay step: cos(0) = 1, continuous with warmup


def test_cosine_values_against_the_formula():
    assert cosine(60, **KW) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cos(pi/2) = 0
    step = 35  # a quarter of the way through the decay
    assert cosine(step, **KW) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert cosine(110, **KW) == pytest.approx(0.1)
    assert cosine(500, **KW) == pytest.approx(0.1)  # stays at the floor past the horizon
    values = [cosine(s, **KW) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert max(abs(a - b) for a, b in zip(values, values[1:], strict=False)) < 0.03  # no jumps


def test_restored_scheduler_continues_with_the_same_values():
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
        return opt, LambdaLR(opt, lr_multiplier(SchedulerConfig(warmup_steps=10), 110))

    opt, sched = make()
    for _ in range(37):
        opt.step()
        sched.step()
    state = sched.state_dict()
    expected = []
    for _ in range(5):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    opt2, sched2 = make()
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    got = []
    for _ in range(5):
        got.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert got == pytest.approx(expected)
    assert expected[0] == pytest.approx(2.0 * cosine(37, **KW))


def test_warmup_longer_than_run_is_refused():
    with pytest.raises(ConfigError, match=r"scheduler\.warmup_steps=300 exceeds train\.max_steps=100"):
        lr_multiplier(SchedulerConfig(warmup_steps=300), 100)
