"""Checkpoints that survive crashes: checks before resuming, safe loads, and the random state.

Checkpoints are read with `weights_only=True`: nothing in them can run code. Before a run resumes, its
checkpoint is opened and checked; a corrupt one is reported by name, and with `ckpt_path=last` the newest
good checkpoint of the run is used instead. (Writing is atomic: see `checkpoint_io.py`.)
"""

from __future__ import annotations

import logging
import random
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
    candidates = (
        sorted(checkpoint_dir.glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime))
        if checkpoint_dir.is_dir()
        else []
    )
    if ckpt_path != "last":
        path = Path(ckpt_path).expanduser()
        if not path.exists():
            raise ConfigError(f"ckpt_path={ckpt_path!r} does not exist; give a checkpoint file or `last`")
        try:
            return path, read_checkpoint(path)
        except ConfigError as e:
            good = _first_good([c for c in candidates if c.resolve() != path.resolve()])
            hint = f"; the newest good checkpoint here is {good[0]} (step {good[1]['global_step']})" if good else ""
            raise ConfigError(e.problems[0] + hint) from None
    damaged = []
    for path in candidates:
        try:
            ckpt = read_checkpoint(path)
        except ConfigError as e:
            damaged.append(e.problems[0])
            continue
        if damaged:
            log.warning(
                "%s; resuming from the newest good checkpoint instead: %s (step %d)",
                "; ".join(damaged),
                path,
                ckpt["global_step"],
            )
        return path, ckpt
    if damaged:
        raise ConfigError(
            "; ".join(damaged) + "; no good checkpoint is left to resume from: start afresh with ckpt_path=null"
        )
    return None, None


def _first_good(paths: list[Path]) -> tuple[Path, dict] | None:
    for path in paths:
        try:
            return path, read_checkpoint(path)
        except ConfigError:
            continue
    return None


def rng_state() -> dict:
    """The global random state of torch (CPU and CUDA), numpy and Python, as plain data (safe to load)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "python": {"version": version, "internal": list(internal), "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
