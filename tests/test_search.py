"""`lm-lab search`: the space file's checks, the seed-002 strategies on known functions, every sampler on the
synthetic law objective (reproducible, within its FLOP budget), dead-trial recovery, two workers on one study,
and a real training search killed mid-trial and resumed."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from lm_lab.cli import main as cli
from lm_lab.errors import ConfigError
from lm_lab.scaling.search import (
    SAMPLERS,
    Ledger,
    Param,
    Space,
    coordinate_descent,
    minimise,
    random_gradient,
    run_search,
    stale_trials,
)

ROOT = Path(__file__).resolve().parent.parent
optuna.logging.set_verbosity(optuna.logging.WARNING)

# a 2-layer byte-level GPT: small enough for real trials of a few seconds, and a cheap synthetic objective
TINY = [
    "model=gpt2_tiny",
    "model.n_layer=2",
    "model.n_head=2",
    "model.block_size=128",
    "tokenizer=bytes",
    "data=embedded",
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.progress_bar",
    "~logger.tensorboard",
    "train.val_every=20",
    "train.val_tokens=4096",
    "scheduler.warmup_steps=3",
    "callbacks.last_checkpoint.every_n_steps=5",
]
SPACE = {
    "trial_flops": 3.0e10,  # 31 steps at d_model 64, 93 at 32
    "overrides": TINY,
    "params": {
        "optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
        "model.d_model": {"type": "int", "low": 32, "high": 96, "step": 32},
        "train.batch_size": {"type": "categorical", "choices": [4, 8]},
    },
    "synthetic": {"optimizer.lr": {"optimum": 5e-3, "scale": 0.2}},
}
FIT = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}  # Besiroglu et al. 2024


def space(**changes) -> Space:
    return Space.from_dict({**SPACE, **changes}, name="tiny")


@pytest.fixture
def fit_json(tmp_path) -> Path:
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(FIT))
    return path


def env(cache: Path) -> dict:
    return {**os.environ, "LM_LAB_CACHE": str(cache), "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}


# -- the space file --------------------------------------------------------------------------------------------------


def test_every_search_space_of_the_lab_loads_and_composes():
    for path in sorted((ROOT / "conf" / "search").glob("*.yaml")):
        loaded = Space.load(path)
        cfg = loaded.check()  # the first point composes with run.py's config
        assert cfg.budget.name == "flops" and cfg.budget.flops == loaded.trial_flops
    assert Space.load("lr_width").path == str(ROOT / "conf" / "search" / "lr_width.yaml")


def test_a_bad_space_is_refused_one_line_per_problem():
    bad = {
        "trial_flops": -1,
        "overrides": ["trainer=cpu", "budget.flops=1e12"],
        "params": {
            "optimizer.lr": {"type": "float", "low": 0.0, "high": 1e-2, "log": True},
            "model.d_model": {"type": "int", "low": 256, "high": 128},
            "model.n_head": {"type": "choice", "choices": [2, 4]},
            "train.batch_size": {"type": "categorical", "choices": []},
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.2, "spread": 2},
        },
        "synthetic": {"model.dropout": {"optimum": 0.0, "scale": 1.0, "log": True}},
    }
    with pytest.raises(ConfigError) as e:
        Space.from_dict(bad, name="bad")
    assert e.value.problems == [
        "bad: trial_flops=-1 must be a positive number, the FLOPs of every trial (e.g. 1.5e12)",
        "bad: params.optimizer.lr: log=true needs low > 0 (got low=0.0)",
        "bad: params.model.d_model: low=256 must be below high=128",
        "bad: params.model.n_head.type='choice' is unknown; choose one of ['float', 'int', 'categorical']",
        "bad: params.train.batch_size: type categorical needs a non-empty list of choices, e.g. choices: [16, 32]",
        "bad: params.model.dropout.spread is not a setting of a search parameter; known: "
        "['type', 'low', 'high', 'log', 'step', 'choices', 'grid']",
        "bad: overrides set budget.flops, which the search sets itself (each trial runs with budget=flops "
        "budget.flops=trial_flops in DIR/trials/N); remove it",
        "bad: synthetic.model.dropout: log=true needs optimum > 0 (got 0.0)",
    ]


def test_a_key_that_is_not_a_run_setting_is_refused_before_anything_runs(tmp_path):
    params = {**SPACE["params"], "model.width": {"type": "int", "low": 32, "high": 64}}
    with pytest.raises(ConfigError) as e:
        run_search(space(params=params), sampler="random", trials=2, directory=tmp_path, objective="train")
    assert e.value.problems == [
        "tiny: params.model.width is not a run.py setting (no `model.width` in the composed config)"
    ]
    assert not (tmp_path / "trials").exists()
    with pytest.raises(ConfigError, match=r"params.model.d_model: 'wide' is not a valid model.d_model"):
        choices = {**SPACE["params"], "model.d_model": {"type": "categorical", "choices": [32, "wide"]}}
        run_search(space(params=choices), sampler="random", trials=2, objective="law:epoch", storage=None)


# -- the strategies of seed 002 on known functions -------------------------------------------------------------------

LR = Param("optimizer.lr", "float", 1e-5, 1e-1, log=True).values()  # 1e-5 ... 1e-1 in half decades: 9 points


def test_the_drivers_grid_is_log_spaced_for_a_log_range_and_every_value_of_an_int_range():
    assert LR == pytest.approx([10 ** (-5 + 0.5 * i) for i in range(9)], rel=1e-12)
    assert LR[0] == 1e-5 and LR[-1] == 1e-1
    assert Param("model.d_model", "int", 32, 256, step=32).values() == [32, 64, 96, 128, 160, 192, 224, 256]
    assert Param("x", "float", 0.0, 0.2, grid=5).values() == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_coordinate_descent_finds_the_grid_minimum_of_a_separable_objective_and_stops_after_a_quiet_pass():
    def loss(point):
        lr, width = point
        return (math.log10(LR[lr]) + 3) ** 2 + (width - 3) ** 2

    trace = minimise(coordinate_descent([9, 8], start=(0, 7)), loss)
    assert trace.best == ((4, 3), 0.0)  # lr 1e-3, width index 3: the grid minimum
    assert trace.result == {"passes": 2, "converged": True}  # pass 2 moves nothing
    # golden-section bracketing: the start, 3 points on the lr line (bracket [3, 5] after one tie), 4 on the width
    # line, 2 new ones on pass 2's lr line (its width line is all cached): 10 of the 72 points
    assert len(trace.evaluations) == 10
    assert len({p for p, _ in trace.evaluations}) == 10


def test_coordinate_descent_zigzags_on_a_coupled_objective_and_stops_where_no_single_parameter_helps():
    def loss(point):
        a, b = point
        return (a - b) ** 2 + 0.1 * (a + b - 8) ** 2

    trace = minimise(coordinate_descent([11, 11], start=(0, 10)), loss)
    (a, b), best = trace.best
    assert trace.result["converged"] and trace.result["passes"] >= 3  # several passes down the valley
    for i in (0, 1):  # a coordinate-wise minimum: no one-parameter move on the grid helps
        for step in (-1, 1):
            moved = [a, b]
            moved[i] += step
            if 0 <= moved[i] <= 10:
                assert loss(tuple(moved)) >= best
    assert best < loss((0, 10)) / 10


def bowl(point, sizes=(17, 17, 9)):
    centre, weight = (0.75, 0.25, 0.5), (2.0, 1.0, 0.5)
    return sum(w * (i / (k - 1) - c) ** 2 for i, k, c, w in zip(point, sizes, centre, weight, strict=True))


def test_random_gradient_descends_a_convex_objective_reproducibly():
    import numpy as np

    runs = [minimise(random_gradient([17, 17, 9], np.random.default_rng(seed)), bowl) for seed in (0, 0, 1)]
    assert runs[0].evaluations == runs[1].evaluations  # the same seed: the same points
    for trace in runs[::2]:
        start, best = trace.evaluations[0][1], trace.best[1]
        assert best <= 0.01 < start  # from a random start down to near the bottom (0 at (12, 4, 4))
        assert trace.result["converged"]
        assert len(trace.evaluations) < 60  # of 2601 points


def test_a_driver_replays_the_study_waits_for_a_point_another_worker_runs_and_never_repeats_one():
    from lm_lab.scaling.search import Driver

    tiny = space()
    study = optuna.create_study()
    driver = Driver("coordinate", tiny, seed=0)
    kind, start = driver.next(study.trials)
    assert kind == "run" and start == driver.params_of(next(driver.strategy()))
    study.enqueue_trial(start)
    trial = study.ask()  # another worker runs it
    tiny.suggest(trial)
    assert driver.next(study.trials) == ("wait", 0)
    study.tell(trial, 2.0)
    asked = [start]
    for value in (3.0, 1.0, 4.0, 0.5):
        kind, point = Driver("coordinate", tiny, seed=0).next(study.trials)  # a fresh worker: the same next point
        assert kind == "run" and point not in asked
        asked.append(point)
        study.enqueue_trial(point)
        trial = study.ask()
        tiny.suggest(trial)
        study.tell(trial, value)
    assert driver.next(study.trials) == Driver("coordinate", tiny, seed=0).next(study.trials)


# -- every sampler on the synthetic objective ------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_is_reproducible_on_the_law_objective_and_keeps_to_its_flop_budget(sampler, fit_json):
    tiny = space()
    law = f"law:{fit_json}"
    runs = [
        run_search(tiny, sampler=sampler, trials=12, objective=law, noise=0.01, seed=3, storage=None) for _ in range(2)
    ]
    first, again = ([(t.params, t.value) for t in r.study.trials] for r in runs)
    assert first == again and len(first) >= 6  # the same points and losses, in the same order
    best = runs[0].study.best_trial
    assert best.user_attrs["flops"] <= tiny.trial_flops and best.user_attrs["params"] > 0
    points = {json.dumps(p, sort_keys=True) for p, _ in first}
    assert len(points) >= len(first) / 2  # it searched: each trial's own seed, not one point again and again
    # 4.5 trials' worth of FLOPs: four trials, then the fifth would overshoot
    capped = run_search(
        tiny, sampler=sampler, trials=12, objective=law, seed=3, storage=None, budget_flops=4.5 * tiny.trial_flops
    )
    trials = capped.study.trials
    assert capped.stopped == "budget" and len(trials) == 4
    assert sum(t.user_attrs["flops"] for t in trials) <= 4.5 * tiny.trial_flops


def test_the_law_objective_is_the_law_at_the_models_size_and_the_tokens_its_budget_pays_for(fit_json):
    from lm_lab.config import RunConfig, compose
    from lm_lab.models import flops_per_token, param_count
    from lm_lab.scaling.laws import load_fit
    from lm_lab.scaling.search import LawObjective

    tiny = space()
    objective = LawObjective(tiny, load_fit(fit_json))
    point = {"optimizer.lr": 5e-3, "model.d_model": 64, "train.batch_size": 8}
    out = objective(7, point)
    run = RunConfig.from_dict(compose([*tiny.trial_overrides(point), "run_dir=."])).derive()
    n, tokens = param_count(run.model), run.train.max_steps * 8 * 128
    assert out.attrs == {
        "flops": tokens * flops_per_token(run.model, 128),
        "params": n,
        "tokens": tokens,
        "steps": 31,
    }
    assert out.value == pytest.approx(FIT["E"] + FIT["A"] / n ** FIT["alpha"] + FIT["B"] / tokens ** FIT["beta"])
    off = objective(7, {**point, "optimizer.lr": 5e-4})  # a decade off the optimum: + 0.2 nats
    assert off.value == pytest.approx(out.value + 0.2)
    noisy = LawObjective(tiny, load_fit(fit_json), noise=0.1, seed=1)
    assert noisy(7, point).value == noisy(7, point).value != noisy(8, point).value  # seeded by the trial number


def test_invalid_shapes_are_pruned_without_training(tmp_path):
    params = {**SPACE["params"], "model.n_head": {"type": "categorical", "choices": [2, 3]}}
    overrides = [o for o in TINY if not o.startswith("model.n_head=")]
    result = run_search(
        space(params=params, overrides=overrides),
        sampler="random",
        trials=12,
        objective="law:epoch",
        seed=0,
        storage=None,
    )
    pruned = [t for t in result.study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.params["model.n_head"] == 3 and t.params["model.d_model"] != 96 for t in pruned)
    assert "does not divide model.d_model" in pruned[0].user_attrs["reason"]
    assert all("flops" not in t.user_attrs for t in pruned)


# -- storage, dead trials, budgets -----------------------------------------------------------------------------------


def running(number: int, **user_attrs):
    trial = create_trial(state=TrialState.RUNNING, user_attrs=user_attrs)
    trial.number = number
    return trial


def test_a_running_trial_is_stale_when_its_worker_is_gone_or_silent_longer_than_the_grace():
    me = {"host": "node1/boot", "pid": 100, "token": "mine"}
    now = 10_000.0
    trials = [
        running(0, worker={"host": "node1/boot", "pid": 200, "token": "a"}, heartbeat=now - 1),  # pid 200 is dead
        running(1, worker={"host": "node1/boot", "pid": 300, "token": "b"}, heartbeat=now - 1),  # alive
        running(2, worker={"host": "node2/boot", "pid": 200, "token": "c"}, heartbeat=now - 100),  # within grace
        running(3, worker={"host": "node2/boot", "pid": 300, "token": "d"}, heartbeat=now - 200),  # silent
        running(4, worker={"host": "node1/boot", "pid": 100, "token": "old"}, heartbeat=now),  # an earlier me
        running(5, worker=me, heartbeat=now - 10**6),  # mine: never
        create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs={"worker": {"host": "x"}, "heartbeat": 0.0}),
    ]
    stale = stale_trials(trials, now=now, grace=180, worker=me, alive=lambda pid: pid != 200)
    assert [t.number for t, _ in stale] == [0, 3, 4]
    assert stale[0][1] == "its worker (pid 200 on this machine) is gone"
    assert stale[1][1] == "no heartbeat for 200 s (grace 180 s) from node2/boot pid 300"


def test_the_ledger_counts_a_retried_trial_once_and_a_running_one_at_its_full_budget():
    f = 100.0
    trials = [
        create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs={"flops": 90.0}),
        create_trial(state=TrialState.FAIL, user_attrs={}),  # killed, re-queued as trial 3
        create_trial(state=TrialState.PRUNED, user_attrs={}),
        create_trial(
            state=TrialState.COMPLETE,
            value=1.0,
            user_attrs={"flops": 95.0},
            system_attrs={"failed_trial": 1, "retry_history": [1]},
        ),
        create_trial(state=TrialState.FAIL, user_attrs={"flops": 40.0}),  # a non-finite stop at 40%
        running(5),
    ]
    for i, t in enumerate(trials):
        t.number = i
    book = Ledger.of(trials, f)
    assert (book.counted, book.spent, book.committed) == (5, 90 + 95 + 40, 90 + 95 + 40 + 100)


def test_a_running_trial_beats_its_heartbeat_into_the_storage(tmp_path):
    from lm_lab.scaling.laws import LAWS
    from lm_lab.scaling.search import LawObjective

    law = LawObjective(space(), LAWS["epoch"])

    def slow(number, params, run_dir):
        time.sleep(0.6)
        return law(number, params, run_dir)

    result = run_search(
        space(), sampler="random", trials=1, directory=tmp_path, objective=slow, heartbeat_interval=0.1, grace_period=1
    )
    trial = result.study.trials[0]
    started = trial.datetime_start.timestamp()
    assert trial.state == TrialState.COMPLETE
    assert started + 0.3 < trial.user_attrs["heartbeat"] <= trial.datetime_complete.timestamp()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_workers_trial_is_rerun_at_once_with_its_parameters_in_its_run_directory(tmp_path):
    from lm_lab.scaling.search import host_id

    tiny = space()
    first = run_search(tiny, sampler="tpe", trials=2, directory=tmp_path, objective="law:epoch", seed=0)
    assert first.stopped == "trials"
    # a worker that died in trial 2: RUNNING with a fresh heartbeat, its pid gone
    study = first.study
    orphan = study.ask()
    params = tiny.suggest(orphan)
    orphan.set_user_attr("run_dir", str(tmp_path / "trials" / "0002"))
    orphan.set_user_attr("worker", {"host": host_id(), "pid": dead_pid(), "token": "dead"})
    orphan.set_user_attr("heartbeat", time.time())
    again = run_search(tiny, sampler="tpe", trials=4, directory=tmp_path, objective="law:epoch", seed=0)
    trials = again.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    retry = trials[3]
    assert retry.params == params and retry.system_attrs["retry_history"] == [2]
    assert retry.user_attrs["run_dir"] == str(tmp_path / "trials" / "0002")
    assert "run_dir" not in trials[4].user_attrs  # a synthetic trial has no run directory
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 4  # what was asked, the retry counted


def test_ctrl_c_requeues_the_trial_and_the_next_start_finishes_it(tmp_path):
    from lm_lab.scaling.laws import LAWS
    from lm_lab.scaling.search import LawObjective

    tiny = space()
    law = LawObjective(tiny, LAWS["epoch"])
    calls = []

    def interrupted_once(number, params, run_dir):
        calls.append((number, run_dir))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return law(number, params, run_dir)

    stopped = run_search(tiny, sampler="random", trials=3, directory=tmp_path, objective=interrupted_once)
    assert stopped.stopped == "interrupted"
    resumed = run_search(tiny, sampler="random", trials=3, directory=tmp_path, objective=interrupted_once)
    assert resumed.stopped == "trials"
    trials = resumed.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].user_attrs["reason"] == "interrupted" and trials[2].params == trials[1].params
    assert calls[2] == (2, str(tmp_path / "trials" / "0001"))  # the re-run, in the interrupted trial's directory


def test_the_command_resumes_its_study_and_refuses_a_changed_space_or_another_study(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(SPACE))
    cmd = ["search", "--space", str(path), "--sampler", "coordinate", "--trials", "5", "--objective", "law:epoch"]
    cmd += ["--dir", str(tmp_path / "search"), "--budget-flops", "1.5e11"]
    assert cli(cmd) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trials"]["complete"] == 5 and out["stopped"] == "trials" and out["study"] == "tiny"
    assert out["flops"]["spent"] <= 1.5e11 and out["flops"]["per_trial"] == 3e10
    assert out["best"]["value"] == min(
        t.value for t in optuna.load_study(study_name="tiny", storage=_journal(tmp_path / "search")).trials
    )
    assert cli(cmd) == 0  # the same command again: nothing left to do
    assert json.loads(capsys.readouterr().out)["trials"]["complete"] == 5
    path.write_text(json.dumps({**SPACE, "trial_flops": 6e10}))
    assert cli(cmd) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: study 'tiny' was searched in another space (its trial_flops differ from "
        f"{path}); resume it with the same space, or give another --study-name and --dir"
    ]
    assert cli([*cmd, "--study-name", "other"]) == 2
    assert "holds study 'tiny'" in capsys.readouterr().err


def _journal(directory: Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(directory / "study.journal")))


WORKER = """
import json, os, sys, time
from pathlib import Path
from lm_lab.scaling.laws import load_fit
from lm_lab.scaling.search import LawObjective, Space, run_search

