"""`lm-lab sweep isoflop` (an IsoFLOP grid as one Hydra multirun) and `lm-lab sweep cooldowns` (scaling-law
points from cooldowns forked off one constant-LR run, Hägele et al. 2024 §4), end to end on tiny models."""

import csv
import json
import math
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lm_lab.cli import main as cli
from lm_lab.config import RunConfig, compose
from lm_lab.models import flops_per_token, param_count
from lm_lab.results import Results
from lm_lab.scaling.laws import LAWS
from lm_lab.scaling.sweep import cooldown_accounting, fork_plan, isoflop_shapes, isoflop_targets

TINY = [
    "tokenizer=bytes",
    "data=embedded",
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "train.seq_len=64",
    "train.batch_size=8",
    "train.micro_batch_size=8",
    "train.val_tokens=4096",
    "scheduler.warmup_steps=5",
]


@pytest.fixture(autouse=True)
def _cache(cache_dir, monkeypatch):
    monkeypatch.setenv("LM_LAB_CACHE", str(cache_dir))


def test_isoflop_targets_span_a_factor_of_four_each_way():
    targets = isoflop_targets(1e6, 5)
    assert targets == pytest.approx([2.5e5, 5e5, 1e6, 2e6, 4e6])
    shapes = isoflop_shapes(1e13, LAWS["chinchilla"], 5, vocab_size=257, seq_len=128, head_dim=16)
    counts = [param_count(s) for s in shapes]
    n_opt = math.sqrt(1e13 / 120)  # C = 6 N D with D = 20 N
    assert counts == sorted(counts) and len(set(counts)) == 5
    assert 0.2 < counts[0] / n_opt < 0.3 and 3.5 < counts[-1] / n_opt < 4.5
    assert all(s.d_model % s.n_head == 0 and s.d_model // s.n_head == 16 for s in shapes)


def test_isoflop_dry_run_derives_each_points_steps_from_its_budget(capsys):
    assert (
        cli(["sweep", "isoflop", "--budgets", "1e11,3e11", "--points", "3", "--head-dim", "16", "--dry-run", *TINY])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [p["flops"] for p in out["points"]] == [1e11] * 3 + [3e11] * 3
    for p in out["points"]:  # each point's steps are what run.py derives from its budget
        cfg = compose(
            [
                "experiment=isoflop",
                *TINY,
                f"model.n_layer={p['n_layer']}",
                f"model.n_head={p['n_head']}",
                f"model.d_model={p['d_model']}",
                "model.d_ff=null",
                "model.block_size=64",
                f"budget.flops={p['flops']}",
            ]
        )
        run = RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True)).derive()
        assert param_count(run.model) == p["params"]
        per_token = flops_per_token(run.model, 64)  # 6N + 12LTd (tests/test_fit.py checks it from first principles)
        assert p["steps"] == run.train.max_steps == math.floor(p["flops"] / (per_token * 8 * 64))
    assert "+isoflop_point=p00,p01,p02,p03,p04,p05" in out["command"]


def test_isoflop_refusals(capsys):
    assert cli(["sweep", "isoflop", "--budgets", "1e11", "--points", "2", "--dry-run", *TINY]) == 2
    assert "--points 2: an IsoFLOP parabola needs at least 3" in capsys.readouterr().err
    assert cli(["sweep", "isoflop", "--budgets", "1e8", "--points", "3", "--head-dim", "16", "--dry-run", *TINY]) == 2
    assert capsys.readouterr().err == (
        "error: budget 1e+08: only 1 distinct shapes with head size 16 span x1/4 to x4 of N_opt; lower --head-dim or "
        "raise --span\n"
    )
    args = ["sweep", "isoflop", "--budgets", "1e11", "--points", "3", "--head-dim", "16", "--dry-run", *TINY]
    assert cli([*args, "scheduler.warmup_steps=2000"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 2 and all(
        re.match(r"error: point \d+x\d+ at 1e\+11 FLOPs: scheduler.warmup_steps=2000 exceeds train.max_steps=\d+", line)
        for line in lines
    )


@pytest.mark.slow
def test_isoflop_sweep_runs_as_one_multirun_that_report_reads(tmp_path, capsys):
    """One budget x 3 sizes through `python run.py -m` (a subprocess, as a cluster launcher would run it), then
    `lm-lab report --csv`: one row per point at the budget."""
    sweep = tmp_path / "sweep"
    args = ["sweep", "isoflop", "--budgets", "2e10", "--points", "3", "--head-dim", "16", "--dir", str(sweep)]
    assert cli([*args, *TINY, "train.val_every=1000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    assert cli(["report", str(sweep), "--csv", str(tmp_path / "runs.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "runs.csv").read_text().splitlines()))
    assert sorted(int(r["params"]) for r in rows) == [p["params"] for p in out["points"]]
    for r in rows:
        assert float(r["flops"]) == 2e10 and r["stop_reason"] == "budget"
        assert float(r["flops_spent"]) <= 2e10 and math.isfinite(float(r["loss"]))
    assert {int(r["steps"]) for r in rows} == {p["steps"] for p in out["points"]}


def test_fork_plan_and_accounting():
    assert fork_plan([100, 50, 200], 0.2) == [(50, 40, 10), (100, 80, 20), (200, 160, 40)]
    # stable run to 160 steps + cooldowns of 10, 20, 40: the longest run + 20% of the others (§4.1)
    per_step = 1e9
    points = [{"flops": t * per_step, "steps": t, "fork_step": f} for t, f, _ in fork_plan([50, 100, 200], 0.2)]
    out = cooldown_accounting(points, 160 * per_step)
    assert out["flops"] == pytest.approx((200 + 0.2 * (50 + 100)) * per_step)
    assert out["flops_independent"] == pytest.approx(350 * per_step)
    assert out["saving"] == pytest.approx(1 - 230 / 350)


@pytest.mark.slow
def test_cooldown_sweep_gathers_points_the_parametric_fit_reads(tmp_path, capsys):
    args = ["sweep", "cooldowns", "--models", "1x32x2,2x32x2", "--lengths", "20,40", "--frac", "0.25", "--warmup", "5"]
    assert cli([*args, "--dir", str(tmp_path), *TINY, "train.val_every=10"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(Path(out["csv"]).read_text().splitlines()))
    assert [(r["model"], int(r["steps"]), int(r["fork_step"])) for r in rows] == [
        ("1x32x2", 20, 15),
        ("1x32x2", 40, 30),
        ("2x32x2", 20, 15),
        ("2x32x2", 40, 30),
    ]
    for r in rows:
        fork = Results.load(r["run"])
        assert fork.init == "fork" and fork.steps == int(r["steps"]) and fork.tokens == int(r["tokens"])
        assert float(r["loss"]) == fork.val_loss and int(r["params"]) == fork.params
    stable = Results.load(tmp_path / "1x32x2" / "stable")
    assert stable.steps == 30  # to the last fork point only
    acc = out["accounting"]["per_model"]["1x32x2"]
    per_step = stable.flops / 30
    assert acc["flops"] == pytest.approx((30 + 5 + 10) * per_step)
    assert acc["flops_independent"] == pytest.approx((20 + 40) * per_step)
