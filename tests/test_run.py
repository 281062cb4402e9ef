"""`python run.py` end to end: the run directory's files (in-process, through run.py's glue), and Ctrl-C in a
real process."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lm_lab.results import Results

ROOT = Path(__file__).resolve().parent.parent
RESULT_KEYS = set(Results.json_keys())


@pytest.mark.slow
def test_run_writes_results_logs_and_checkpoints(tmp_path, cache_dir, monkeypatch):
    # 25 steps with validation every 10: the end falls between validations, and the final weights are still
    # scored inside fit, so they are logged and checkpointed like any validation
    out = tmp_path / "run"
    task = [
        "experiment=smoke",
        "train.max_steps=25",
        "train.val_every=10",
        "trainer=cpu",
        "callbacks.throughput.window_size=2",
    ]
    from lm_lab.config import compose
    from lm_lab.launch import fit_from_config

    monkeypatch.setenv("LM_LAB_CACHE", str(cache_dir))
    returned = fit_from_config(compose([*task, f"run_dir={out}"]), task)  # what run.py does, in this process
    results = json.loads((out / "results.json").read_text())
    assert results == returned.to_dict()
    assert set(results) == RESULT_KEYS
    assert results["steps"] == 25 and results["stop_reason"] == "max_steps" and results["val_step"] == 25
    assert results["tokens"] == 25 * 8 * 128 == results["steps"] * results["tokens_per_step"]
    assert results["flops"] == results["tokens"] * results["flops_per_token"]
    assert results["val_ppl"] == pytest.approx(math.exp(results["val_loss"]))
    # the smoke model learns something real in 25 steps: below the uniform loss over its 4096-token vocabulary
    assert results["val_loss"] < math.log(4096) - 0.5
    assert 3.0 < results["val_unigram_entropy"] < math.log(4096)
    assert results["params"] > results["params_non_embedding"] > 0
    assert results["overrides"] == task
    # evidence: resolved config, TensorBoard events with the metrics, checkpoints that load safely
    config = (out / "config.yaml").read_text()
    assert "max_steps: 25" in config and "${" not in config
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "train/loss",
        "val/loss",
        "val/ppl",
        "train/lr",
        "train/grad_norm",
        "train/tokens",
        "throughput/tokens_per_sec",
    } <= tags
    assert [e.step for e in acc.Scalars("val/loss")] == [9, 19, 24]  # Lightning logs step k as k - 1
    assert acc.Scalars("val/loss")[-1].value == pytest.approx(results["val_loss"], rel=1e-5)
    # logged every 10 optimizer steps and at the last one
    assert [(e.step, e.value) for e in acc.Scalars("train/tokens")] == [
        (9, 10 * 1024),
        (19, 20 * 1024),
        (24, 25 * 1024),
    ]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 25 and "model.wte.weight" in ckpt["state_dict"] and ckpt["optimizer_states"]
    best = list((out / "checkpoints").glob("best-step*.ckpt"))
    assert len(best) == 1
    assert results["best_val_loss"] == min(e.value for e in acc.Scalars("val/loss"))


@pytest.mark.slow
def test_ctrl_c_leaves_results_and_checkpoint(tmp_path, cache_dir):
    out = tmp_path / "run"
    env = {**os.environ, "LM_LAB_CACHE": str(cache_dir), "CUDA_VISIBLE_DEVICES": ""}
    args = ["experiment=smoke", "train.max_steps=100000", "train.val_every=5", "trainer=cpu", f"hydra.run.dir={out}"]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:  # a file, not a pipe: a full pipe would block the run's progress bar
        proc = subprocess.Popen(
            [sys.executable, "run.py", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
        deadline = time.time() + 180
        while not (out / "checkpoints" / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-2000:]
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"no exit after Ctrl-C:\n{log.read_text()[-2000:]}") from None
    assert proc.returncode == 130, log.read_text()[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["stop_reason"] == "interrupted"
    assert 5 <= results["steps"] < 100000 and results["val_step"] >= 5
    assert math.isfinite(results["val_loss"])
    torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
