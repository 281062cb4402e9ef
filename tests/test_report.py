"""`lm-lab report`: runs found under a folder, the fields that differ, seeds grouped with their spread, and
settings compared against seed noise (Welch's t-test). Run folders are written by hand here (results.json +
config.yaml exactly as fit() writes them); the real multirun path is in tests/test_sweeps.py."""

import csv
import json
import math
import statistics

import numpy as np
import pytest
import yaml
from scipy import stats

from lm_lab.cli import main as cli
from lm_lab.config import RunConfig
from lm_lab.results import Results
from lm_lab.scaling.report import report, seed_stats, welch


def write_run(folder, *, loss, seed, dropout=0.0, lr=1e-3, stop="max_steps", budget_flops=None, params=1000):
    """A run folder as fit() leaves it: config.yaml (the whole RunConfig) and results.json (every key)."""
    run = RunConfig().to_dict()
    run["model"]["dropout"], run["optimizer"]["lr"], run["train"]["seed"] = dropout, lr, seed
    run["run_dir"] = str(folder)  # where a run lives is not a setting
    run["data"]["cache_dir"] = str(folder / "cache")
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(run))
    values = dict.fromkeys(Results.json_keys())
    values.update(
        val_loss=loss,
        val_step=100,
        steps=100 if stop == "max_steps" else 50,
        tokens=100 * 4096,
        stop_reason=stop,
        flops=6.0 * params * 100 * 4096,
        flops_chinchilla=7.0 * params * 100 * 4096,
        params=params,
        budget_flops=budget_flops,
        budget_flop_count="6n" if budget_flops else None,
        seed=seed,
        lr=lr,
        skipped_steps=0,
        overrides=[],
    )
    (folder / "results.json").write_text(json.dumps(values))


def test_fields_that_differ_and_seed_groups(tmp_path):
    losses = {0.0: [3.10, 3.12, 3.14], 0.1: [3.20, 3.21, 3.25]}
    for dropout, values in losses.items():
        for seed, loss in enumerate(values):
            write_run(tmp_path / f"d{dropout}" / f"s{seed}", loss=loss, seed=seed, dropout=dropout)
    out = report(tmp_path)
    assert out["fields"] == ["model.dropout", "train.seed"]  # run_dir and cache_dir are not settings
    assert len(out["runs"]) == 6 and [g["model.dropout"] for g in out["groups"]] == [0.0, 0.1]
    for g in out["groups"]:
        values = losses[g["model.dropout"]]
        s = g["val_loss"]
        assert s["n"] == 3 and s["mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert s["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        half = stats.t.ppf(0.975, 2) * s["sd"] / math.sqrt(3)  # 4.30 sd / sqrt(3), not 1.96
        assert s["ci95"] == pytest.approx([s["mean"] - half, s["mean"] + half], abs=1e-12)
        assert g["seeds"] == [0, 1, 2]


def test_welch_flags_a_planted_difference_and_not_a_null_one(tmp_path):
    rng = np.random.default_rng(0)
    for dropout, shift in ((0.0, 0.0), (0.1, 0.05), (0.2, 0.0)):  # 0.1 is 5 sd worse; 0.2 is the same as 0.0
        for seed in range(5):
            loss = 3.0 + shift + 0.01 * rng.standard_normal()
            write_run(tmp_path / f"d{dropout}_s{seed}", loss=float(loss), seed=seed, dropout=dropout)
    out = report(tmp_path, by=["model.dropout"])
    verdicts = {c["other"]: c for c in out["comparisons"]["model.dropout"]}
    best = out["comparisons"]["model.dropout"][0]["best"]
    assert best in (0.0, 0.2) and set(verdicts) == {0.0, 0.1, 0.2} - {best}
    planted = verdicts[0.1]
    assert planted["verdict"] == "significant" and planted["p_value"] < 1e-4
    assert planted["difference"] == pytest.approx(0.05, abs=0.02)
    null = verdicts[({0.0, 0.2} - {best}).pop()]
    assert null["verdict"] == "within seed noise" and null["p_value"] > 0.05
    # the p-value is Welch's (unequal variances), not Student's
    a, b = [1.0, 1.1, 1.2, 1.3], [1.0, 1.0, 1.01, 1.02]
    assert welch(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch(a, b) != pytest.approx(stats.ttest_ind(a, b).pvalue)
    assert welch([1.0], b) is None


def test_comparisons_stay_within_the_other_fields(tmp_path):
    """dropout compared at each lr separately: an lr effect is never read as a dropout effect."""
    for lr, base in ((1e-3, 3.0), (3e-3, 2.5)):
        for dropout in (0.0, 0.1):
            for seed in range(3):
                write_run(
                    tmp_path / f"{lr}_{dropout}_{seed}", loss=base + 0.001 * seed, seed=seed, dropout=dropout, lr=lr
                )
    comparisons = report(tmp_path, by=["model.dropout"])["comparisons"]["model.dropout"]
    assert len(comparisons) == 2 and {c["context"]["optimizer.lr"] for c in comparisons} == {1e-3, 3e-3}
    assert all(c["difference"] == pytest.approx(0.0, abs=1e-12) for c in comparisons)


def test_csv_feeds_the_fits_and_leaves_unfinished_runs_out(tmp_path, capsys):
    for i, params in zip((2, 9, 10), (1000, 2000, 4000), strict=True):  # folders of a multirun: 10 after 9
        write_run(tmp_path / "sweep" / str(i), loss=3.0 - 0.01 * i, seed=0, params=params, budget_flops=1e12)
    write_run(tmp_path / "sweep" / "11", loss=2.0, seed=1, stop="interrupted")
    assert cli(["report", str(tmp_path / "sweep"), "--csv", str(tmp_path / "runs.csv")]) == 0
    text = capsys.readouterr().out
    assert "not finished (left out of the CSV): 11" in text and "3 rows written" in text
    rows = list(csv.DictReader((tmp_path / "runs.csv").read_text().splitlines()))
    assert [r["run"] for r in rows] == ["2", "9", "10"]
    assert [float(r["flops"]) for r in rows] == [1e12] * 3  # the budget, not the FLOPs each spent
    assert [int(r["params"]) for r in rows] == [1000, 2000, 4000]
    assert [float(r["loss"]) for r in rows] == [2.98, 2.91, 2.9]
    assert float(rows[0]["flops_spent"]) == 6.0 * 1000 * 100 * 4096


def test_refusals_are_one_line(tmp_path, capsys):
    assert cli(["report", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    (tmp_path / "empty").mkdir()
    assert cli(["report", str(tmp_path / "empty")]) == 2
    assert "no lm_lab runs under" in capsys.readouterr().err
    write_run(tmp_path / "one" / "a", loss=3.0, seed=0)
    write_run(tmp_path / "one" / "b", loss=3.1, seed=1)
    assert cli(["report", str(tmp_path / "one"), "--by", "model.dropout"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --by model.dropout: the runs do not differ in it; fields that differ: train.seed")


def test_seed_stats_edges():
    assert seed_stats([]) == {"mean": None, "sd": None, "n": 0, "ci95": None}
    assert seed_stats([2.5]) == {"mean": 2.5, "sd": None, "n": 1, "ci95": None}
