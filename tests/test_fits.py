"""`lm-lab fit`'s laws (`lm_lab.scaling.fits`): IsoFLOP parabolas, the parametric law, hyperparameter power laws,
recovered from data drawn from known laws; the refusals, one line each; the command end to end with its plot."""

import argparse
import csv
import json
import math

import numpy as np
import pytest
from scipy.optimize import check_grad, minimize, minimize_scalar
from scipy.special import huber
from threadpoolctl import threadpool_limits

from lm_lab.errors import ConfigError
from lm_lab.scaling import fits
from lm_lab.scaling.laws import LAWS, Parametric, load_fit

TRUTH = LAWS["epoch"]  # Besiroglu et al. 2024's refit
SMALL_GRID = {"a": (0.0, 10.0), "b": (5.0, 10.0), "e": (0.0, 0.5), "alpha": (0.5,), "beta": (0.5,)}


def isoflop_runs(seed=0, budgets=(1e15, 1e16, 1e17, 1e18), noise=1e-4, sizes=7):
    """Runs around N_opt = 0.1·C^0.5 per budget, loss L0(C) + 0.05 (ln N - ln N_opt)^2 + noise; the runs' N are
    off-centre around N_opt, so a vertex read as the middle run would be wrong."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n_opt = 0.1 * c**0.5
        for offset in np.linspace(-1.2, 1.8, sizes):
            loss = 2.0 + 10 * c**-0.05 + 0.05 * offset**2 + rng.normal(0, noise)
            rows.append((c, n_opt * math.exp(offset), loss))
    flops, params, loss = (np.array(column) for column in zip(*rows, strict=True))
    return {"flops": flops, "params": params, "loss": loss}


def parametric_runs(count=160, noise=0.005, seed=0):
    rng = np.random.default_rng(seed)
    n = np.exp(rng.uniform(math.log(1e6), math.log(1e9), count))
    d = np.exp(rng.uniform(math.log(1e8), math.log(1e11), count))
    loss = TRUTH.loss(n, d) * np.exp(rng.normal(0, noise, count))
    return {"params": n, "tokens": d, "loss": loss}


def write_csv(path, columns: dict):
    names = list(columns)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        writer.writerows(zip(*(columns[k] for k in names), strict=True))
    return path


def one_problem(excinfo) -> str:
    assert len(excinfo.value.problems) == 1, excinfo.value.problems
    return excinfo.value.problems[0]


def cli_args(*argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fits.add_arguments(parser)
    return parser.parse_args(argv)


# -- IsoFLOP (Approach 2) ------------------------------------------------------------------------------------------


def test_isoflop_recovers_the_power_laws_and_predicts():
    runs = isoflop_runs()
    fit = fits.isoflop(**runs, predict=[1e19])
    assert fit["params"]["exponent"] == pytest.approx(0.5, abs=0.005)
    assert fit["params"]["coef"] == pytest.approx(0.1, rel=0.05)
    # without tokens D_opt = C / (6 N_opt): exponent 1 - a, coefficient 1 / (6k)
    assert fit["tokens"]["exponent"] == pytest.approx(1 - fit["params"]["exponent"], abs=1e-9)
    assert fit["tokens"]["coef"] == pytest.approx(1 / (6 * fit["params"]["coef"]), rel=1e-9)
    (prediction,) = fit["predictions"]
    assert prediction["flops"] == 1e19
    assert prediction["params"] == pytest.approx(0.1 * 1e19**0.5, rel=0.02)
    assert prediction["tokens"] == pytest.approx(1e19 / (6 * 0.1 * 1e19**0.5), rel=0.02)
    for budget, c in zip(fit["per_budget"], (1e15, 1e16, 1e17, 1e18), strict=True):
        assert budget["flops"] == c
        assert budget["params"] == pytest.approx(0.1 * c**0.5, rel=0.01)  # the vertex, not the best run
        assert budget["loss"] == pytest.approx(2.0 + 10 * c**-0.05, abs=2e-4)
        assert budget["best_run_params"] == pytest.approx(0.1 * c**0.5 * math.exp(-0.2))  # offset -0.2 is closest
    assert fits.isoflop(**runs, predict=[1e19]) == fit


def test_isoflop_reads_tokens_at_the_vertex_when_given():
    runs = isoflop_runs()
    runs["tokens"] = 1.1 * runs["flops"] / (6 * runs["params"])  # a FLOP count other than 6ND
    fit = fits.isoflop(**runs)
    for budget in fit["per_budget"]:
        assert budget["tokens"] == pytest.approx(1.1 * budget["flops"] / (6 * budget["params"]), rel=1e-9)
    assert fit["tokens"]["coef"] == pytest.approx(1.1 / (6 * fit["params"]["coef"]), rel=1e-9)


def test_isoflop_groups_budgets_within_a_relative_tolerance():
    runs = isoflop_runs(noise=0)
    runs["flops"] = runs["flops"] * (1 + 1e-9 * np.arange(len(runs["flops"])))  # rounding in a CSV
    assert len(fits.isoflop(**runs)["per_budget"]) == 4


def test_robust_isoflop_resists_an_outlier():
    runs = isoflop_runs(budgets=(1e15, 1e16), noise=1e-3, sizes=11)
    runs["loss"][4] += 0.1  # one diverged run beside the minimum of 1e15
    truth = 0.1 * 1e15**0.5
    plain = fits.isoflop(**runs)["per_budget"][0]["params"]
    robust = fits.isoflop(**runs, robust=True)["per_budget"][0]["params"]
    assert abs(math.log(robust / truth)) < 0.02
    assert abs(math.log(plain / truth)) > 0.05


def test_isoflop_refuses_a_budget_with_two_runs():
    runs = isoflop_runs()
    keep = ~((runs["flops"] == 1e15) & (np.arange(len(runs["flops"])) % 7 > 1))
    with pytest.raises(ConfigError) as e:
        fits.isoflop(**{k: v[keep] for k, v in runs.items()})
    assert one_problem(e) == "budget 1e+15: 2 runs; an IsoFLOP parabola needs at least 3"


def test_isoflop_refuses_a_budget_without_an_interior_minimum():
    runs = isoflop_runs()
    at = runs["flops"] == 1e16
    runs["loss"][at] = 3 + 0.01 * np.exp(-np.log(runs["params"][at]) / 4)  # falling to the largest run
    with pytest.raises(ConfigError) as e:
        fits.isoflop(**runs)
    line = one_problem(e)
    assert line.startswith("budget 1e+16: the parabola's minimum, N = ")
    assert "lies outside the runs' range of N" in line and line.endswith("add runs with larger N")
    runs["loss"][at] = 3 - 0.05 * (np.log(runs["params"][at]) - np.log(0.1 * 1e8)) ** 2  # a maximum
    with pytest.raises(ConfigError) as e:
        fits.isoflop(**runs)
    assert one_problem(e).startswith("budget 1e+16: the loss is not convex in ln N over its 7 runs")


def test_isoflop_collects_every_problem_and_needs_two_budgets():
    runs = isoflop_runs()
    keep = np.arange(len(runs["flops"])) % 7 < 2
    with pytest.raises(ConfigError) as e:
        fits.isoflop(**{k: v[keep] for k, v in runs.items()})
    assert len(e.value.problems) == 4
    assert e.value.problems[3] == "budget 1e+18: 2 runs; an IsoFLOP parabola needs at least 3"
    one = {k: v[runs["flops"] == 1e17] for k, v in runs.items()}
    with pytest.raises(ConfigError) as e:
        fits.isoflop(**one)
    assert "need at least 2" in one_problem(e)


# -- the parametric law (Approach 3) -------------------------------------------------------------------------------


def test_the_default_grid_is_the_papers():
    points = fits._grid_points(fits.GRID)
    assert points.shape == (4500, 5)
    for column, values in zip(points.T, ([0, 25], [0, 25], [-1, 1], [0, 2], [0, 2]), strict=True):
        assert [column.min(), column.max()] == values
    assert [len(np.unique(c)) for c in points.T] == [6, 6, 5, 5, 5]
    assert fits.HUBER_DELTA == 1e-3


def test_objective_is_the_sum_of_huber_losses_and_its_gradient_is_exact():
    runs = parametric_runs(count=50)
    data = (np.log(runs["params"]), np.log(runs["tokens"]), np.log(runs["loss"]), 1e-3)
    rng = np.random.default_rng(1)
    for theta in [np.array([6.0, 7.5, 0.6, 0.35, 0.37]), *rng.uniform([0, 0, -1, 0, 0], [10, 10, 1, 1, 1], (4, 5))]:
        terms = np.stack([theta[0] - theta[3] * data[0], theta[1] - theta[4] * data[1], np.full(50, theta[2])])
        r = np.log(np.exp(terms).sum(axis=0)) - data[2]
        value, _ = fits._objective(theta, *data)
        assert value == pytest.approx(huber(1e-3, r).sum(), rel=1e-12)
        error = check_grad(lambda t: fits._objective(t, *data)[0], lambda t: fits._objective(t, *data)[1], theta)
        assert error < 1e-6 * max(1.0, np.abs(fits._objective(theta, *data)[1]).max())
    grid = fits._grid_points(SMALL_GRID)
    at_once = fits._objective_on_grid(grid, *data)
    assert at_once == pytest.approx([fits._objective(t, *data)[0] for t in grid], rel=1e-12)


def test_parametric_recovers_a_known_law():
    runs = parametric_runs()
    fit = fits.parametric(**runs, starts=200, predict=[1e21])
    assert fit["alpha"] == pytest.approx(TRUTH.alpha, abs=0.02)
    assert fit["beta"] == pytest.approx(TRUTH.beta, abs=0.02)
    assert fit["E"] == pytest.approx(TRUTH.E, abs=0.02)
    assert fit["A"] == pytest.approx(TRUTH.A, rel=0.1)
    assert fit["B"] == pytest.approx(TRUTH.B, rel=0.2)
    assert fit["ci"] is None
    x = [math.log(fit["A"]), math.log(fit["B"]), math.log(fit["E"]), fit["alpha"], fit["beta"]]
    logs = (np.log(runs["params"]), np.log(runs["tokens"]), np.log(runs["loss"]))
    value, gradient = fits._objective(np.array(x), *logs, 1e-3)
    assert fit["huber_loss"] == value
    assert np.abs(gradient).max() < 1e-7  # converged: a loose stopping rule leaves a visibly larger gradient
    allocation = fit["allocation"]
    assert allocation["a"] == pytest.approx(fit["beta"] / (fit["alpha"] + fit["beta"]), rel=1e-12)
    assert allocation["a"] + allocation["b"] == pytest.approx(1, rel=1e-12)
    # N_opt(C) = G (C/6)^a minimises the law along 6ND = C (Hoffmann et al. Eq. 4), found here by search
    law = Parametric(E=fit["E"], A=fit["A"], B=fit["B"], alpha=fit["alpha"], beta=fit["beta"])
    c = 1e21
    best = minimize_scalar(lambda x: law.loss(math.exp(x), c / (6 * math.exp(x))), bounds=(10, 35), method="bounded")
    n_opt = allocation["G"] * (c / 6) ** allocation["a"]
    assert n_opt == pytest.approx(math.exp(best.x), rel=1e-3)
    (prediction,) = fit["predictions"]
    assert prediction["params"] == pytest.approx(n_opt, rel=1e-12)
    assert prediction["tokens"] == pytest.approx(c / (6 * n_opt), rel=1e-12)
    assert prediction["loss"] == pytest.approx(law.loss(n_opt, c / (6 * n_opt)), rel=1e-12)
    assert fits.parametric(**runs, starts=200, predict=[1e21]) == fit


def test_parametric_runs_every_start_of_the_grid_by_default(monkeypatch):
    runs = parametric_runs(count=60)
    started = []
    real = fits.minimize
    monkeypatch.setattr(fits, "minimize", lambda f, x0, **kw: started.append(tuple(x0)) or real(f, x0, **kw))
    fits.parametric(**runs, grid=SMALL_GRID)
    assert sorted(started) == sorted(map(tuple, fits._grid_points(SMALL_GRID)))
    started.clear()
    fits.parametric(**runs, grid=SMALL_GRID, starts=3)
    assert len(started) == 3


def test_parametric_bootstrap_intervals_contain_the_truth_and_are_deterministic():
    runs = parametric_runs()
    fit = fits.parametric(**runs, starts=100, bootstrap=40, seed=3)
    truth = {"E": TRUTH.E, "A": TRUTH.A, "B": TRUTH.B, "alpha": TRUTH.alpha, "beta": TRUTH.beta}
    truth |= {"a": TRUTH.beta / (TRUTH.alpha + TRUTH.beta), "b": TRUTH.alpha / (TRUTH.alpha + TRUTH.beta)}
    assert set(fit["ci"]) == set(truth)
    for name, (lo, hi) in fit["ci"].items():
        assert lo < truth[name] < hi, name
        estimate = fit["allocation"][name] if name in ("a", "b") else fit[name]
        assert lo < estimate < hi, name
    assert fit["ci"]["alpha"][1] - fit["ci"]["alpha"][0] < 0.05
    assert fits.parametric(**runs, starts=100, bootstrap=40, seed=3) == fit
    assert fits.parametric(**runs, starts=100, bootstrap=40, seed=4)["ci"] != fit["ci"]


def test_bootstrap_intervals_are_the_95_percent_percentiles_of_refits_on_resamples():
    runs = parametric_runs(count=80)
    fit = fits.parametric(**runs, grid=SMALL_GRID, bootstrap=20, seed=5)
    logs = [np.log(runs[k]) for k in ("params", "tokens", "loss")]
    theta = np.array([math.log(fit["A"]), math.log(fit["B"]), math.log(fit["E"]), fit["alpha"], fit["beta"]])
    rng, refits = np.random.default_rng(5), []
    for _ in range(20):
        pick = rng.integers(0, 80, size=80)  # 80 runs drawn with replacement
        data = (*(column[pick] for column in logs), 1e-3)
        with threadpool_limits(limits=1, user_api="blas"):  # as fits does: threads slow L-BFGS-B down
            res = minimize(fits._objective, theta, args=data, jac=True, method="L-BFGS-B", options=fits.LBFGS_OPTIONS)
        a, b, e, alpha, beta = res.x
        refits.append(
            [math.exp(e), math.exp(a), math.exp(b), alpha, beta, beta / (alpha + beta), alpha / (alpha + beta)]
        )
    low, high = np.percentile(refits, [2.5, 97.5], axis=0)
    for i, name in enumerate(("E", "A", "B", "alpha", "beta", "a", "b")):
        assert fit["ci"][name] == pytest.approx([low[i], high[i]], rel=1e-6), name


# -- hyperparameters -----------------------------------------------------------------------------------------------

LAWS_002 = {"d_model": (0.0260, 0.24), "n_layer": (0.166, 0.10), "n_head": (0.310, 0.09), "batch_size": (15.3, 0.06)}


def hyperparam_runs():
    """Per budget, the best run on seed 002's laws (LR constant 1e-3), and three worse runs beside it."""
    rng = np.random.default_rng(0)
    rows = []
    for c in (1e15, 3e15, 1e16, 3e16, 1e17):
        best = {name: k * c**e for name, (k, e) in LAWS_002.items()} | {"lr": 1e-3}
        rows.append({"flops": c, "loss": 173 * c**-0.09, **best})
        for _ in range(3):
            worse = {name: v * math.exp(rng.uniform(-0.5, 0.5)) for name, v in best.items()}
            rows.append({"flops": c, "loss": 173 * c**-0.09 + rng.uniform(0.01, 0.5), **worse})
    return {name: np.array([row[name] for row in rows]) for name in rows[0]}


