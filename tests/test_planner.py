"""The compute-optimal planner: the laws' optima, the model it picks, the command it prints, its refusals."""

import json
import math
import shlex
from dataclasses import replace

import pytest
import torch
from scipy.optimize import minimize_scalar

from lm_lab.cli import main
from lm_lab.config import RunConfig, compose
from lm_lab.errors import ConfigError
from lm_lab.models import GPT, ModelConfig, flops_per_token, param_count
from lm_lab.models.presets import PRESETS
from lm_lab.scaling.budget import BudgetConfig
from lm_lab.scaling.laws import LAWS, Parametric, PowerLaws, law, load_fit
from lm_lab.scaling.planner import make_plan, shape

A100_3H = 3 * 3600 * 312e12  # seed 000: 3.37e18 FLOPs
SEED_000 = BudgetConfig(name="gpu_hours", hours=3, gpu="a100")


def test_chinchilla_is_twenty_tokens_per_parameter():
    n, d = LAWS["chinchilla"].optimum(A100_3H)
    assert n == pytest.approx(math.sqrt(A100_3H / 120)) and d == pytest.approx(20 * n)
    assert 6 * n * d == pytest.approx(A100_3H)
    assert n == pytest.approx(167.6e6, rel=1e-3) and d == pytest.approx(3.35e9, rel=1e-3)  # seed 000: 170M, 3.4B


@pytest.mark.parametrize("name", ["hoffmann", "epoch"])
def test_parametric_optimum_minimises_the_loss_on_the_iso_flop_line(name):
    """The closed form (Hoffmann et al. Eq. 4) against a numerical minimum of L(N, C / 6N) over log N."""
    fitted = LAWS[name]
    for flops in (1e18, A100_3H, 1e21):
        n, d = fitted.optimum(flops)
        assert 6 * n * d == pytest.approx(flops, rel=1e-12)
        best = minimize_scalar(
            lambda x, c=flops: fitted.loss(math.exp(x), c / (6 * math.exp(x))), bracket=(10, 30), tol=1e-12
        )
        assert n == pytest.approx(math.exp(best.x), rel=1e-4)


def test_published_law_constants():
    h, e = LAWS["hoffmann"], LAWS["epoch"]
    assert (h.E, h.A, h.B, h.alpha, h.beta) == (1.69, 406.4, 410.7, 0.34, 0.28)
    assert (e.E, e.A, e.B, e.alpha, e.beta) == (1.8172, 482.01, 2085.43, 0.3478, 0.3658)
    assert h.loss(*h.optimum(A100_3H)) == pytest.approx(3.2206, abs=1e-3)  # a hand-checked figure


@pytest.mark.parametrize("name", ["chinchilla", "hoffmann", "epoch"])
def test_the_plan_has_the_parameters_it_prints_and_lands_within_5_percent(name, tmp_path):
    plan = make_plan(BudgetConfig(name="flops", flops=A100_3H), LAWS[name], vocab_size=50257, batch_size=66)
    cfg = ModelConfig(n_layer=plan.n_layer, n_head=plan.n_head, d_model=plan.d_model, vocab_size=50257)
    with torch.device("meta"):
        built = GPT(cfg)
    assert sum(p.numel() for p in built.parameters()) == plan.params == param_count(cfg)  # tied weights once
    assert abs(plan.params / plan.params_opt - 1) <= 0.05
    assert plan.d_model == 64 * plan.n_head and 32 <= plan.d_model / plan.n_layer <= 128
    per_step = flops_per_token(cfg, 1024) * 66 * 1024
    assert plan.steps * per_step <= A100_3H < (plan.steps + 1) * per_step  # the budget's last whole step
    assert plan.tokens == plan.steps * 66 * 1024 and plan.flops_6n == plan.tokens * flops_per_token(cfg, 1024)
    # the printed command is the run: the same model, and run.py derives the same steps from the same budget
    args = shlex.split(plan.command)[2:]
    run = RunConfig.from_dict(compose([*args, "tokenizer=gpt2", f"data.cache_dir={tmp_path}"])).derive()
    assert (run.model.n_layer, run.model.n_head, run.model.d_model) == (plan.n_layer, plan.n_head, plan.d_model)
    assert param_count(run.model) == plan.params and run.train.max_steps == plan.steps
    assert run.train.batch_size == 66 and run.budget.flops == pytest.approx(A100_3H, rel=1e-6)


def test_the_command_states_the_budget_as_given(tmp_path):
    plan = make_plan(replace(SEED_000, mfu=0.4, flop_count="chinchilla"), LAWS["chinchilla"], vocab_size=50257)
    args = shlex.split(plan.command)[2:]
    assert "budget=gpu_hours" in args and "budget.mfu=0.4" in args and "budget.flop_count=chinchilla" in args
    run = RunConfig.from_dict(compose([*args, "tokenizer=gpt2", f"data.cache_dir={tmp_path}"])).derive()
    assert run.budget == replace(SEED_000, mfu=0.4, flop_count="chinchilla") and run.train.max_steps == plan.steps
    with pytest.raises(ConfigError, match="needs a FLOP budget"):
        make_plan(BudgetConfig(name="wall_clock", minutes=2), LAWS["chinchilla"], vocab_size=50257)


