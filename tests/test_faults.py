"""Faults a long run meets, in-process: a kill right after a checkpoint (every piece of state must be in it),
two runs in one directory, a refused resume, non-finite weights, a full disk. Signals are in test_resume.py."""

import errno
import hashlib
import json
import os
import re
import signal
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks import AveragedWeights, LastCheckpoint, LossSpikes
from lm_lab.checkpoint import read_checkpoint
from lm_lab.checkpoint_io import AtomicCheckpointIO
from lm_lab.data.config import DataConfig
from lm_lab.errors import ConfigError
from lm_lab.fileio import atomic_open
from lm_lab.lock import RunLock
from lm_lab.models import ModelConfig
from lm_lab.optim import OptimizerConfig, lr_multiplier
from lm_lab.results import Results
from lm_lab.train import fit
from tests.helpers import InjectNaN, step_snapshots
from tests.test_fit import smoke

TIMING = {
    "train_seconds",
    "train_seconds_last_start",
    "tokens_per_sec",
    "samples_per_sec",
    "tokens_per_sec_per_device",
    "samples_per_sec_per_device",
    "step_tokens_per_sec",
    "wall_seconds",
    "starts",
}


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing catches it, the run's process state is gone."""


class KillAfterSave(AtomicCheckpointIO):
    """Dies right after the checkpoint `name` at `step` is on disk."""

    def __init__(self, name: str, step: int):
        super().__init__()
        self.name, self.step = name, step

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        super().save_checkpoint(checkpoint, path, storage_options)
        if Path(path).name.startswith(self.name) and checkpoint["global_step"] == self.step:
            raise Killed(path)


class KillAtStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Killed(self.step)


def callbacks_for(run_dir: Path, *extra) -> list:
    """Step checkpoints every 5 steps, the best by val/loss, an EMA and a spike monitor that starts early."""
    ckpts = run_dir / "checkpoints"
    return [
        LastCheckpoint(dirpath=str(ckpts), every_n_steps=5, every_minutes=None),
        ModelCheckpoint(
            dirpath=str(ckpts),
            filename="best-step{step}",
            auto_insert_metric_name=False,
            monitor="val/loss",
            mode="min",
            save_top_k=1,
        ),
        AveragedWeights(kind="ema", decay=0.9),
        LossSpikes(window=5, warmup=2),
        *extra,
    ]


def averaging_run(cache_dir: Path):
    run = smoke(cache_dir, max_steps=20, val_every=10, log_every=1)
    dropout = ModelConfig.preset("gpt2_tiny", n_layer=2, n_head=2, d_model=64, block_size=128, dropout=0.1)
    return replace(run, model=dropout)  # dropout: the random state must resume exactly too


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
        if not tag.startswith("throughput/")  # wall-clock speed differs between any two runs
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    results = fit(averaging_run(cache_dir), run_dir, callbacks=callbacks_for(run_dir))
    return run_dir, results


def assert_same_state(run_dir: Path, reference: Path) -> None:
    mine, theirs = (read_checkpoint(d / "checkpoints" / "last.ckpt") for d in (run_dir, reference))
    assert mine["global_step"] == theirs["global_step"] == 20
    for key in ("state_dict", "averaged_state_dict_ema"):
        assert mine[key].keys() == theirs[key].keys()
        assert all(torch.equal(mine[key][k], theirs[key][k]) for k in mine[key]), key
    spikes = [k for k in mine["callbacks"] if k.startswith("LossSpikes")]
    assert spikes and all(mine["callbacks"][k] == theirs["callbacks"][k] for k in spikes)
    a, b = Results.load(run_dir).to_dict(), Results.load(reference).to_dict()
    assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    assert a["starts"] == 2 and b["starts"] == 1
    assert a["train_seconds"] > a["train_seconds_last_start"] > 0  # the first start's seconds are counted too
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("best-*")) == sorted(
        p.name for p in (reference / "checkpoints").glob("best-*")
    )
    assert scalars(run_dir) == scalars(reference)  # the logged curves, step for step