def test_hyperparams_recovers_the_best_runs_power_laws():
    runs = hyperparam_runs()
    fit = fits.hyperparams(**runs, predict=[1e19])
    for name, (k, e) in LAWS_002.items():
        assert fit["laws"][name]["exponent"] == pytest.approx(e, abs=1e-9)
        assert fit["laws"][name]["coef"] == pytest.approx(k, rel=1e-8)
    assert fit["laws"]["lr"] == {"coef": 1e-3, "exponent": 0.0}  # constant: exactly exponent 0
    assert fit["laws"]["loss"]["exponent"] == pytest.approx(-0.09, abs=1e-9)
    assert [b["flops"] for b in fit["budgets"]] == [1e15, 3e15, 1e16, 3e16, 1e17]
    assert [b["loss"] for b in fit["budgets"]] == pytest.approx(
        [173 * c**-0.09 for c in (1e15, 3e15, 1e16, 3e16, 1e17)]
    )
    (prediction,) = fit["predictions"]
    raw, model = prediction["raw"], prediction["model"]
    assert raw["d_model"] == pytest.approx(0.0260 * 1e19**0.24, rel=1e-8)
    assert model["n_head"] == round(raw["n_head"]) and model["n_layer"] == round(raw["n_layer"])
    assert model["d_model"] % model["n_head"] == 0 and model["d_model"] % 8 == 0
    assert abs(model["d_model"] - raw["d_model"]) <= math.lcm(model["n_head"], 8) / 2
    assert model["lr"] == 1e-3 and model["batch_size"] == round(raw["batch_size"])
    assert all(isinstance(model[k], int) for k in ("d_model", "n_layer", "n_head", "batch_size"))


