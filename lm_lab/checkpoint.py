"""Checkpoints that survive crashes: checks before resuming, safe loads, and the random state.

Checkpoints are read with `weights_only=True`: nothing in them can run code. Before a run resumes, its
checkpoint is opened and checked; a corrupt one is reported by name, and with `ckpt_path=last` the newest
good checkpoint of the run is used instead. (Writing is atomic: see `checkpoint_io.py`.)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lm_lab.errors import ConfigError
from lm_lab.fileio import atomic_open
from lm_lab.inherit.surgery import every_other, half_width, hybrid_stack, inherit, stack
from lm_lab.models import GPT, ModelConfig
from lm_lab.optim import OptimizerConfig
from lm_lab.strategies import is_sharded_checkpoint, recover_swaps

log = logging.getLogger(__name__)


def read_checkpoint(path: Path) -> dict:
    """Open a checkpoint safely (`weights_only=True`, memory-mapped) and check it is a complete training state.

    A sharded FSDP checkpoint (a folder) is read without its tensors: its metadata, and the model's tensors as
    meta-device placeholders with their shapes (enough to check a resume); `ckpt["sharded"]` is then True."""
    if is_sharded_checkpoint(path):
        return _read_sharded(Path(path))
    if Path(path).is_dir():
        raise ConfigError(f"checkpoint {path} is a folder but not a sharded FSDP checkpoint (no .metadata and meta.pt)")
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


def _read_sharded(path: Path) -> dict:
    from torch.distributed.checkpoint import FileSystemReader

    try:
        ckpt = torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
        tensors = FileSystemReader(path).read_metadata().state_dict_metadata
    except Exception as e:
        raise ConfigError(
            f"sharded checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from e
    if "global_step" not in ckpt or not any(k.startswith("model.") for k in tensors):
        raise ConfigError(f"checkpoint {path} is not a training checkpoint of this lab (no global_step or model)")
    ckpt["state_dict"] = {  # the saved keys are `model.` + the LightningModule's state-dict keys
        k.removeprefix("model."): torch.empty(tuple(md.size), dtype=md.properties.dtype, device="meta")
        for k, md in tensors.items()
        if k.startswith("model.") and hasattr(md, "size")
    }
    ckpt["sharded"] = True
    return ckpt


def full_checkpoint(path: str | Path) -> dict:
    """A sharded FSDP checkpoint gathered in memory as one checkpoint dict (the optimizer state numbered as a plain
    optimizer's); a checkpoint file as it is."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint

    path = Path(path)
    if not is_sharded_checkpoint(path):
        return read_checkpoint(path)
    ckpt = _format_checkpoint(_load_distributed_checkpoint(path))
    ckpt["optimizer_states"] = [_indexed_optimizer_state(s) for s in ckpt.get("optimizer_states", [])]
    return ckpt


def consolidate(path: str | Path, out: str | Path) -> dict:
    """One checkpoint file from a sharded FSDP checkpoint folder (Lightning's consolidation: torch distributed
    checkpoint's loader, no process group needed), with the optimizer state keyed as a plain optimizer's (by
    parameter index), so single-device runs resume it, `load_model` and every tool read it. Written atomically;
    returns the checkpoint."""
    path, out = Path(path), Path(out)
    if not is_sharded_checkpoint(path):
        raise ConfigError(f"{path} is not a sharded FSDP checkpoint (a folder with .metadata and meta.pt)")
    ckpt = full_checkpoint(path)
    with atomic_open(out, "wb") as f:
        torch.save(ckpt, f)
    return ckpt


def _indexed_optimizer_state(state: dict) -> dict:
    """FSDP's optimizer state dict (parameters named) as `torch.optim.Optimizer.state_dict()` gives it (parameters
    numbered in the order of the groups' lists)."""
    names = [name for group in state["param_groups"] for name in group["params"]]
    if not names or not isinstance(names[0], str):
        return state
    index = {name: i for i, name in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def resume_checkpoint(
    ckpt_path: str | None, checkpoint_dir: Path, clean: bool = True
) -> tuple[Path | None, dict | None]:
    """The checkpoint a run resumes from, opened and checked, or (None, None) for a fresh start.

    `last`: the run directory's newest good checkpoint (last.ckpt, or if that is damaged the newest other one,
    with a warning naming both); a fresh start when there is none. A path: that file, or an error naming the
    newest good alternative.
    """
    if ckpt_path is None:
        return None, None
    for stale in checkpoint_dir.glob(".*.tmp") if clean and checkpoint_dir.is_dir() else []:
        stale.unlink()  # a write cut short by a crash: never a checkpoint (only the run's lock holder cleans)
    if clean and checkpoint_dir.is_dir():
        recover_swaps(checkpoint_dir)  # a sharded checkpoint's swap cut short
    found, damaged = [], []
    for path in sorted(checkpoint_dir.glob("*.ckpt")) if checkpoint_dir.is_dir() else []:
        try:
            found.append((path, read_checkpoint(path)))
        except ConfigError as e:
            damaged.append((path, e.problems[0]))
    # newest first by training step (last.ckpt first among equals): a crash between two writes loses nothing;
    # a checkpoint saved just before a validation only if there is no other (resumed, it would skip that validation)
    found.sort(key=lambda pc: (_before_validation(pc[1]), -pc[1]["global_step"], pc[0].name != "last.ckpt"))
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
            log.warning(
                "%s; resuming from the newest good checkpoint instead: %s (step %d)",
                "; ".join(m for _, m in damaged),
                path,
                ckpt["global_step"],
            )
        return path, ckpt
    if damaged:
        raise ConfigError(
            "; ".join(m for _, m in damaged)
            + "; no good checkpoint is left to resume from: start afresh with ckpt_path=null"
        )
    return None, None


def _before_validation(ckpt: dict) -> bool:
    return any(
        v.get("before_validation", False)
        for k, v in ckpt.get("callbacks", {}).items()
        if k.startswith("LastCheckpoint")
    )


def model_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """The state-dict shapes of the model `cfg` builds, from a model on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = GPT(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def model_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The model's tensors in a lab checkpoint (the LightningModule's `model.` prefix removed)."""
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def tensor_problems(
    expected: dict[str, torch.Size], found: dict[str, torch.Tensor], limit: int = 6, partial: bool = False
) -> list[str]:
    """Missing, unexpected and mismatched tensors of `found` against the shapes a model expects, named;
    `partial`: tensors may be missing (they keep the model's fresh initialisation)."""

    def names(keys: list[str]) -> str:
        more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    missing = [] if partial else [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        f"{k} {tuple(found[k].shape)} vs {tuple(v)}" for k, v in expected.items() if k in found and found[k].shape != v
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {names(unexpected)}")
    if mismatched:
        problems.append(f"mismatched shapes (checkpoint vs this model): {names(mismatched)}")
    return problems


# the data settings that decide which tokens a run reads (a resume or fork with others would read other tokens)
DATA_IDENTITY = (
    "source",
    "path",
    "config",
    "revision",
    "split",
    "text_field",
    "mode",
    "val_fraction",
    "val_split_tokens",
    "val_from",
)


def check_compatible(path: Path, ckpt: dict, run) -> None:
    """Refuse, before anything is written, a checkpoint this run cannot continue: its tensors do not fit the
    model this run builds (judged by comparing shapes with a meta-built model), its optimizer is another, or
    the data it restores would be other tokens than it read."""
    saved = ckpt.get("hyper_parameters", {})
    problems = tensor_problems(model_shapes(run.model), model_state(ckpt))
    if problems:  # name the config fields that differ, the likely cause
        saved_model = saved.get("model", {})
        mine = asdict(run.model)
        problems = [
            f"model.{k}: checkpoint {v!r}, this run {mine[k]!r}"
            for k, v in saved_model.items()
            if k in mine and k != "name" and v != mine[k]
        ] + problems
    else:  # same shapes: fields that change the model without changing a shape still must agree
        problems = architecture_problems(saved.get("model", {}), run.model)
    saved_optimizer = saved.get("optimizer", {}).get("name")
    if saved_optimizer is not None and saved_optimizer != run.optimizer.name:
        problems.append(f"optimizer.name: checkpoint {saved_optimizer!r}, this run {run.optimizer.name!r}")
    saved_decay = saved.get("optimizer", {}).get("decay_embeddings", True)  # older checkpoints decayed embeddings
    if saved.get("optimizer") and saved_decay != run.optimizer.decay_embeddings:
        problems.append(
            f"optimizer.decay_embeddings: checkpoint {saved_decay!r}, this run {run.optimizer.decay_embeddings!r} "
            f"(the parameter groups differ)"
        )
    saved_data = ckpt.get("LMDataModule", {})
    identity = {
        "data": run.data.name,
        "mode": run.data.mode,
        "seq_len": run.train.seq_len,
        "batch_size": run.train.batch_size,
        "seed": run.train.seed,
    }
    for key, value in identity.items():
        if key in saved_data and saved_data[key] != value:
            problems.append(
                f"{'data.name' if key == 'data' else key}: checkpoint {saved_data[key]!r}, this run {value!r}"
            )
    mine = asdict(run.data)
    for key in DATA_IDENTITY:
        if saved.get("data") and key in saved["data"] and saved["data"][key] != mine[key] and key != "mode":
            problems.append(f"data.{key}: checkpoint {saved['data'][key]!r}, this run {mine[key]!r}")
    if problems:
        raise ConfigError(
            f"checkpoint {path} does not fit this run ({'; '.join(problems)}); resume with the settings it was "
            f"trained with, or start afresh in another hydra.run.dir (or with ckpt_path=null)"
        )


# ModelConfig fields that change what the model computes while keeping every tensor's shape
ARCHITECTURE = (
    "norm",
    "mlp",
    "positions",
    "rope_theta",
    "tie_embeddings",
    "attn_scale_by_layer",
    "block_pattern",
    "denseformer",
    "moe_top_k",
    "moe_capacity_factor",
    "moe_expert_mlp",
    "moe_balance_coef",
    "moe_z_coef",
)


def architecture_problems(saved_model: dict, model: ModelConfig) -> list[str]:
    """The architecture fields where a checkpoint's model (missing fields: their defaults, as older checkpoints
    were written before the field existed) and this run's differ."""
    if not saved_model:
        return []
    defaults, mine = ModelConfig.__dataclass_fields__, asdict(model)
    return [
        f"model.{k}: checkpoint {saved_model.get(k, defaults[k].default)!r}, this run {mine[k]!r}"
        for k in ARCHITECTURE
        if saved_model.get(k, defaults[k].default) != mine[k]
    ]


def check_fork_optimizer(path: Path, ckpt: dict, optimizer: OptimizerConfig, allow: bool = False) -> None:
    """A fork continues one trajectory: with another peak LR, betas or weight decay it would match no single run
    (a cooldown fork must equal one WSD run), so a difference is refused unless `allow`."""
    saved = ckpt.get("hyper_parameters", {}).get("optimizer", {})
    mine = asdict(optimizer)
    differ = [
        f"optimizer.{k}: source {saved[k]!r}, fork {mine[k]!r}"
        for k in ("lr", "betas", "weight_decay")
        if k in saved and tuple(_list(saved[k])) != tuple(_list(mine[k]))
    ]
    if differ and not allow:
        raise ConfigError(
            f"init=fork of {path} changes the optimizer ({'; '.join(differ)}); use the source run's settings, or "
            f"set init.allow_optimizer_change=true to fork on purpose with others"
        )


def _list(value) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def start_weights(init, model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The starting weights of an `init=weights` or weight-surgery run (see `InitConfig`) for the model `model_cfg`
    builds, checked against it: a ConfigError names every unknown or mismatched tensor (and, for `weights`
    without `init.map`, every missing one). A surgery or a map may leave tensors out: they keep their init."""
    if init.name == "weights":
        path = Path(init.path).expanduser()
        source_cfg, state = read_source(path)
        fn = init.map_fn()
        if fn is not None:
            state = fn(state, source_cfg, model_cfg)
        how = f"init.map={init.map!r}" if fn is not None else "no init.map (weights as they are)"
        what = f"the weights of {path} ({source_cfg.name}: {source_cfg.n_layer} layers, d_model {source_cfg.d_model})"
        partial = fn is not None
    else:
        state = surgery_weights(init, model_cfg)
        what, how, partial = f"the weights init={init.name} makes", "its surgery", True
    expected = model_shapes(model_cfg)
    problems = tensor_problems(expected, state, partial=partial)
    tied = model_cfg.tie_embeddings and {"wte.weight", "lm_head.weight"} <= state.keys()
    if not problems and tied and not torch.equal(state["wte.weight"], state["lm_head.weight"]):
        problems.append(  # a tied model would load the head over the embedding: one of the two would be lost
            "lm_head.weight differs from wte.weight (the source's head is untied) but this model ties them: set "
            "model.tie_embeddings=false, or map one onto the other with init.map"
        )
    if problems:
        raise ConfigError(
            f"{what} do not fit this model ({model_cfg.n_layer} layers, d_model {model_cfg.d_model}) with {how}: "
            + "; ".join(problems)
        )
    shared = model_cfg.tie_embeddings and "wte.weight" in state  # the tied head is the embedding's tensor
    fresh = [k for k in expected if k not in state and not (shared and k == "lm_head.weight")]
    sources = " and ".join(p for p in (init.path, init.reference) if p)
    log.info(
        "init=%s: starting from %d tensors of %s and %d fresh ones (a fresh optimizer, step 0)",
        init.name,
        len(expected) - len(fresh),
        sources,
        len(fresh),
    )
    return state


def surgery_weights(init, model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The (partial) state dict a weight-surgery init gives `model_cfg`, from `init.path` and `init.reference`."""
    if init.name == "stacking":
        source_cfg, state = read_source(init.path)
        return stack(state, source_cfg, model_cfg)
    ref_cfg, ref = read_source(init.reference)
    if init.name == "inheritune" and init.path:  # Algorithm 1's grow step: the trained target, then ref's blocks
        source_cfg, state = read_source(init.path)
        return inherit(state, source_cfg, model_cfg, init.modules, reference=(ref, ref_cfg))
    if init.name == "inheritune":
        return inherit(ref, ref_cfg, model_cfg, init.modules)
    if init.name == "hybrid_stacking":
        return hybrid_stack(ref, ref_cfg, model_cfg)
    if init.name == "half_width":
        return half_width(ref, ref_cfg, model_cfg)
    if init.name == "every_other":
        return every_other(ref, ref_cfg, model_cfg)
    raise ConfigError(f"init={init.name} is not a weight surgery")


def read_source(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and weights of a source model for `init=weights` and the surgeries: a lab checkpoint file, a
    lab run directory or a local Hugging Face folder (GPT-2 or LLaMA, lm_lab/hf.py)."""
    from lm_lab.hf import is_hf_folder, read_hf  # (lazily: hf.py imports this module)

    return read_hf(path) if is_hf_folder(path) else read_model_state(path)


def read_model_state(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The model config and weights of a lab checkpoint file or run directory (its checkpoints/last.ckpt)."""
    path = Path(path).expanduser()
    if path.is_dir() and not is_sharded_checkpoint(path):
        path = path / "checkpoints" / "last.ckpt" if (path / "checkpoints").is_dir() else path / "last.ckpt"
    if is_sharded_checkpoint(path):
        raise ConfigError(
            f"{path} is a sharded FSDP checkpoint; make one file of it first: lm-lab consolidate {path} OUT.ckpt"
        )
    if not path.is_file():
        raise ConfigError(f"{path} not found; give a lab checkpoint (RUN/checkpoints/last.ckpt) or a run directory")
    ckpt = read_checkpoint(path)
    saved = ckpt.get("hyper_parameters", {}).get("model")
    if saved is None:
        raise ConfigError(f"checkpoint {path} has no model config (hyper_parameters.model): not an lm_lab checkpoint")
    return ModelConfig(**saved), model_state(ckpt)


def load_model(path: str | Path) -> tuple[ModelConfig, GPT]:
    """Any lab checkpoint (or run directory) as its config and the model with its weights, in eval mode.

    Schedule-free checkpoints hold the evaluation weights x (see `LMModule`), so this is always the model to
    evaluate, sample from or export."""
    cfg, state = read_model_state(path)
    with torch.device("meta"):
        model = GPT(cfg)
    model.load_state_dict(state, assign=True)  # the checkpoint's tensors become the parameters: no second copy
    model.tie_weights()  # assign=True replaced the tied tensor: tie it again
    return cfg, model.eval()


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
        # a copy, not a view into the saved (world, n) tensor: torch.set_rng_state segfaults on a view (rank >= 1)
        return per_rank[rank].clone() if per_rank is not None and len(per_rank) == world_size else state[key]

    torch.set_rng_state(mine("torch").cpu())
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine("cuda").cpu())  # the current device's generator
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