def test_killed_right_after_a_step_checkpoint(tmp_path, cache_dir, uninterrupted):
    """The step checkpoint holds the step's EMA update, spike-monitor observation and the metrics logged after it."""
    reference, _ = uninterrupted
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        fit(
            averaging_run(cache_dir), run_dir, callbacks=callbacks_for(run_dir), checkpoint_io=KillAfterSave("last", 15)
        )
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 15
    fit(averaging_run(cache_dir), run_dir, callbacks=callbacks_for(run_dir))  # the same call again: resumes
    assert_same_state(run_dir, reference)


def test_killed_between_the_final_validations_two_saves(tmp_path, cache_dir, uninterrupted):
    """The best checkpoint is written before last.ckpt and the stale best it replaced is cleaned up on resume."""
    reference, ref_results = uninterrupted
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        fit(
            averaging_run(cache_dir), run_dir, callbacks=callbacks_for(run_dir), checkpoint_io=KillAfterSave("best", 20)
        )
    assert {p.name for p in (run_dir / "checkpoints").glob("best-*")} == {"best-step10.ckpt", "best-step20.ckpt"}
    results = fit(averaging_run(cache_dir), run_dir, callbacks=callbacks_for(run_dir))
    assert results.best_val_loss == ref_results.best_val_loss and results.val_loss == ref_results.val_loss
    assert {p.name for p in (run_dir / "checkpoints").glob("best-*")} == {"best-step20.ckpt"}


def test_killed_before_the_first_checkpoint_restarts_a_clean_curve(tmp_path, cache_dir, uninterrupted):
    reference, _ = uninterrupted
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        fit(averaging_run(cache_dir), run_dir, callbacks=callbacks_for(run_dir, KillAtStep(3)))
    assert not (run_dir / "checkpoints" / "last.ckpt").exists() and scalars(run_dir)["train/loss"]
    fit(averaging_run(cache_dir), run_dir, callbacks=callbacks_for(run_dir))
    assert scalars(run_dir) == scalars(reference)


class KillInValidation(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_validation_start(self, trainer, pl_module):
        if trainer.global_step == self.step and not trainer.sanity_checking:
            raise Killed(self.step)


def test_killed_during_a_validation_after_a_step_snapshot(tmp_path, cache_dir, uninterrupted):
    """A step snapshot written just before a validation is newer than last.ckpt; resumed from it, the run would
    skip that validation. The resume takes last.ckpt instead and is the uninterrupted run."""
    reference, _ = uninterrupted
    run_dir = tmp_path / "run"
    snapshots = step_snapshots(run_dir, 10)
    with pytest.raises(Killed):
        fit(averaging_run(cache_dir), run_dir, callbacks=callbacks_for(run_dir, snapshots, KillInValidation(10)))
    assert read_checkpoint(run_dir / "checkpoints" / "step10.ckpt")["global_step"] == 10
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 5
    fit(averaging_run(cache_dir), run_dir, callbacks=callbacks_for(run_dir))
    assert_same_state(run_dir, reference)


class SignalAt(L.Callback):
    """Sends this process a signal while step `step` is being trained (the handler is LastCheckpoint's)."""

    def __init__(self, step: int, sig=signal.SIGTERM):
        self.step, self.sig = step, sig

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), self.sig)