def test_valid_model_rounds_seed_002s_prediction():
    raw = {"d_model": 951.504, "n_layer": 12.814, "n_head": 14.069, "batch_size": 259.868, "lr": 0.001}
    assert fits.valid_model(raw) == {"d_model": 952, "n_layer": 13, "n_head": 14, "batch_size": 260, "lr": 0.001}
    tiny = {"d_model": 3.0, "n_layer": 0.2, "n_head": 0.4, "batch_size": 0.3, "lr": 0.1}
    assert fits.valid_model(tiny) == {"d_model": 8, "n_layer": 1, "n_head": 1, "batch_size": 1, "lr": 0.1}


def test_hyperparams_needs_two_budgets():
    runs = {k: v[:4] for k, v in hyperparam_runs().items()}
    with pytest.raises(ConfigError) as e:
        fits.hyperparams(**runs)
    assert one_problem(e) == "1 budget (1e+15 FLOPs); power laws in compute need at least 2"


# -- input checks --------------------------------------------------------------------------------------------------


def test_a_non_positive_value_or_a_nan_is_one_line():
    runs = isoflop_runs()
    runs["params"][2] = -5
    with pytest.raises(ConfigError) as e:
        fits.isoflop(**runs)
    assert one_problem(e) == "row 3: params is -5; it must be positive"
    runs = parametric_runs(count=20)
    runs["loss"][1] = math.nan
    with pytest.raises(ConfigError) as e:
        fits.parametric(**runs)
    assert one_problem(e) == "row 2: loss is nan, not a finite number"
    with pytest.raises(ConfigError) as e:
        fits.parametric(runs["params"], runs["tokens"][:-1], np.ones(20))
    assert one_problem(e) == "the columns differ in length (params 20, tokens 19, loss 20); give one value per run"


