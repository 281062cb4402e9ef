"""Windowed SWA (Hägele et al. 2024 §5, their code's `WeightAverager`): the window means against their definition
on a known weight sequence, the callback in a real Lightning run, the settings' checks, and an exact resume."""

import io
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from callbacks import AveragedWeights, LastCheckpoint
from lm_lab.checkpoint import read_checkpoint
from lm_lab.config import RunConfig, compose
from lm_lab.errors import ConfigError
from lm_lab.module import LMModule
from lm_lab.optim import OptimizerConfig, SchedulerConfig
from lm_lab.optim.averaging import AveragingConfig, WindowedSWA
from lm_lab.results import Results
from lm_lab.train import fit
from tests.test_faults import KillAfterSave, Killed, averaging_run
from tests.test_optim import TINY, Snapshots, Windows, tiny_trainer


def sequence(t: int) -> dict[str, torch.Tensor]:
    """The weights after step t: distinct squares, so every mean below is exact in float32."""
    return {"w": torch.tensor([t * t, -2.0 * t]), "b": torch.tensor([float(t)])}


def test_window_means_equal_their_definition_on_a_known_sequence():
    # horizon 4, every 2 steps: windows sample t = 0, 2 | 4, 6 | 8, 10 and complete after t = 3, 7, 11
    avg = WindowedSWA(horizon=4, interval=2, windows=2)
    closed = [t for t in range(12) if avg.update(t, sequence(t))]
    assert closed == [3, 7, 11] and avg.closed == 3
    # window means of w[0]: (0 + 4) / 2 = 2, (16 + 36) / 2 = 26, (64 + 100) / 2 = 82; the last two kept
    assert [m["w"][0].item() for m in avg.completed] == [26.0, 82.0]
    scored = avg.scored()
    assert scored["w"].tolist() == [(26 + 82) / 2, -2.0 * 7] and scored["b"].tolist() == [7.0]  # t = 4, 6, 8, 10
    # step by step: nothing before the first window completes, then the mean of the completed ones (one, then two)
    avg = WindowedSWA(horizon=4, interval=2, windows=2)
    seen = {}
    for t in range(9):
        avg.update(t, sequence(t))
        seen[t] = None if avg.scored() is None else avg.scored()["w"][0].item()
    assert seen == {0: None, 1: None, 2: None, 3: 2.0, 4: 2.0, 5: 2.0, 6: 2.0, 7: 14.0, 8: 14.0}
    assert avg.count == 1 and avg.running["w"][0].item() == 64.0  # the third window restarted at t = 8
    # one window (the default): the latest completed one only
    one = WindowedSWA(horizon=4, interval=2)
    for t in range(12):
        one.update(t, sequence(t))
    assert one.scored()["w"][0].item() == 82.0 and len(one.completed) == 1


def test_window_means_of_every_step_are_plain_means():
    torch.manual_seed(0)
    seq = [{"x": torch.randn(5)} for _ in range(14)]
    avg = WindowedSWA(horizon=3, interval=1, windows=3)
    for t, w in enumerate(seq):
        avg.update(t, w)
    # completed windows: t 0-2, 3-5, 6-8, 9-11; the last three are t 3..11; t 12, 13 are the open window
    torch.testing.assert_close(avg.scored()["x"], torch.stack([w["x"] for w in seq[3:12]]).mean(0))
    torch.testing.assert_close(avg.running["x"], torch.stack([seq[12]["x"], seq[13]["x"]]).mean(0))
    assert avg.scored() is not avg.completed[-1]  # a copy: scoring leaves the windows as they are


def test_window_state_restores_and_continues_the_same_means():
    whole, first = WindowedSWA(4, 2, 2), WindowedSWA(4, 2, 2)
    for t in range(14):
        whole.update(t, sequence(t))
    for t in range(9):  # stopped in the middle of a window
        first.update(t, sequence(t))
    saved = io.BytesIO()  # through torch.save and a weights_only load, as in a checkpoint
    torch.save(first.state_dict(), saved)
    saved.seek(0)
    resumed = WindowedSWA(4, 2, 2)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    for t in range(9, 14):
        resumed.update(t, sequence(t))
    assert resumed.closed == whole.closed and resumed.count == whole.count
    for a, b in zip(resumed.completed + [resumed.running], whole.completed + [whole.running], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)
    with pytest.raises(ConfigError, match="horizon=4, every_n_steps=2, this run's horizon=6"):
        WindowedSWA(6, 2).load_state_dict(first.state_dict())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kind": "swa", "horizon": 0}, r"callbacks\.swa\.horizon=0 must be a positive integer"),
        ({"kind": "swa", "horizon": 7, "every_n_steps": 2}, r"callbacks\.swa\.horizon=7 must be a multiple of every"),
        ({"kind": "ema", "horizon": 500}, r"callbacks\.swa\.horizon=500 is for kind=swa"),
        ({"kind": "swa", "horizon": 4, "windows": 0}, r"callbacks\.swa\.windows=0 must be an integer >= 1"),
        ({"kind": "swa", "windows": 3}, r"callbacks\.swa\.windows=3 averages completed windows: set a horizon"),
        ({"kind": "swa", "label": "swa/w"}, r"callbacks\.swa\.label='swa/w' must be letters, digits and _"),
    ],
)
def test_bad_window_settings_name_the_field(values, message):
    problems = AveragingConfig.problems("callbacks.swa", values)
    assert len(problems) == 1 and re.search(message, problems[0]), problems
    with pytest.raises(ConfigError):
        AveragedWeights(**values)