directory, storage, fit, me, other, space = sys.argv[1:]
space = Space.from_dict(json.loads(space), name="shared")
law = LawObjective(space, load_fit(fit))

def objective(number, params, run_dir):
    with open(Path(directory) / "markers" / f"{number:04d}", "x") as f:  # a second run of a trial fails here
        f.write(str(os.getpid()))
    while time.time() < deadline and not others_took_a_trial():  # so both workers surely take trials
        time.sleep(0.01)
    time.sleep(0.05)
    return law(number, params, run_dir)

def others_took_a_trial():
    return any(m.read_text() != str(os.getpid()) for m in (Path(directory) / "markers").iterdir())

(Path(directory) / "markers").mkdir(parents=True, exist_ok=True)
Path(me).touch()
deadline = time.time() + 120
while not Path(other).exists() and time.time() < deadline:  # start together
    time.sleep(0.01)
result = run_search(space, sampler="tpe", trials=20, directory=directory, storage=storage, objective=objective, seed=1)
print(result.stopped)
"""


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["study.journal", "study.db"])
def test_two_workers_on_one_study_never_run_a_trial_twice(tmp_path, fit_json, storage, cache_dir):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    search, ready = tmp_path / "search", (tmp_path / "a", tmp_path / "b")
    cmds = [
        [sys.executable, str(script), str(search), str(search / storage), str(fit_json), str(me), str(other)]
        + [json.dumps(SPACE)]
        for me, other in (ready, ready[::-1])
    ]
    procs = [
        subprocess.Popen(c, cwd=ROOT, env=env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in cmds
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
        assert out.decode().split() == ["trials"]
    url = _journal(search) if storage.endswith(".journal") else f"sqlite:///{search / storage}"
    trials = optuna.load_study(study_name="shared", storage=url).trials
    assert [t.number for t in trials] == list(range(20))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    markers = {int(p.name): int(p.read_text()) for p in (search / "markers").iterdir()}
    assert sorted(markers) == list(range(20))  # each trial ran exactly once (a second open(..., "x") fails)
    assert set(markers.values()) == {p.pid for p in procs}  # and both workers took trials
    assert {t.number: t.user_attrs["worker"]["pid"] for t in trials} == markers


# -- a real search, killed mid-trial and resumed ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_training_search_killed_mid_trial_resumes_the_killed_trial_from_its_checkpoint(tmp_path, cache_dir):
    path = tmp_path / "tiny.yaml"
    params = {  # widths 64 and 96: 31 and 16 steps, a few seconds each
        "optimizer.lr": SPACE["params"]["optimizer.lr"],
        "model.d_model": {"type": "int", "low": 64, "high": 96, "step": 32},
    }
    path.write_text(json.dumps({**SPACE, "overrides": [*TINY, "train.batch_size=8"], "params": params}))
    search = tmp_path / "search"
    cmd = [sys.executable, "-m", "lm_lab.cli", "search", "--space", str(path), "--sampler", "random", "--trials", "2"]
    cmd += ["--dir", str(search), "--seed", "0"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env(cache_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    ckpt = search / "trials" / "0001" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not ckpt.exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the search and its data workers, mid-trial 1
    err = proc.communicate()[1].decode()
    assert ckpt.exists(), err[-3000:]
    first = search / "trials" / "0000" / "results.json"
    assert first.exists() and not (search / "trials" / "0001" / "results.json").exists()
    mtime = first.stat().st_mtime_ns
    again = subprocess.run(cmd, cwd=ROOT, env=env(cache_dir), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    out = json.loads(again.stdout)
    assert out["trials"] == {"complete": 2, "failed": 0, "retried": 1, "pruned": 0, "running": 0, "waiting": 0}
    assert first.stat().st_mtime_ns == mtime  # trial 0 was not trained again
    killed = json.loads((search / "trials" / "0001" / "results.json").read_text())
    assert killed["starts"] == 2 and killed["stop_reason"] == "budget"  # resumed from its checkpoint, finished
    assert sorted(p.name for p in (search / "trials").iterdir()) == ["0000", "0001"]  # no directory for trial 2
    study = optuna.load_study(study_name="tiny", storage=_journal(search))
    t = study.trials
    assert [x.state for x in t] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert t[2].params == t[1].params and t[2].user_attrs["run_dir"] == str(search / "trials" / "0001")
    assert t[2].value == killed["val_loss"] and t[2].user_attrs["flops"] == killed["flops"]
    assert "its worker (pid" in again.stderr  # recovered at once, without waiting for the grace period