def test_read_table_refuses_bad_tables_one_line_each(tmp_path):
    path = write_csv(tmp_path / "runs.csv", {"flops": [1e15, 1e15], "params": [1e6, 2e6], "extra": ["x", "y"]})
    with pytest.raises(ConfigError) as e:
        fits.read_table(path, ["flops", "params", "loss"])
    assert one_problem(e) == f"{path}: no column 'loss' (the columns are flops, params, extra)"
    table = fits.read_table(path, ["flops", "params"], ["tokens"])
    assert set(table) == {"flops", "params"} and table["params"].tolist() == [1e6, 2e6]
    path = write_csv(tmp_path / "bad.csv", {"flops": [1e15, 1e15, 1e15], "loss": [3.1, "abc", 0]})
    with pytest.raises(ConfigError) as e:
        fits.read_table(path, ["flops", "loss"])
    assert e.value.problems == [
        f"{path} row 2: loss is 'abc', not a number",
        f"{path} row 3: loss is 0; it must be positive",
    ]
    path = write_csv(tmp_path / "nan.csv", {"flops": [1e15, "inf"], "loss": [3.1, "nan"]})
    with pytest.raises(ConfigError) as e:
        fits.read_table(path, ["flops", "loss"])
    assert e.value.problems == [
        f"{path} row 2: flops is inf, not a finite number",
        f"{path} row 2: loss is nan, not a finite number",
    ]
    path = write_csv(tmp_path / "empty.csv", {"flops": [], "loss": []})
    with pytest.raises(ConfigError) as e:
        fits.read_table(path, ["flops", "loss"])
    assert one_problem(e) == f"{path} has a header but no rows"
    with pytest.raises(ConfigError) as e:
        fits.read_table(tmp_path / "none.csv", ["flops"])
    assert one_problem(e) == f"{tmp_path / 'none.csv'}: no such file"