def test_sigterm_during_a_validation_step_validates_saves_then_stops(tmp_path, cache_dir, uninterrupted):
    """A stop asked for during the step a validation follows: the validation runs, the checkpoint after it
    saves, the run stops; resumed, it is the uninterrupted run (no validation skipped or repeated)."""
    reference, _ = uninterrupted
    run_dir = tmp_path / "run"
    stopped = fit(averaging_run(cache_dir), run_dir, callbacks=callbacks_for(run_dir, SignalAt(10)))
    assert stopped.stop_reason == "interrupted" and stopped.steps == 10 == stopped.val_step
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 10
    assert not isinstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None), LastCheckpoint)  # restored
    fit(averaging_run(cache_dir), run_dir, callbacks=callbacks_for(run_dir))
    assert_same_state(run_dir, reference)


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_second_run_in_a_locked_directory_is_refused(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    fit(smoke(cache_dir, max_steps=6), run_dir)
    before = snapshot(run_dir)
    refused = pytest.raises(ConfigError, match=r"run directory .* is in use by pid \d+ on .*wait for that run to end")
    with RunLock(run_dir), refused:  # another process training there
        fit(smoke(cache_dir, max_steps=8), run_dir)
    assert snapshot(run_dir) == before
    # a lock file left by a process that died holds no lock: the next start takes over
    (run_dir / ".lock").write_text("pid 999999 on elsewhere since yesterday")
    assert fit(smoke(cache_dir, max_steps=8), run_dir).steps == 8
    assert not (run_dir / ".lock").exists()


def write_corpus(folder: Path, words: str) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "docs.jsonl", "w") as f:
        for i in range(300):
            f.write(json.dumps({"text": f"document {i}: " + f"{words} " * 30}) + "\n")
    return folder


def test_a_refused_resume_writes_nothing(tmp_path):
    """Resuming with another corpus under the same data.name is refused before the corpus is prepared or any
    file of the run is touched."""
    cache = tmp_path / "cache"
    a, b = write_corpus(tmp_path / "a", "alpha beta gamma"), write_corpus(tmp_path / "b", "delta epsilon")
    run = smoke(cache, max_steps=4, val_every=4, val_tokens=1024)
    run = replace(
        run,
        data=DataConfig(name="mine", source="local", path=str(a), val_fraction=0.05, cache_dir=str(cache)),
        model=replace(run.model, block_size=32),
    )
    run_dir = tmp_path / "run"
    fit(run, run_dir)
    before, cached = snapshot(run_dir), snapshot(cache)
    other = replace(run, data=replace(run.data, path=str(b)), train=replace(run.train, max_steps=8))
    with pytest.raises(ConfigError, match=r"does not fit this run \(data\.path: checkpoint '.*/a', this run '.*/b'\)"):
        fit(other, run_dir)
    assert snapshot(run_dir) == before and snapshot(cache) == cached


