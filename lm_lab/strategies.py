"""Scale-out through Lightning's strategies: the `trainer.strategy` a config names, built for this model.

- `auto`, `ddp`, ...: Lightning's own (a string passed through).
- `fsdp`: Lightning's `FSDPStrategy` with the lab's settings (`FSDPConfig`): each transformer block (`Block`,
  the one block class of every variant: GPT-2, LLaMA-style, DenseFormer, MoE/Brainformer) is its own FSDP
  unit, so its parameters are gathered only while it runs; optional activation checkpointing per block;
  original parameters kept (`use_orig_params`: the optimizer's groups and `torch.compile` see the model's own
  tensors); sharded checkpoints written to a temporary folder and swapped into place (a crash mid-write leaves
  the previous checkpoint whole). `lm-lab consolidate` turns a sharded checkpoint into one file.

Nodes and ranks come from Lightning's cluster environments: under SLURM its `SLURMEnvironment` (with its own
requeue handler off: `callbacks.LastCheckpoint` saves at a step boundary, then `requeue_slurm_job`). The SLURM
variables the lab reads (`under_slurm`, `slurm_tasks_per_node`, `slurm_nodes`) are read here and nowhere else.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from lightning.pytorch.strategies import FSDPStrategy

from lm_lab.errors import raise_if
from lm_lab.models import ModelConfig
from lm_lab.models.gpt import Block

SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")


@dataclass
class FSDPConfig:
    """`trainer.fsdp`: read when `trainer.strategy=fsdp`."""

    sharding_strategy: str = "FULL_SHARD"
    """What is sharded: FULL_SHARD (parameters, gradients, optimizer state: ZeRO-3), SHARD_GRAD_OP (gradients and
    optimizer state: ZeRO-2), HYBRID_SHARD (full sharding within a node, replicas across nodes), NO_SHARD (DDP)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: less memory, about a third more compute."""
    state_dict_type: str = "sharded"
    """Checkpoints as `sharded` folders (each rank writes its part; `lm-lab consolidate` makes one file) or `full`
    files gathered on rank 0 (every tool reads them directly; slow and memory-hungry for big models)."""
    cpu_offload: bool = False
    """Keep parameters on the CPU between uses (slow; for models that do not fit otherwise)."""

    def __post_init__(self) -> None:
        problems = []
        if self.sharding_strategy not in SHARDING:
            problems.append(
                f"trainer.fsdp.sharding_strategy={self.sharding_strategy!r} is unknown; choose one of {list(SHARDING)}"
            )
        if self.state_dict_type not in ("sharded", "full"):
            problems.append(f"trainer.fsdp.state_dict_type={self.state_dict_type!r} must be `sharded` or `full`")
        for name in ("activation_checkpointing", "cpu_offload"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"trainer.fsdp.{name}={getattr(self, name)!r} must be true or false")
        raise_if(problems)


def wrap_classes(model: ModelConfig) -> set[type[torch.nn.Module]]:
    """The modules FSDP shards as units: the transformer blocks. Every variant builds its layers as `Block`s
    (`block_pattern` chooses their sublayers); embeddings, DenseFormer's DWA weights and the head stay in the
    root unit."""
    return {Block}


def build_strategy(strategy: str, fsdp: FSDPConfig, model: ModelConfig) -> str | FSDPStrategy:
    """The Trainer's `strategy` argument for `trainer.strategy`."""
    if strategy != "fsdp":
        return strategy
    blocks = wrap_classes(model)
    return ShardedStrategy(
        auto_wrap_policy=blocks,
        activation_checkpointing_policy=blocks if fsdp.activation_checkpointing else None,
        sharding_strategy=fsdp.sharding_strategy,
        state_dict_type=fsdp.state_dict_type,
        cpu_offload=fsdp.cpu_offload,
        use_orig_params=True,
        limit_all_gathers=True,
    )