# -- `lm-lab fit` --------------------------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


def test_command_isoflop_end_to_end_with_a_plot(tmp_path):
    path = write_csv(tmp_path / "runs.csv", isoflop_runs())
    args = cli_args(
        "--method", "isoflop", "--input", str(path), "--predict", "1e19", "1e20", "--plot", str(tmp_path / "iso.png")
    )
    result = fits.command(args)
    assert result["plot"] == str(tmp_path / "iso.png")
    image = (tmp_path / "iso.png").read_bytes()
    assert image.startswith(PNG) and len(image) > 20_000
    (tmp_path / "fit.json").write_text(json.dumps(result, allow_nan=False))
    law = load_fit(tmp_path / "fit.json")
    assert law.optimum(1e19) == pytest.approx((result["predictions"][0]["params"], result["predictions"][0]["tokens"]))
    assert law.optimum(1e19)[0] == pytest.approx(0.1 * 1e19**0.5, rel=0.02)


def test_command_parametric_end_to_end_with_a_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(fits, "GRID", SMALL_GRID)  # the paper's 4500 starts take ~20 s; the small grid finds it too
    path = write_csv(tmp_path / "runs.csv", parametric_runs(count=80))
    args = cli_args(
        "--method", "parametric", "--input", str(path), "--bootstrap", "5", "--plot", str(tmp_path / "p.png")
    )
    result = fits.command(args)
    image = (tmp_path / "p.png").read_bytes()
    assert image.startswith(PNG) and len(image) > 20_000
    (tmp_path / "fit.json").write_text(json.dumps(result, allow_nan=False))
    law = load_fit(tmp_path / "fit.json")
    assert (law.E, law.A, law.B, law.alpha, law.beta) == tuple(result[k] for k in ("E", "A", "B", "alpha", "beta"))
    assert law.alpha == pytest.approx(TRUTH.alpha, abs=0.05)
    assert set(result["ci"]) == {"E", "A", "B", "alpha", "beta", "a", "b"}


