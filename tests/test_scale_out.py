"""Scale-out on CPU: Lightning's DDP and FSDP strategies with gloo processes give the single-process run (same
global batch, same data), checkpoints move between world sizes, sharded checkpoints resume exactly and
consolidate into one file; the trainer configs build their strategies; the SLURM launcher composes into the
submitit job it submits."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lm_lab.checkpoint import consolidate, full_checkpoint, load_model, read_checkpoint
from lm_lab.config import RunConfig, compose
from lm_lab.errors import ConfigError
from lm_lab.models import GPT, ModelConfig
from lm_lab.models.gpt import Block
from lm_lab.strategies import FSDPConfig, ShardedStrategy, build_strategy, cluster_plugins, recover_swaps
from tests.helpers import read_records

ROOT = Path(__file__).resolve().parent.parent
CPU = ["trainer.accelerator=cpu", "trainer.precision=32-true"]
DDP = ["trainer=ddp", *CPU, "trainer.devices=2", "trainer.num_nodes=1"]
FSDP = ["trainer=fsdp", *CPU, "trainer.devices=2", "trainer.num_nodes=1"]
ONE = ["trainer=cpu", "train.micro_batch_size=4"]  # batch 8 = 4 x 2 accumulation: the global batch of 2 x 4
# fp32: one process accumulating vs two averaging gradients differ only in summation order (measured: up to 2e-5
# by step 12); a clipping norm taken over one rank's shard (0.7x the global) would move the loss by ~1e-2
TOL = 1e-4


def command(run_dir: Path, *extra: str) -> list[str]:
    """12 steps of a 2-layer model without dropout, clipped hard (grad_clip 0.05 binds at every step, so a norm
    computed on one rank's shard only would change the updates), step snapshots every 6 steps."""
    return [
        sys.executable,
        "run.py",
        "experiment=smoke",
        "model.dropout=0.0",
        "train.max_steps=12",
        "train.val_every=6",
        "optimizer.grad_clip=0.05",
        "~callbacks.progress_bar",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "+callbacks.losses._target_=tests.helpers.LossRecorder",
        f"+callbacks.losses.path={run_dir}.losses",
        "+callbacks.batches._target_=tests.helpers.BatchRecorder",
        f"+callbacks.batches.path={run_dir}.batches",
        "+callbacks.snapshots._target_=tests.helpers.StepSnapshots",
        f"+callbacks.snapshots.dirpath={run_dir}/checkpoints",
        "+callbacks.snapshots.every=6",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def launch(cmd: list[str], cache: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "LM_LAB_CACHE": str(cache), "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    for key in [k for k in env if k.startswith("SLURM_")]:  # this machine may itself be a SLURM job
        del env[key]
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True
    )


def ok(cmd: list[str], cache: Path) -> None:
    proc = launch(cmd, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]


def step_losses(run_dir: Path, ranks: int) -> dict[int, float]:
    """The global batch's mean loss per optimizer step (1, 2, ...). LossRecorder logs each micro-batch's step
    output, its loss divided by the accumulation (2 in one process, 1 on two ranks), with the global step after
    it (so only a step's last micro-batch has that step's number); ranks average."""
    accumulation = 2 if ranks == 1 else 1
    per_rank = []
    for r in range(ranks):
        records = [
            json.loads(x) for x in Path(f"{run_dir}.losses" + (f".rank{r}" if r else "")).read_text().splitlines()
        ]
        steps = {}
        for i in range(0, len(records), accumulation):
            group = records[i : i + accumulation]
            steps[group[-1]["step"]] = sum(x["loss"] for x in group)
        per_rank.append(steps)
    return {step: sum(p[step] for p in per_rank) / ranks for step in per_rank[0]}


def rows_per_step(run_dir: Path, ranks: int) -> dict[int, list[str]]:
    """The windows each optimizer step read, over all ranks (sorted), by the step before it (0, 1, ...)."""
    out: dict[int, list[str]] = {}
    for r in range(ranks):
        for rec in read_records(Path(f"{run_dir}.batches"), r):
            out.setdefault(rec["step"], []).extend(rec["rows"])
    return {step: sorted(rows) for step, rows in out.items()}


def close(a: dict[int, float], b: dict[int, float], steps) -> None:
    for step in steps:
        assert abs(a[step] - b[step]) < TOL, (step, a[step], b[step])


@pytest.fixture(scope="module")
def one(tmp_path_factory, cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("one") / "run"
    ok(command(run_dir, *ONE), cache_dir)
    return run_dir


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    ok(command(run_dir, *DDP), cache_dir)
    return run_dir


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory, cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("fsdp") / "run"
    ok(command(run_dir, *FSDP), cache_dir)
    return run_dir


# -- DDP -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_ddp_processes_train_as_one_process_with_the_same_global_batch(one, ddp):
    single, double = step_losses(one, 1), step_losses(ddp, 2)
    assert sorted(single) == sorted(double) == list(range(1, 13))
    close(single, double, range(1, 13))
    assert single[12] < single[1] - 0.05  # they trained (the same way)
    assert rows_per_step(one, 1) == rows_per_step(ddp, 2)  # the same windows at every step, split over the ranks
    a, b = (read_checkpoint(d / "checkpoints" / "last.ckpt")["state_dict"] for d in (one, ddp))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5)
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (one, ddp))
    assert (r1["devices"], r2["devices"]) == (1, 2)
    assert abs(r1["val_loss"] - r2["val_loss"]) < 1e-4
    assert r2["tokens_per_sec_per_device"] == pytest.approx(r2["tokens_per_sec"] / 2)
    assert r2["samples_per_sec"] == pytest.approx(r2["tokens_per_sec"] / r2["seq_len"])


@pytest.mark.slow
@pytest.mark.parametrize("source, resumed_with", [("ddp", ONE), ("one", DDP)])
def test_a_checkpoint_resumes_with_another_world_size(one, ddp, tmp_path, cache_dir, source, resumed_with):
    """A 2-process run's step-6 checkpoint resumes in one process, and a 1-process one in two: the steps after it
    are the uninterrupted run's (same data, same updates)."""
    origin = {"one": one, "ddp": ddp}[source]
    run_dir = tmp_path / "resumed"
    ok(command(run_dir, *resumed_with, f"ckpt_path={origin}/checkpoints/step6.ckpt"), cache_dir)
    ranks = 2 if resumed_with is DDP else 1
    resumed = step_losses(run_dir, ranks)
    assert sorted(resumed) == list(range(7, 13))
    close(resumed, step_losses(origin, 2 if source == "ddp" else 1), range(7, 13))
    assert rows_per_step(run_dir, ranks) == {
        s: r for s, r in rows_per_step(origin, 1 if ranks == 2 else 2).items() if s >= 6
    }
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 12


# -- FSDP (Lightning's FSDPStrategy on gloo: lm_lab.strategies.ShardedStrategy wraps with device_id=cpu) -------


@pytest.mark.slow
def test_fsdp_trains_as_one_process_and_writes_sharded_checkpoints(one, fsdp):
    close(step_losses(one, 1), step_losses(fsdp, 2), range(1, 13))  # the clipping norm is the global one
    assert rows_per_step(one, 1) == rows_per_step(fsdp, 2)
    last = fsdp / "checkpoints" / "last.ckpt"
    assert last.is_dir() and sorted(p.name for p in last.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "meta.pt",
    ]
    ckpt = read_checkpoint(last)  # metadata and tensor shapes only
    assert ckpt["sharded"] and ckpt["global_step"] == 12 and ckpt["state_dict"]["model.wte.weight"].is_meta
    full = full_checkpoint(last)["state_dict"]
    reference = read_checkpoint(one / "checkpoints" / "last.ckpt")["state_dict"]
    assert full.keys() == reference.keys()  # the tied head included
    for name in reference:
        torch.testing.assert_close(full[name], reference[name], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fsdp_killed_then_the_same_command_resumes_exactly(fsdp, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    killed = launch(
        command(run_dir, *FSDP, "+callbacks.kill._target_=tests.helpers.KillProcessGroup", "+callbacks.kill.step=9"),
        cache_dir,
    )
    assert killed.returncode == -signal.SIGKILL
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 6
    ok(command(run_dir, *FSDP), cache_dir)
    for rank in (0, 1):  # each rank's losses after the resume are the uninterrupted run's, to the last bit
        mine, theirs = (
            {
                json.loads(x)["step"]: json.loads(x)["loss"]
                for x in Path(f"{d}.losses{'.rank1' if rank else ''}").read_text().splitlines()
            }
            for d in (run_dir, fsdp)
        )
        assert mine == theirs and sorted(mine) == list(range(1, 13))
    a, b = (full_checkpoint(d / "checkpoints" / "last.ckpt") for d in (run_dir, fsdp))
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name


@pytest.mark.slow
def test_a_consolidated_fsdp_checkpoint_resumes_on_one_device(fsdp, tmp_path, cache_dir, capsys):
    """`lm-lab consolidate` makes one file of a sharded step-6 checkpoint: load_model reads it, and a single
    process resumes it (weights and optimizer state) to the losses of the sharded run."""
    from lm_lab.cli import main

    out = tmp_path / "step6.ckpt"
    assert main(["consolidate", str(fsdp / "checkpoints" / "step6.ckpt"), str(out)]) == 0
    assert "step 6" in capsys.readouterr().out
    cfg, model = load_model(out)
    assert cfg.n_layer == 2 and isinstance(model, GPT)
    state = read_checkpoint(out)
    assert isinstance(next(iter(state["optimizer_states"][0]["state"])), int)  # numbered, as torch's own
    run_dir = tmp_path / "resumed"
    ok(command(run_dir, *ONE, f"ckpt_path={out}"), cache_dir)
    close(step_losses(run_dir, 1), step_losses(fsdp, 2), range(7, 13))


def test_consolidate_refuses_what_is_not_a_sharded_checkpoint(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a sharded FSDP checkpoint"):
        consolidate(tmp_path / "x.ckpt", tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()


def test_a_swap_cut_short_between_its_renames_puts_the_old_checkpoint_back(tmp_path):
    old = tmp_path / ".last.ckpt.old-dir"  # the previous checkpoint moved aside; the new one never moved in
    old.mkdir()
    (old / "meta.pt").write_text("old")
    (tmp_path / ".last.ckpt.tmp-dir").mkdir()  # the unfinished new one
    recover_swaps(tmp_path)
    assert (tmp_path / "last.ckpt" / "meta.pt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# -- the strategies the trainer configs build --------------------------------------------------------------

VARIANTS = {
    "gpt2": {},
    "llama": {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False, "n_kv_head": 2},
    "denseformer": {"denseformer": True},
    "moe": {"block_pattern": "A,E", "moe_experts": 4},
    "brainformer": {"block_pattern": "A,F,E,F", "moe_experts": 4},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fsdp_wraps_exactly_the_transformer_blocks_of_every_variant(variant):
    cfg = ModelConfig(n_layer=3, n_head=4, d_model=64, block_size=32, vocab_size=128, **VARIANTS[variant])
    model = GPT(cfg)
    strategy = build_strategy("fsdp", FSDPConfig(activation_checkpointing=True), cfg)
    assert isinstance(strategy, ShardedStrategy)
    for policy in (strategy.kwargs["auto_wrap_policy"], strategy._activation_checkpointing_kwargs["auto_wrap_policy"]):
        units = policy._run_policy(model, ignored_modules=set(), root_kwargs={})
        assert set(units) == set(model.blocks)  # each block, nothing else (the rest is FSDP's root unit)
    assert all(isinstance(b, Block) for b in model.blocks) and len(model.blocks) == 3


def test_the_trainer_configs_build_their_strategies(monkeypatch):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)

    def trainer_of(*overrides):
        run = RunConfig.from_dict(compose([*overrides]))
        return run, run.trainer.lightning_kwargs(run.model)

    run, kw = trainer_of("trainer=fsdp", "trainer.fsdp.sharding_strategy=SHARD_GRAD_OP")
    strategy = kw["strategy"]
    assert isinstance(strategy, ShardedStrategy) and kw["precision"] == "bf16-mixed" and kw["accelerator"] == "gpu"
    assert strategy._state_dict_type == "sharded" and strategy.kwargs["use_orig_params"] is True
    assert strategy.sharding_strategy.name == "SHARD_GRAD_OP" and not strategy._activation_checkpointing_kwargs
    assert kw["num_nodes"] == 1 and "fsdp" not in kw
    run, kw = trainer_of("trainer=ddp")
    assert kw["strategy"] == "ddp" and kw["devices"] == "auto" and kw["num_nodes"] == 1
    run, kw = trainer_of("trainer=gpu")
    assert kw["precision"] == "bf16-mixed" and kw["strategy"] == "auto" and run.train.compile is True
    assert RunConfig.from_dict(compose(["trainer=gpu", "train.compile=false"])).train.compile is False
    # under SLURM: one task per GPU on each node, the job's nodes; Lightning's SLURM environment, requeue off
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4(x2)")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_NAME", "sweep")
    run, kw = trainer_of("trainer=ddp")
    assert (kw["devices"], kw["num_nodes"], run.trainer.world_size) == (4, 2, 8)
    (env,) = cluster_plugins()
    assert type(env).__name__ == "SLURMEnvironment" and env.auto_requeue is False
    run, kw = trainer_of("trainer=ddp", "trainer.devices=2", "trainer.num_nodes=1")  # explicit settings win
    assert (kw["devices"], kw["num_nodes"]) == (2, 1)


def test_fsdp_settings_and_combinations_are_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="trainer.fsdp.sharding_strategy='ZERO9' is unknown"):
        RunConfig.from_dict(compose(["trainer=fsdp", "trainer.fsdp.sharding_strategy=ZERO9"]))
    with pytest.raises(ConfigError, match="trainer.num_nodes='many'"):
        RunConfig.from_dict(compose(["trainer.num_nodes=many"]))
    from callbacks import AveragedWeights
    from lm_lab.train import fit

    run = RunConfig.from_dict(compose(["experiment=smoke", *FSDP]))
    with pytest.raises(ConfigError, match="weight averaging .* does not run under trainer.strategy=fsdp"):
        fit(run, tmp_path / "avg", callbacks=[AveragedWeights()])
    assert not (tmp_path / "avg" / "config.yaml").exists()


@pytest.mark.slow
def test_a_sharded_checkpoint_is_refused_without_fsdp(fsdp, tmp_path):
    from lm_lab.launch import fit_from_config

    cfg = compose(["experiment=smoke", *ONE, f"run_dir={tmp_path / 'run'}", f"ckpt_path={fsdp}/checkpoints/step6.ckpt"])
    with pytest.raises(
        ConfigError, match="is a sharded FSDP checkpoint: resume it with trainer=fsdp, or make one file"
    ):
        fit_from_config(cfg)
    assert not (tmp_path / "run" / "config.yaml").exists()


# -- SLURM through hydra-submitit-launcher ---------------------------------------------------------------------


def test_the_slurm_launcher_config_becomes_the_sbatch_script_submitit_submits(tmp_path, monkeypatch):
    """What `python run.py -m hydra/launcher=slurm ...` would submit for a 2-run sweep, without a cluster: the
    launcher built from the config, its executor's parameters, and the sbatch script submitit writes."""
    submitit = pytest.importorskip("submitit")
    from hydra.utils import instantiate

    fake = tmp_path / "bin" / "srun"  # submitit looks for srun before it builds a SLURM executor
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")

    cfg = compose(
        [
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.nodes=2",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.timeout_min=90",
            "hydra.launcher.array_parallelism=3",
            f"hydra.sweep.dir={tmp_path}",
        ],
        hydra_config=True,
    )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    captured = {}

    def capture(executor, fn, *args):
        captured["executor"], captured["jobs"] = executor, list(zip(*args, strict=True))
        raise RuntimeError("captured")  # nothing is submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    with pytest.raises(RuntimeError, match="captured"):
        launcher.launch([["model=gpt2_small"], ["model=gpt2_medium"]], initial_job_idx=0)
    slurm = captured["executor"]._executor
    script = submitit.slurm.slurm._make_sbatch_string(
        command="python -m submitit.core._submit", folder=slurm.folder, map_count=2, **slurm.parameters
    )
    for line in (
        "--partition=gpu",
        "--nodes=2",
        "--gpus-per-node=4",
        "--ntasks-per-node=4",  # one task per GPU
        "--cpus-per-task=8",
        "--mem=64GB",
        "--time=90",
        "--signal=USR2@120",  # before the time limit: LastCheckpoint saves, requeues
        "--array=0-1%2",  # one array of the sweep's jobs, at most array_parallelism at once
    ):
        assert f"#SBATCH {line}" in script, (line, script)
    assert slurm.max_num_timeout == 20
    assert [job[0] for job in captured["jobs"]] == [["model=gpt2_small"], ["model=gpt2_medium"]]
    assert OmegaConf.select(cfg, "hydra.launcher._target_").endswith("SlurmLauncher")


def test_requeue_asks_scontrol_for_this_job_or_array_task(tmp_path, monkeypatch):
    from lm_lab.strategies import requeue_slurm_job

    log = tmp_path / "scontrol.log"
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert requeue_slurm_job() == "job 4242 requeued"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert requeue_slurm_job() == "job 4200_3 requeued"
    assert log.read_text().splitlines() == ["requeue 4242", "requeue 4200_3"]
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert "scontrol is not on PATH" in requeue_slurm_job()
    shutil.rmtree(tmp_path / "bin")
