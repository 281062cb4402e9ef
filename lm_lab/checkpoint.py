"""Checkpoints that survive crashes: checks before resuming, safe loads, and the random state.

Checkpoints are read with `weights_only=True`: nothing in them can run code. Before a run resumes, its
checkpoint is opened and checked; a corrupt one is reported by name, and with `ckpt_path=last` the newest
good checkpoint of the run is used instead. (Writing is atomic: see `checkpoint_io.py`.)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lm_lab.errors import ConfigError

log = logging.getLogger(__name__)


def read_checkpoint(path: Path) -> dict:
    """Open a checkpoint safely (`weights_only=True`, memory-mapped) and check it is a complete training state."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated zip, garbage, or objects that are not plain data
        raise ConfigError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from e
    missing = [k for k in ("state_dict", "global_step", "loops", "optimizer_states") if k not in ckpt]
    if missing:
        raise ConfigError(f"checkpoint {path} is not a training checkpoint of this lab (missing {missing})")
    return ckpt


def resume_checkpoint(ckpt_path: str | None, checkpoint_dir: Path) -> tuple[Path | None, dict | None]:
    """The checkpoint a run resumes from, opened and checked, or (None, None) for a fresh start.

    `last`: the run directory's newest good checkpoint (last.ckpt, or if that is damaged the newest other one,
    with a warning naming both); a fresh start when there is none. A path: that file, or an error naming the
    newest good alternative.
    """
    if ckpt_path is None:
        return None, None
    for stale in checkpoint_dir.glob(".*.tmp") if checkpoint_dir.is_dir() else []:
        stale.unlink()  # a write cut short by a crash: never a checkpoint
    found, damaged = [], []
    for path in sorted(checkpoint_dir.glob("*.ckpt")) if checkpoint_dir.is_dir() else []:
        try:
            found.append((path, read_checkpoint(path)))
        except ConfigError as e:
            damaged.append((path, e.problems[0]))
    # newest first by training step (last.ckpt first among equals): a crash between two writes loses nothing
    found.sort(key=lambda pc: (-pc[1]["global_step"], pc[0].name != "last.ckpt"))
    if ckpt_path != "last":
        path = Path(ckpt_path).expanduser()
        if not path.exists():
            raise ConfigError(f"ckpt_path={ckpt_path!r} does not exist; give a checkpoint file or `last`")
        try:
            return path, read_checkpoint(path)
        except ConfigError as e:
            good = [(p, c) for p, c in found if p.resolve() != path.resolve()]
            hint = (
                f"; the newest good checkpoint here is {good[0][0]} (step {good[0][1]['global_step']})" if good else ""
            )
            raise ConfigError(e.problems[0] + hint) from None
    if found:
        path, ckpt = found[0]
        if damaged:
            log.warning("%s; resuming from the newest good checkpoint instead: %s (step %d)",
                        "; ".join(m for _, m in damaged), path, ckpt["global_step"])  # fmt: skip
        return path, ckpt
    if damaged:
        raise ConfigError(
            "; ".join(m for _, m in damaged)
            + "; no good checkpoint is left to resume from: start afresh with ckpt_path=null"
        )
    return None, None


def check_compatible(path: Path, ckpt: dict, model: dict, data: dict, optimizer: str | None = None) -> None:
    """Refuse, before anything is written, a checkpoint whose model, optimizer or batch geometry differs from
    this run's: its weights or optimizer state would not load, or the data it restores would be other tokens
    than it read."""
    problems = []
    saved_optimizer = ckpt.get("hyper_parameters", {}).get("optimizer", {}).get("name")
    if optimizer is not None and saved_optimizer is not None and saved_optimizer != optimizer:
        problems.append(f"optimizer.name: checkpoint {saved_optimizer!r}, this run {optimizer!r}")
    saved_model = ckpt.get("hyper_parameters", {}).get("model", {})
    for key in ("n_layer", "n_head", "d_model", "d_ff", "block_size", "vocab_size", "pad_vocab_multiple", "bias"):
        if key in saved_model and saved_model[key] != model.get(key):
            problems.append(f"model.{key}: checkpoint {saved_model[key]!r}, this run {model.get(key)!r}")
    saved_data = ckpt.get("LMDataModule", {})
    for key, value in data.items():  # the keys of the data module's identity this run knows before reading data
        if key in saved_data and saved_data[key] != value:
            problems.append(f"{key}: checkpoint {saved_data[key]!r}, this run {value!r}")
    if problems:
        raise ConfigError(
            f"checkpoint {path} does not fit this run ({'; '.join(problems)}); resume with the settings it was "
            f"trained with, or start afresh in another hydra.run.dir (or with ckpt_path=null)"
        )


def rng_state(gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """The random state of torch (CPU and the current CUDA device), numpy and Python, as plain data (safe to load).

    `gather` (an all-gather across ranks) adds every rank's torch states, so each rank of a resumed multi-GPU
    run continues its own sequence of dropout masks.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "python": {"version": version, "internal": list(internal), "gauss": py_gauss},
    }
    if gather is not None:
        state["torch_per_rank"] = gather(state["torch"])
        if state["cuda"] is not None:
            state["cuda_per_rank"] = gather(state["cuda"])
    return state


def set_rng_state(state: dict, rank: int = 0, world_size: int = 1) -> None:
    def mine(key: str) -> torch.Tensor | None:
        per_rank = state.get(f"{key}_per_rank")
        return per_rank[rank] if per_rank is not None and len(per_rank) == world_size else state[key]

    torch.set_rng_state(mine("torch").cpu())
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine("cuda").cpu())  # the current device's generator
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