def cluster_plugins() -> list:
    """Lightning's SLURM environment when running under SLURM, with Lightning's own requeue handler off (it saves
    inside the signal handler, possibly mid-step; `LastCheckpoint` saves at the next step boundary instead)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if under_slurm() else []


def under_slurm() -> bool:
    """Running as a SLURM job step (not an interactive shell on an allocation): Lightning's own test."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def slurm_tasks_per_node() -> int | None:
    """The SLURM job's tasks (processes) per node, or None outside SLURM."""
    return _slurm_count("SLURM_NTASKS_PER_NODE")


def slurm_nodes() -> int | None:
    """The SLURM job's node count, or None outside SLURM."""
    return _slurm_count("SLURM_JOB_NUM_NODES") or _slurm_count("SLURM_NNODES")


def _slurm_count(name: str) -> int | None:
    """A SLURM count variable as an int (`4(x2)`, SLURM's per-node list for uniform nodes, is 4)."""
    value = os.environ.get(name, "").split("(")[0].split(",")[0]
    return int(value) if value.isdigit() and int(value) > 0 else None


def requeue_slurm_job() -> str:
    """Put this SLURM job back in the queue, as Lightning's SLURM auto-requeue does (`scontrol requeue JOB`, an
    array task as ARRAYJOB_TASK); what happened, in words."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID", "")
    if not re.fullmatch(r"[0-9_]+", job):
        return f"not requeued (no SLURM job id, SLURM_JOB_ID={job!r})"
    try:
        code = subprocess.call(["scontrol", "requeue", job])
    except FileNotFoundError:
        return f"not requeued: scontrol is not on PATH (job {job})"
    return f"job {job} requeued" if code == 0 else f"requeueing job {job} failed (scontrol exit status {code})"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """A sharded FSDP checkpoint: a folder with torch distributed checkpoint's `.metadata` and Lightning's `meta.pt`."""
    path = Path(path)
    return path.is_dir() and (path / ".metadata").is_file() and (path / "meta.pt").is_file()


class ShardedStrategy(FSDPStrategy):
    """Lightning's `FSDPStrategy`, with two additions:

    - sharded checkpoints are atomic: written to `.NAME.tmp-dir` beside the target, then swapped into place;
    - on a CPU accelerator (gloo) the model is wrapped with `device_id=cpu`: torch's FSDP runs there, Lightning's
      check refuses it. For tests and laptop smoke runs of the sharded path; real runs use GPUs.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        target = Path(self.broadcast(str(filepath)))
        temp = target.parent / f".{target.name}.tmp-dir"
        if self.global_rank == 0 and temp.exists():
            shutil.rmtree(temp)  # a write cut short earlier
        self.barrier("sharded_checkpoint_start")
        super().save_checkpoint(checkpoint, temp, storage_options)
        self.barrier("sharded_checkpoint_written")
        if self.global_rank == 0:
            swap_into_place(temp, target)
        self.barrier("sharded_checkpoint_done")

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        import torch.distributed.fsdp as fsdp

        with mock.patch.object(fsdp, "FullyShardedDataParallel", _OnCPU):
            return super()._setup_model(model)


class _OnCPU(torch.distributed.fsdp.FullyShardedDataParallel):
    def __init__(self, *args, device_id=None, **kwargs):
        super().__init__(*args, device_id=torch.device("cpu"), **kwargs)


def swap_into_place(new: Path, target: Path) -> None:
    """Replace the folder or file `target` with the folder `new`. Between the two renames a crash leaves
    `.NAME.old-dir` holding the previous checkpoint (`resume_checkpoint` puts it back)."""
    old = target.parent / f".{target.name}.old-dir"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


def recover_swaps(checkpoint_dir: Path) -> None:
    """Undo a swap cut short between its renames (the old checkpoint back in place) and remove unfinished writes."""
    for old in checkpoint_dir.glob(".*.old-dir"):
        target = checkpoint_dir / old.name[1 : -len(".old-dir")]
        if target.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(old, target)
    for temp in checkpoint_dir.glob(".*.tmp-dir"):
        shutil.rmtree(temp)