def test_command_hyperparams_end_to_end_with_a_plot(tmp_path):
    path = write_csv(tmp_path / "best.csv", hyperparam_runs())
    args = cli_args(
        "--method", "hyperparams", "--input", str(path), "--predict", "1e19", "--plot", str(tmp_path / "h.png")
    )
    result = fits.command(args)
    json.dumps(result, allow_nan=False)
    assert (tmp_path / "h.png").read_bytes().startswith(PNG)
    assert result["predictions"][0]["model"]["lr"] == 1e-3


def test_command_flags_and_refusals(tmp_path):
    args = cli_args("--method", "isoflop", "--input", "x.csv")
    assert (args.predict, args.robust, args.bootstrap, args.plot, args.seed) == ([], False, 0, None, 0)
    with pytest.raises(SystemExit):
        cli_args("--method", "chinchilla", "--input", "x.csv")
    path = write_csv(tmp_path / "runs.csv", parametric_runs(count=20))
    with pytest.raises(ConfigError) as e:
        fits.command(cli_args("--method", "parametric", "--input", str(path), "--robust"))
    assert one_problem(e) == "--robust applies to --method isoflop, not parametric"
    with pytest.raises(ConfigError) as e:
        fits.command(cli_args("--method", "isoflop", "--input", str(path), "--bootstrap", "10"))
    assert one_problem(e) == "--bootstrap applies to --method parametric, not isoflop"
    with pytest.raises(ConfigError) as e:
        fits.command(cli_args("--method", "parametric", "--input", str(path), "--bootstrap", "-1"))
    assert one_problem(e) == "--bootstrap -1: give a number of resamples >= 0"
    with pytest.raises(ConfigError) as e:
        fits.command(cli_args("--method", "isoflop", "--input", str(path)))
    assert one_problem(e) == f"{path}: no column 'flops' (the columns are params, tokens, loss)"
    with pytest.raises(ConfigError) as e:
        fits.command(cli_args("--method", "isoflop", "--input", str(path), "--predict", "-1"))
    assert one_problem(e) == "--predict -1.0: give positive FLOP budgets"