def test_the_windowed_config_composes_and_a_bad_horizon_is_refused_before_any_work():
    plain = OmegaConf.to_container(compose(["callbacks=with_swa_windows"]), resolve=True)
    assert plain["callbacks"]["swa"]["horizon"] == 500
    RunConfig.from_dict(plain)
    plain["callbacks"]["swa"]["horizon"] = 498
    with pytest.raises(ConfigError, match=r"callbacks\.swa\.horizon=498 must be a multiple of every_n_steps=5"):
        RunConfig.from_dict(plain)
    exp = OmegaConf.to_container(compose(["experiment=swa"]), resolve=True)["callbacks"]
    assert exp["swa"]["horizon"] == 500 and exp["swa_cumulative"]["label"] == "swa_cumulative"


class ScoredAt(L.Callback):
    """Which averages each validation scored, by step."""

    def __init__(self):
        self.seen = {}

    def on_validation_end(self, trainer, pl_module):
        self.seen[trainer.global_step] = sorted(k for k in trainer.callback_metrics if k.startswith("val/loss_"))


def test_the_callback_scores_the_latest_windows_in_a_real_run(tmp_path):
    torch.manual_seed(0)
    module = LMModule(TINY, OptimizerConfig(lr=1e-2), SchedulerConfig(name="constant", warmup_steps=0), max_steps=12)
    windowed = AveragedWeights(kind="swa", start_step=2, every_n_steps=2, horizon=4, windows=2)
    cumulative = AveragedWeights(kind="swa", start_step=2, every_n_steps=2, label="swa_cumulative")
    snaps, probe = Snapshots(), ScoredAt()
    trainer = tiny_trainer(tmp_path, [snaps, windowed, cumulative, probe], steps=12)
    trainer.fit(module, datamodule=Windows())
    # step indices from start_step 2: windows sample 2, 4 | 6, 8 | 10 and complete after 5 and 9; 10, 11 are open
    expected = [torch.stack(ps).mean(0) for ps in zip(*(snaps.params[i] for i in (2, 4, 6, 8)), strict=True)]
    for e, a in zip(expected, windowed._average_model.module.parameters(), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)
    assert windowed._average_model.n_averaged.item() == 4
    every = [torch.stack(ps).mean(0) for ps in zip(*(snaps.params[i] for i in (2, 4, 6, 8, 10)), strict=True)]
    for e, a in zip(every, cumulative._average_model.module.parameters(), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)  # the cumulative one beside it is unchanged
    # validations after steps 3, 6, 9, 12: the first window completes with step 6 (index 5); before, nothing is scored
    assert probe.seen == {
        3: ["val/loss_swa_cumulative"],
        6: ["val/loss_swa", "val/loss_swa_cumulative"],
        9: ["val/loss_swa", "val/loss_swa_cumulative"],
        12: ["val/loss_swa", "val/loss_swa_cumulative"],
    }
    raw = trainer.callback_metrics
    assert len({float(raw[k]) for k in ("val/loss", "val/loss_swa", "val/loss_swa_cumulative")}) == 3
    assert windowed.state_key != cumulative.state_key
    assert AveragedWeights(kind="swa").state_key == "AveragedWeights{'kind': 'swa'}"  # older checkpoints' key


def windowed_callbacks(run_dir: Path) -> list:
    """Checkpoints every 5 steps, a windowed SWA (windows of 4 steps sampled every 2 from step 1, the last two
    scored) and a cumulative one beside it."""
    return [
        LastCheckpoint(dirpath=str(run_dir / "checkpoints"), every_n_steps=5, every_minutes=None),
        AveragedWeights(kind="swa", start_step=1, every_n_steps=2, horizon=4, windows=2),
        AveragedWeights(kind="swa", start_step=1, every_n_steps=2, label="swa_cumulative"),
    ]


@pytest.mark.slow
def test_a_run_killed_mid_window_resumes_the_windows_bit_exact(tmp_path, cache_dir):
    """20 steps straight against 15 steps, a kill right after the step-15 checkpoint (step index 14: inside the
    window of indices 13-16) and a fresh start that resumes it: the same windows, averages and scores."""
    straight = tmp_path / "straight"
    fit(averaging_run(cache_dir), straight, callbacks=windowed_callbacks(straight))
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        fit(
            averaging_run(cache_dir),
            run_dir,
            callbacks=windowed_callbacks(run_dir),
            checkpoint_io=KillAfterSave("last", 15),
        )
    at_kill = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert at_kill["global_step"] == 15 and at_kill["averaged_windows_swa"]["count"] == 1  # mid-window
    fit(averaging_run(cache_dir), run_dir, callbacks=windowed_callbacks(run_dir))
    mine, theirs = (read_checkpoint(d / "checkpoints" / "last.ckpt") for d in (run_dir, straight))
    assert mine["global_step"] == theirs["global_step"] == 20
    for key in ("state_dict", "averaged_state_dict_swa", "averaged_state_dict_swa_cumulative"):
        assert mine[key].keys() == theirs[key].keys()
        assert all(torch.equal(mine[key][k], theirs[key][k]) for k in mine[key]), key
    a, b = mine["averaged_windows_swa"], theirs["averaged_windows_swa"]
    assert (a["count"], a["closed"], len(a["completed"])) == (b["count"], b["closed"], 2) == (2, 4, 2)
    for x, y in zip([*a["completed"], a["running"]], [*b["completed"], b["running"]], strict=True):
        assert all(torch.equal(x[k], y[k]) for k in y)
    ra, rb = Results.load(run_dir), Results.load(straight)
    assert ra.val_loss_swa == rb.val_loss_swa is not None and ra.val_loss == rb.val_loss
