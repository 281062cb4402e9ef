"""Nothing lost: a run killed at any moment and started again with the same command ends exactly where an
uninterrupted run ends (bit-exact on CPU); checkpoints are atomic and checked; non-finite values stop or skip."""

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lm_lab.checkpoint import read_checkpoint, resume_checkpoint, rng_state, set_rng_state
from lm_lab.checkpoint_io import AtomicCheckpointIO
from lm_lab.errors import ConfigError
from lm_lab.guards import SpikeDetector

ROOT = Path(__file__).resolve().parent.parent


def command(run_dir: Path, losses: Path, *extra: str) -> list[str]:
    """A small run with dropout (so the random state matters), checkpoints every 5 steps, validation every 10."""
    return [
        sys.executable,
        "run.py",
        "experiment=smoke",
        "trainer=cpu",
        "train.max_steps=30",
        "train.val_every=10",
        "model.dropout=0.1",
        "callbacks.last_checkpoint.every_n_steps=5",
        "~callbacks.progress_bar",
        "trainer.enable_progress_bar=false",
        "+callbacks.losses._target_=tests.helpers.LossRecorder",
        f"+callbacks.losses.path={losses}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def env(cache: Path) -> dict:
    return {**os.environ, "LM_LAB_CACHE": str(cache), "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}


def run(cmd: list[str], cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    # its own process group: a test helper may SIGKILL the group (every rank) without touching pytest
    return subprocess.run(
        cmd, cwd=ROOT, env=env(cache), capture_output=True, text=True, timeout=timeout, start_new_session=True
    )


def final_losses(path: Path, key: str = "loss") -> dict[int, float]:
    """Loss (or LR) per step (steps re-done after a resume overwrite the first attempt)."""
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec[key]
    return out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    """One uninterrupted run to compare the killed ones with."""
    root = tmp_path_factory.mktemp("reference")
    proc = run(command(root / "run", root / "losses.jsonl"), cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run", final_losses(root / "losses.jsonl")


def assert_same_run(run_dir: Path, losses: dict, reference) -> None:
    ref_dir, ref_losses = reference
    assert losses == ref_losses  # the same loss at every step, to the last bit
    mine, theirs = weights(run_dir), weights(ref_dir)
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
    a, b = (json.loads((d / "results.json").read_text()) for d in (run_dir, ref_dir))
    assert a["val_loss"] == b["val_loss"] and a["steps"] == b["steps"] == 30


@pytest.mark.slow
def test_sigkill_mid_run_then_the_same_command_ends_bit_exact(tmp_path, cache_dir, reference):
    cmd = command(tmp_path / "run", tmp_path / "losses.jsonl")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(cache_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:  # kill between the checkpoints at steps 15 and 20
        lines = (tmp_path / "losses.jsonl").read_text().splitlines() if (tmp_path / "losses.jsonl").exists() else []
        if lines and json.loads(lines[-1])["step"] >= 17:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = [json.loads(x)["step"] for x in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert 17 <= max(first) < 30, "the kill must land mid-run"
    again = run(cmd, cache_dir)  # the same command again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout + again.stderr
    assert_same_run(tmp_path / "run", final_losses(tmp_path / "losses.jsonl"), reference)


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint(tmp_path, cache_dir, reference):
    cmd = command(tmp_path / "run", tmp_path / "losses.jsonl")
    # saves: last.ckpt at 5, best-step10 and last.ckpt at 10, last.ckpt at 15: the 4th write dies half-way
    crash = ["checkpoint_io._target_=tests.helpers.CrashingCheckpointIO", "+checkpoint_io.crash_on_save=4"]
    proc = run(cmd + crash, cache_dir)
    assert proc.returncode == -signal.SIGKILL
    ckpts = tmp_path / "run" / "checkpoints"
    assert list(ckpts.glob(".*.tmp"))  # the half-written file, never under a checkpoint's name
    assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == 10  # the previous save is intact
    again = run(cmd, cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not list(ckpts.glob(".*.tmp"))
    assert_same_run(tmp_path / "run", final_losses(tmp_path / "losses.jsonl"), reference)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_gradient_guard(tmp_path, cache_dir, policy):
    cmd = command(
        tmp_path / "run",
        tmp_path / "losses.jsonl",
        f"train.on_nonfinite={policy}",
        "+callbacks.nan._target_=tests.helpers.InjectNaN",
        "+callbacks.nan.step=13",
    )
    proc = run(cmd, cache_dir)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    last = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    if policy == "stop":
        assert proc.returncode == 3
        assert "non-finite gradient norm (nan) at step 13" in proc.stderr
        assert results["stop_reason"] == "non_finite" and "step 13" in results["failure"] and results["steps"] == 12
        assert last["global_step"] == 10  # the last good checkpoint, untouched
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert results["stop_reason"] == "max_steps" and results["skipped_steps"] == 1 and results["steps"] == 30
        assert last["global_step"] == 30 and np.isfinite(results["val_loss"])


@pytest.mark.slow
def test_finished_runs_incompatible_resumes_and_a_lost_final_validation(tmp_path, cache_dir, reference):
    ref_dir, _ = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    cmd = command(run_dir, tmp_path / "losses.jsonl")
    # the same command on a finished run: nothing to do, nothing changed
    before = (run_dir / "results.json").read_text()
    proc = run(cmd, cache_dir)
    assert (
        proc.returncode == 0 and "already finished" in proc.stdout and (run_dir / "results.json").read_text() == before
    )
    # a resume whose model does not fit the checkpoint: one line, before anything is written
    proc = run(command(run_dir, tmp_path / "losses.jsonl", "model.n_layer=3"), cache_dir)
    # judged by the tensors' shapes; the config field that differs is named first
    assert proc.returncode == 2, proc.stderr
    assert (
        "does not fit this run (model.n_layer: checkpoint 2, this run 3; missing tensors: blocks.2.ln_1.weight"
        in proc.stderr
    )
    assert (run_dir / "results.json").read_text() == before
    # another optimizer cannot take over the checkpoint's optimizer state
    proc = run(command(run_dir, tmp_path / "losses.jsonl", "optimizer=muon"), cache_dir)
    assert proc.returncode == 2 and "(optimizer.name: checkpoint 'adamw', this run 'muon')" in proc.stderr
    assert (run_dir / "results.json").read_text() == before
    # killed after the last checkpoint but before its results: the resumed run scores the final weights
    (run_dir / "results.json").unlink()
    proc = run(cmd, cache_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["val_step"] == results["steps"] == 30 and results["val_loss"] == json.loads(before)["val_loss"]


@pytest.mark.slow
def test_resuming_with_a_lower_lr_uses_it(tmp_path, cache_dir):
    losses = tmp_path / "losses.jsonl"
    first = run(command(tmp_path / "run", losses, "train.max_steps=10", "scheduler.warmup_steps=2"), cache_dir)
    assert first.returncode == 0, first.stderr[-2000:]
    second = run(
        command(tmp_path / "run", losses, "train.max_steps=20", "scheduler.warmup_steps=2", "optimizer.lr=3e-5"),
        cache_dir,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    lrs = final_losses(losses, "lr")
    # recorded after each update (the LR of the next one): the first run's schedule, then the new peak LR
    assert lrs[9] > 1e-4 and 0 < max(lrs[s] for s in range(11, 21)) <= 3e-5


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path):
    io_ = AtomicCheckpointIO()
    path = tmp_path / "c.ckpt"
    io_.save_checkpoint({"a": torch.ones(3)}, path)

    class Boom(Exception):
        pass

    class Exploding(dict):
        def __reduce_ex__(self, protocol):
            raise Boom

    with pytest.raises(Boom):
        io_.save_checkpoint({"a": Exploding()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert list(tmp_path.iterdir()) == [path]  # the temporary file is gone


def fake_checkpoint(path: Path, step: int) -> dict:
    ckpt = {
        "state_dict": {"w": torch.full((2,), float(step))},
        "global_step": step,
        "loops": {},
        "optimizer_states": [],
    }
    torch.save(ckpt, path)
    return ckpt


def test_resume_skips_a_corrupt_last_checkpoint_and_names_it(tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    fake_checkpoint(ckpts / "best-step20.ckpt", 20)
    (ckpts / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    path, ckpt = resume_checkpoint("last", ckpts)
    assert path == ckpts / "best-step20.ckpt" and ckpt["global_step"] == 20
    assert "last.ckpt cannot be read" in caplog.text
    with pytest.raises(
        ConfigError,
        match=r"last\.ckpt cannot be read .* newest good checkpoint here is .*best-step20\.ckpt \(step 20\)",
    ):
        resume_checkpoint(str(ckpts / "last.ckpt"), ckpts)
    assert resume_checkpoint("last", tmp_path / "nothing") == (None, None)  # a fresh run
    torch.save({"state_dict": {}}, ckpts / "other.ckpt")
    with pytest.raises(ConfigError, match="not a training checkpoint"):
        read_checkpoint(ckpts / "other.ckpt")


def test_resume_picks_the_newest_checkpoint_by_step(tmp_path):
    """Newest by training step whatever the file names and write order; last.ckpt first among equals; a step
    snapshot flagged as written just before a validation only when nothing else is left."""
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    fake_checkpoint(ckpts / "best-step20.ckpt", 20)
    fake_checkpoint(ckpts / "last.ckpt", 15)  # older: a crash between the best's save and last.ckpt's
    fake_checkpoint(ckpts / "best-step5.ckpt", 5)
    assert resume_checkpoint("last", ckpts)[0].name == "best-step20.ckpt"
    fake_checkpoint(ckpts / "last.ckpt", 20)
    assert resume_checkpoint("last", ckpts)[0].name == "last.ckpt"
    snapshot = fake_checkpoint(ckpts / "last.ckpt", 25)
    snapshot["callbacks"] = {"LastCheckpoint{}": {"before_validation": True}}
    torch.save(snapshot, ckpts / "last.ckpt")
    assert resume_checkpoint("last", ckpts)[0].name == "best-step20.ckpt"
    for other in ("best-step20.ckpt", "best-step5.ckpt"):
        (ckpts / other).unlink()
    assert resume_checkpoint("last", ckpts)[1]["global_step"] == 25


def test_checkpoints_with_code_are_refused(tmp_path):
    torch.save(
        {"state_dict": {}, "global_step": 1, "loops": {}, "optimizer_states": [], "evil": Path("x")},
        tmp_path / "c.ckpt",
    )
    with pytest.raises(ConfigError, match="cannot be read"):
        read_checkpoint(tmp_path / "c.ckpt")


def test_rng_state_round_trip_is_safe_to_load(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_spike_detector():
    det = SpikeDetector(window=20, k=6.0, min_rise=0.1, warmup=10)
    rng = np.random.default_rng(0)
    flags = [det.update(3.0 + 0.01 * rng.standard_normal()) for _ in range(100)]
    assert not any(flags)
    assert det.update(5.0)  # a jump of 2 nats
    assert not det.update(3.0)
    assert not det.update(float("nan"))  # the non-finite guard's job, not a spike


def test_loss_spike_monitor_state_survives_a_checkpoint():
    """The count and the running statistics come back from the checkpoint: after a resume the next spike is
    counted as the second, and the detector's averages are the uninterrupted run's."""
    from callbacks import LossSpikes

    monitor = LossSpikes(window=5, k=6.0, warmup=3)
    rng = np.random.default_rng(0)
    monitor._pending = [torch.tensor(3.0 + 0.01 * rng.standard_normal()) for _ in range(8)] + [torch.tensor(6.0)]
    assert monitor._flush(9) == 1
    state = torch.load(_saved(monitor.state_dict()), weights_only=True)
    resumed = LossSpikes(window=5, k=6.0, warmup=3)
    resumed.load_state_dict(state)
    assert resumed.count == monitor.count == 1
    assert resumed.detector.state_dict() == monitor.detector.state_dict()
    for m in (monitor, resumed):
        m._pending = [torch.tensor(3.0), torch.tensor(9.0)]
    assert monitor._flush(11) == resumed._flush(11) == 1 and resumed.count == 2


def _saved(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def signal_at_step(proc: subprocess.Popen, losses: Path, step: int, sig: int) -> tuple[int, str]:
    """Send `sig` once the run has logged `step` (or ended); (the last step seen, the run's stderr)."""
    deadline, seen = time.time() + 180, 0
    while time.time() < deadline and proc.poll() is None:
        lines = losses.read_text().splitlines() if losses.exists() else []
        seen = json.loads(lines[-1])["step"] if lines else 0
        if seen >= step:
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    return seen, stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_sigterm_and_sigint_save_at_the_next_step_then_exit(tmp_path, cache_dir, reference, sig):
    """A user's Ctrl-C (SIGINT): the run saves at the next step boundary and exits 130, losing no step; the same
    command resumes it, bit-exact. (SIGTERM, what SLURM sends on preemption, is the same path: tested under a
    simulated SLURM job below.)"""
    cmd = command(tmp_path / "run", tmp_path / "losses.jsonl", "callbacks.last_checkpoint.every_n_steps=1000")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env(cache_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    seen, stderr = signal_at_step(proc, tmp_path / "losses.jsonl", 12, sig)
    assert proc.returncode == 130, stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    saved = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"]
    assert results["stop_reason"] == "interrupted" and results["steps"] == saved  # nothing since it is lost
    assert 12 <= seen <= saved <= seen + 3 < 30  # saved at the next step boundary (no cadence save is due)
    again = run(cmd, cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_run(tmp_path / "run", final_losses(tmp_path / "losses.jsonl"), reference)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_under_slurm_a_signal_saves_at_a_step_boundary_and_the_requeued_job_resumes_exactly(
    tmp_path, cache_dir, reference, sig
):
    """A SLURM job (simulated: SLURM's variables, a fake scontrol): the requeue signal before the time limit (here
    USR1, as a job's `--signal=USR1@120` sends, set by callbacks.last_checkpoint.requeue_signal) saves at the next
    step boundary and asks `scontrol requeue JOB`; SIGTERM (preemption, scancel) saves and stops without asking.
    The requeued job is the same command: it resumes bit-exact."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "lm-lab-sweep",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODELIST": "localhost",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    cmd = command(
        tmp_path / "run",
        tmp_path / "losses.jsonl",
        "callbacks.last_checkpoint.every_n_steps=1000",
        "callbacks.last_checkpoint.requeue_signal=USR1",
    )
    job_env = {**env(cache_dir), **slurm}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=job_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, stderr = signal_at_step(proc, tmp_path / "losses.jsonl", 12, sig)
    assert proc.returncode == 130, stderr[-2000:]
    saved = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"]
    assert 12 <= seen <= saved <= seen + 3 < 30  # saved at the next step boundary
    if sig == signal.SIGUSR1:
        assert calls.read_text().splitlines() == ["requeue 4242"]
    else:
        assert not calls.exists()
    assert not list((tmp_path / "run").glob("hpc_ckpt_*"))  # Lightning's own mid-step save stayed off
    again = subprocess.run(cmd, cwd=ROOT, env=job_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_run(tmp_path / "run", final_losses(tmp_path / "losses.jsonl"), reference)


DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.precision=32-true"]


@pytest.mark.slow
def test_two_process_run_killed_and_resumed_continues_each_ranks_random_state(tmp_path, cache_dir):
    """Two gloo processes with dropout, rank 1 alone SIGKILLed at step 9 (after the checkpoint of step 6; rank 0 is
    left in a collective with a dead peer), then the same command: each rank's losses after the resume are the uninterrupted run's, so each rank got its own random
    state back (torch 2.13 segfaulted on rank 1 when its state was restored from a view)."""
    short = ["train.max_steps=12", "train.val_every=6", *DDP]
    ref = run(command(tmp_path / "ref", tmp_path / "ref.jsonl", *short), cache_dir, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    cmd = command(tmp_path / "run", tmp_path / "run.jsonl", *short)
    started = time.time()
    killed = run([*cmd, "+callbacks.kill._target_=tests.helpers.KillRank", "+callbacks.kill.step=9"], cache_dir)
    assert killed.returncode != 0 and time.time() - started < 240  # rank 0 fails on its lost peer, without hanging
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 6
    resumed = run(cmd, cache_dir, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in ("", ".rank1"):
        mine, theirs = (final_losses(Path(f"{tmp_path / name}.jsonl{rank}")) for name in ("run", "ref"))
        assert sorted(mine) == list(range(1, 13)) and mine == theirs, rank  # steps 7-9 re-done with the same masks
    per_rank = read_checkpoint(tmp_path / "ref" / "checkpoints" / "last.ckpt")["rng"]["torch_per_rank"]
    assert per_rank.shape[0] == 2 and not torch.equal(per_rank[0], per_rank[1])  # each rank its own dropout masks
    mine, theirs = weights(tmp_path / "run"), weights(tmp_path / "ref")
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_rng_state_per_rank(tmp_path):
    """Each rank of a multi-process run gets its own torch random state back from the one saved file."""
    torch.manual_seed(1)
    other = torch.get_rng_state()
    torch.manual_seed(0)
    state = rng_state(gather=lambda t: torch.stack([t, other]))
    torch.save(state, tmp_path / "rng.pt")
    saved = torch.load(tmp_path / "rng.pt", weights_only=True)
    draws = []
    for rank in (0, 1):
        set_rng_state(saved, rank=rank, world_size=2)
        draws.append(torch.rand(3))
    torch.manual_seed(0)
    assert torch.equal(draws[0], torch.rand(3))
    torch.manual_seed(1)
    assert torch.equal(draws[1], torch.rand(3))
    set_rng_state(saved, rank=0, world_size=4)  # another world size: the saved (rank 0) state, not a wrong rank's
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), draws[0])
