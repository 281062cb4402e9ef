"""Cooldown forks (Hägele et al. 2024 §3): one stable run plus short cooldowns forked from its checkpoints equal,
bit for bit on CPU, single WSD runs whose cooldowns start at the fork step."""

import csv
import json
from pathlib import Path

import pytest
import torch

from lm_lab.cli import main as cli
from lm_lab.config import compose
from lm_lab.launch import fit_from_config

COMMON = [
    "experiment=smoke",
    "trainer=cpu",
    "model.dropout=0.1",
    "scheduler.warmup_steps=5",
    "train.val_every=5",
    "~callbacks.progress_bar",
    "trainer.enable_progress_bar=false",
    "+callbacks.losses._target_=tests.helpers.LossRecorder",
    "+callbacks.losses.path=${run_dir}/losses.jsonl",
]


@pytest.fixture(autouse=True)
def _cache(cache_dir, monkeypatch):
    monkeypatch.setenv("LM_LAB_CACHE", str(cache_dir))


def run(args: list[str], run_dir: Path):
    """`python run.py ARGS hydra.run.dir=RUN_DIR`, in this process."""
    results = fit_from_config(compose([*args, f"run_dir={run_dir}"]), args)
    assert results.stop_reason == "max_steps", results.failure
    return results


def records(run_dir: Path) -> dict[int, dict]:
    out = {}
    for line in (run_dir / "losses.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec
    return out


@pytest.mark.slow
def test_cooldown_forks_equal_single_wsd_runs(tmp_path, capsys):
    stable = tmp_path / "stable"
    run(
        [
            *COMMON,
            "scheduler=constant",
            "train.max_steps=20",
            "callbacks=with_snapshots",
            "callbacks.snapshots.every_n_train_steps=5",
        ],
        stable,
    )
    assert (stable / "checkpoints" / "step10.ckpt").exists()
    capsys.readouterr()
    assert cli(["cooldowns", str(stable), "--step", "10", "--lengths", "4,7", *COMMON[-2:]]) == 0
    summary = json.loads(capsys.readouterr().out)
    with open(summary["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["cooldown_steps"]), int(r["steps"])) for r in rows] == [(4, 14), (7, 17)]
    for n in (4, 7):
        single = tmp_path / f"single{n}"
        run(
            [
                *COMMON,
                "scheduler=wsd",
                f"scheduler.cooldown_steps={n}",
                f"train.max_steps={10 + n}",
                "scheduler.final_lr_frac=0.0",
            ],
            single,
        )
        fork = Path(summary["sweep"]) / f"cooldown{n}"
        mine, theirs = records(fork), records(single)
        assert sorted(mine) == list(range(11, 11 + n))  # the fork trains steps 11 .. 10 + n
        for step in mine:  # the same LR and loss at every step, to the last bit
            assert mine[step]["lr"] == theirs[step]["lr"] and mine[step]["loss"] == theirs[step]["loss"]
        assert theirs[10 + n]["lr"] == 0.0 and theirs[10]["lr"] == 1e-3  # cooldown from the peak to 0
        a = torch.load(fork / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        b = torch.load(single / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)
        results = json.loads((fork / "results.json").read_text())
        assert results["val_loss"] == json.loads((single / "results.json").read_text())["val_loss"]
        assert float(rows[(4, 7).index(n)]["val_loss"]) == results["val_loss"]


@pytest.mark.slow
def test_a_resume_right_after_a_plateau_cut_continues_exactly(tmp_path):
    """Reduce-on-plateau cuts the LR at a validation; a run resumed from the checkpoint written right after it
    trains the next steps with the same (cut) LR and loss as the uninterrupted run."""
    # every validation "stalls" (no 90% improvement): the LR halves at each one
    plateau = [
        "scheduler=constant",
        "scheduler.plateau_factor=0.5",
        "scheduler.plateau_patience=1",
        "scheduler.plateau_threshold=0.9",
    ]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run([*COMMON, *plateau, "train.max_steps=20"], whole)
    run([*COMMON, *plateau, "train.max_steps=10"], resumed)
    run([*COMMON, *plateau, "train.max_steps=20"], resumed)  # resumes at step 10
    mine, theirs = records(resumed), records(whole)
    assert theirs[11]["lr"] == pytest.approx(theirs[6]["lr"] / 2)  # cut at the validation of step 10
    for step in range(11, 21):
        assert mine[step]["lr"] == theirs[step]["lr"] and mine[step]["loss"] == theirs[step]["loss"]