class PoisonWeights(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("inf")


def test_non_finite_weights_are_never_saved(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    run = smoke(cache_dir, max_steps=20, val_every=20)
    results = fit(run, run_dir, callbacks=callbacks_for(run_dir, PoisonWeights(10)))
    assert results.stop_reason == "non_finite" and "non-finite after step 10; they were not saved" in results.failure
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 5 and all(torch.isfinite(t).all() for t in last["state_dict"].values())


class DiskFull(AtomicCheckpointIO):
    """The `fail_on`-th checkpoint write runs out of space half-way."""

    def __init__(self, fail_on: int):
        super().__init__()
        self.fail_on, self.saves = fail_on, 0

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        self.saves += 1
        if self.saves < self.fail_on:
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_open(path, "wb") as f:
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_stops_the_run_with_the_previous_checkpoint_intact(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    results = fit(
        smoke(cache_dir, max_steps=20, val_every=20),
        run_dir,
        callbacks=callbacks_for(run_dir),
        checkpoint_io=DiskFull(2),
    )
    assert results.stop_reason == "failed" and "No space left on device" in results.failure
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 5
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    assert Results.load(run_dir).stop_reason == "failed"


def test_token_ids_beyond_the_vocabulary_are_refused_when_the_files_open(tmp_path, cache_dir):
    from lm_lab.data.prepare import prepare
    from lm_lab.data.shards import TokenShards, read_meta
    from lm_lab.data.tokenizers import TokenizerConfig

    corpus = write_corpus(tmp_path / "c", "some words")
    folder = prepare(
        DataConfig(name="c", source="local", path=str(corpus), cache_dir=str(tmp_path / "cache"), num_proc=1),
        TokenizerConfig(name="bytes", vocab_size=257),
        progress=False,
    )
    meta = read_meta(folder)
    assert meta["splits"]["train"]["shards"][0]["max_id"] == 256  # the end-of-text id
    meta["vocab_size"] = 200  # as if the files came from a larger vocabulary than the run's
    with pytest.raises(ConfigError, match=r"holds id 256, beyond the 200 ids"):
        TokenShards(folder, "train", meta)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"meta\.json is not valid JSON"):
        read_meta(folder)
    (folder / "meta.json").write_text('{"format": 2}')
    with pytest.raises(ConfigError, match=r"lacks \['dtype', 'splits'\]"):
        read_meta(folder)


def test_a_file_that_is_not_a_tokenizer_is_named(tmp_path):
    from lm_lab.data.tokenizers import TokenizerConfig, load_tokenizer

    bogus = tmp_path / "tokenizer.json"
    bogus.write_text("this is not a tokenizer")
    with pytest.raises(ConfigError, match=r"tokenizer\.json is not a tokenizer file .* point tokenizer\.path at"):
        load_tokenizer(TokenizerConfig(name="hf", path=str(bogus), vocab_size=300))


def test_skipped_updates_are_counted_across_a_resume(tmp_path, cache_dir):
    """A non-finite gradient skipped at step 3, a kill after the step-5 checkpoint: the resumed run still counts it."""
    run = smoke(cache_dir, max_steps=8, val_every=8, on_nonfinite="skip")
    run_dir = tmp_path / "run"
    ckpts = [LastCheckpoint(dirpath=str(run_dir / "checkpoints"), every_n_steps=5, every_minutes=None)]
    with pytest.raises(Killed):
        fit(run, run_dir, callbacks=[*ckpts, InjectNaN(3)], checkpoint_io=KillAfterSave("last", 5))
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["skipped_steps"] == [1, 0]
    ckpts = [LastCheckpoint(dirpath=str(run_dir / "checkpoints"), every_n_steps=5, every_minutes=None)]
    results = fit(run, run_dir, callbacks=ckpts)
    assert results.steps == 8 and results.skipped_steps == 1 and results.starts == 2


class OptimizerSettings(L.Callback):
    """The optimizer's param groups as the first training batch of a (resumed) start sees them."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not hasattr(self, "groups"):
            self.step = trainer.global_step
            self.groups = [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizers[0].param_groups]


def test_a_resume_takes_the_optimizer_settings_of_its_config(tmp_path, cache_dir):
    """Resumed with other AdamW settings (as after a loss spike): the optimizer state is the checkpoint's, every
    hyperparameter the config's, and the LR the new peak times the schedule at the resumed step."""
    first = smoke(cache_dir, max_steps=6, val_every=6)
    fit(first, tmp_path / "run")
    new = OptimizerConfig(lr=4e-4, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.05)
    second = replace(first, optimizer=new, train=replace(first.train, max_steps=10))
    seen = OptimizerSettings()
    results = fit(second, tmp_path / "run", callbacks=[seen])
    assert seen.step == 6 and results.starts == 2
    multiplier = lr_multiplier(second.scheduler, 10)(6)
    decayed, plain = seen.groups
    for group in (decayed, plain):
        assert group["lr"] == pytest.approx(4e-4 * multiplier, rel=1e-12)
        assert group["initial_lr"] == 4e-4
        assert tuple(group["betas"]) == (0.8, 0.9) and group["eps"] == 1e-6
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": 3}, "seed: checkpoint 1337, this run 3"),
        ({"batch_size": 16}, "batch_size: checkpoint 8, this run 16"),
        ({"seq_len": 64}, "seq_len: checkpoint 128, this run 64"),
    ],
    ids=["seed", "batch_size", "seq_len"],
)
def test_a_resume_with_other_data_settings_is_refused_before_any_work(tmp_path, cache_dir, change, message):
    run = smoke(cache_dir, max_steps=4, val_every=4, val_tokens=4096)
    run_dir = tmp_path / "run"
    fit(run, run_dir)
    before = snapshot(run_dir)
    other = replace(run, train=replace(run.train, max_steps=8, **change))
    with pytest.raises(ConfigError, match=re.escape(message)):
        fit(other, run_dir)
    assert snapshot(run_dir) == before