def test_the_budget_3h_model_is_the_planners():
    plan = make_plan(SEED_000, LAWS["chinchilla"], vocab_size=50257, batch_size=66)
    chosen = {"n_layer": plan.n_layer, "n_head": plan.n_head, "d_model": plan.d_model, "block_size": 1024}
    assert PRESETS["gpt2_a100_3h"] == chosen
    cfg = compose(["experiment=budget_3h"])
    assert cfg.model.name == "gpt2_a100_3h" and cfg.train.batch_size == cfg.train.micro_batch_size == 66
    assert cfg.model.dropout > 0 and cfg.budget.name == "wall_clock" and cfg.budget.minutes == 180
    assert (cfg.scheduler.name, cfg.scheduler.cooldown_frac, cfg.scheduler.cooldown_shape) == ("wsd", 0.2, "1-sqrt")


def test_shapes_for_small_targets_fall_back_with_a_warning():
    cfg, warnings = shape(2.9e6, vocab_size=4096, seq_len=256)
    assert abs(param_count(cfg) / 2.9e6 - 1) <= 0.05 and cfg.d_model % 64 == 0
    assert len(warnings) == 1 and "d_model/n_layer" in warnings[0]
    cfg, warnings = shape(124e6, vocab_size=50257, seq_len=1024)
    assert warnings == [] and abs(param_count(cfg) / 124e6 - 1) <= 0.05


def test_fits_of_both_methods_are_read(tmp_path):
    parametric = tmp_path / "parametric.json"
    parametric.write_text(json.dumps({"E": 1.7, "A": 400.0, "B": 400.0, "alpha": 0.3, "beta": 0.3, "huber_loss": 1e-3}))
    fitted = load_fit(parametric)
    assert isinstance(fitted, Parametric) and fitted.optimum(6e18)[0] == pytest.approx(1e9)  # G = 1, a = 1/2
    isoflop = tmp_path / "isoflop.json"
    isoflop.write_text(json.dumps({"params": {"coef": 0.1, "exponent": 0.5}, "tokens": {"coef": 1.6, "exponent": 0.5}}))
    fitted = load_fit(isoflop)
    assert isinstance(fitted, PowerLaws) and fitted.optimum(1e18) == pytest.approx((1e8, 1.6e9))
    for bad in ({"E": 1.7}, {"params": {"coef": 1}}, [1, 2], {"E": 1, "A": 1, "B": 1, "alpha": -0.3, "beta": 0.3}):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError) as e:
            load_fit(path)
        assert len(e.value.problems) == 1 and "bad.json" in e.value.problems[0]
    with pytest.raises(ConfigError, match="unknown; choose one of"):
        law("kaplan")


def test_lm_lab_plan_json(capsys):
    assert main(["plan", "--gpu-hours", "3", "--gpu", "a100", "--law", "hoffmann", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flops"] == A100_3H and out["law"] == "hoffmann" and out["loss_opt"] == pytest.approx(3.2206, abs=1e-3)
    assert "budget=gpu_hours budget.hours=3.0 budget.gpu=a100" in out["command"] and "tokenizer=gpt2" in out["command"]
    assert main(["plan", "--gpu-hours", "2", "--peak-tflops", "400", "--json"]) == 0  # a GPU the table lacks
    out = json.loads(capsys.readouterr().out)
    assert out["flops"] == 2 * 3600 * 400e12 and "budget.peak_tflops=400.0 budget.gpu=null" in out["command"]
    assert main(["plan", "--flops", "1e18", "tokenizer=bpe"]) == 0
    text = capsys.readouterr().out
    assert "N_opt 91.3M parameters" in text and "budget=flops budget.flops=1e+18 tokenizer=bpe" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--flops", "-1"], "error: --flops=-1.0 must be a positive number of FLOPs"),
        (["--flops", "0"], "error: --flops=0.0 must be a positive number of FLOPs"),
        (["--flops", "nan"], "error: --flops=nan must be a positive number of FLOPs"),
        (["--gpu-hours", "3", "--gpu", "a100", "--mfu", "1.5"], "error: --mfu=1.5 must be in (0, 1]"),
        (["--gpu-hours", "3", "--gpu", "a100", "--mfu", "0"], "error: --mfu=0.0 must be in (0, 1]"),
        (["--gpu-hours", "3", "--gpu", "tpu"], "error: --gpu='tpu' is not in the device table"),
        (["--gpu-hours", "3"], "error: --gpu-hours needs --gpu (one of"),
        (["--gpu-hours", "-3", "--gpu", "a100"], "error: --gpu-hours=-3.0 must be a positive number"),
        ([], "error: give one budget"),
        (["--flops", "1e18", "--gpu-hours", "3"], "error: give one budget"),
        (["--flops", "1e18", "--mfu", "0.5"], "error: --gpu, --mfu and --peak-tflops go with --gpu-hours"),
        (["--flops", "1e18", "--law", "kaplan"], "error: --law 'kaplan' is unknown"),
        (["--flops", "1e6"], "error: a budget of 1e+06 FLOPs pays for no step"),
        (["--flops", "1e18", "--law", "hoffmann", "--fit", "x.json"], "error: give --law NAME or --fit FIT.json"),
        (["--flops", "1e18", "--peak-tflops", "400"], "error: --gpu, --mfu and --peak-tflops go with --gpu-hours"),
        (["--flops", "1e18", "--tolerance", "0"], "error: --tolerance 0: give a positive fraction"),
        (["--gpu-hours", "3", "--gpu", "v100"], "error: --gpu='v100' has no bf16 peak in the device table"),
        (["--gpu-hours", "3", "--peak-tflops", "-4"], "error: --peak-tflops=-4.0 must be a positive number"),
    ],
)
def test_lm_lab_plan_refuses_nonsense_in_one_line(capsys, argv, message):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)
