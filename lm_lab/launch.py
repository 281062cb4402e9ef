"""Hydra at the edge: a composed config -> typed `RunConfig` + instantiated callbacks and loggers -> `fit`.

`run.py` (the command line) and `lm-lab cooldowns` (in-process forks) both come through here; library users
call `lm_lab.train.fit` directly with a `RunConfig`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from lm_lab.config import DERIVED_TRAINER_ARGS, RunConfig
from lm_lab.errors import ConfigError
from lm_lab.results import Results

EXIT_CODES = {"max_steps": 0, "budget": 0, "stopped": 0, "interrupted": 130, "non_finite": 3, "failed": 1}


def fit_from_config(cfg: DictConfig, overrides: Sequence[str] = ()) -> Results:
    """Train the run a composed Hydra config describes (`run_dir` and `ckpt_path` from its root); a config with an
    `inheritune:` node (experiment=inheritune) runs Inheritune's loop of runs instead and returns its last run's."""
    from lm_lab.train import fit

    if cfg.get("inheritune") is not None:
        return _inheritune(cfg, overrides)
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    run = RunConfig.from_dict(plain)  # every group checked, every `_target_` importable: before any work
    return fit(run, plain["run_dir"], resume=plain.get("ckpt_path", "last"), overrides=overrides, **_objects(cfg))


def _objects(cfg: DictConfig) -> dict:
    """The callbacks, loggers and checkpoint writer a config names, instantiated, and what to record of them."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    def build(where: str, node):
        try:
            return instantiate(node)
        except InstantiationException as e:
            cause = e.__cause__ or e
            raise ConfigError(f"{where}: {type(cause).__name__}: {str(cause).splitlines()[0]}") from None

    plain = OmegaConf.to_container(cfg, resolve=True)
    return {
        "callbacks": [build(f"callbacks.{name}", node) for name, node in cfg.callbacks.items()],
        "loggers": [build(f"logger.{name}", node) for name, node in (cfg.get("logger") or {}).items()],
        "checkpoint_io": build("checkpoint_io", cfg.checkpoint_io) if cfg.get("checkpoint_io") else None,
        "record": {k: plain.get(k) for k in ("callbacks", "logger", "checkpoint_io", "ckpt_path")},
    }


def _inheritune(cfg: DictConfig, overrides: Sequence[str]) -> Results:
    """experiment=inheritune: the grow loop, or the baseline `init=` names (random, stacking, hybrid_stacking,
    half_width), from `init.reference`; each run with the config's callbacks and loggers pointed at its own
    directory. The loop makes each run's init itself, so the command's init group only chooses what to run."""
    from omegaconf import open_dict

    from lm_lab.inherit.grow import Inheritune, InherituneConfig, Stopped, format_table

    chosen = OmegaConf.to_container(cfg.init, resolve=True, throw_on_missing=False)
    reference = chosen.get("reference")
    if reference in (None, "???"):
        raise ConfigError("experiment=inheritune needs init.reference=PATH (the trained reference model)")
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.init = {"name": "inheritune", "reference": reference, "modules": chosen.get("modules", "attn_mlp_ln")}
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    run = RunConfig.from_dict(plain)
    settings = InherituneConfig.from_dict(plain["inheritune"])

    def fit_kwargs(run_dir) -> dict:
        stage = cfg.copy()
        with open_dict(stage):
            stage.run_dir = str(run_dir)
        return _objects(stage)

    loop = Inheritune(
        run,
        plain["run_dir"],
        settings,
        fit_kwargs=fit_kwargs,
        overrides=overrides,
        init=chosen.get("name", "inheritune"),
    )
    try:
        rows = loop.run_all()
    except Stopped as e:
        return e.results
    print(format_table(rows))
    return loop.last_results


def report_errors(problems: Sequence[str]) -> None:
    for line in problems:
        print(f"error: {line}", file=sys.stderr)


def hydra_error_line(e: BaseException) -> str:
    """One line for a Hydra or OmegaConf composition error (unknown option or key, a type error)."""
    text = " ".join(str(e).split())
    for noise in (" Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.",):
        text = text.replace(noise, "")
    text = text.split(" Config search path:")[0].replace(" schema", "")  # the groups' typed schemas are no option
    cause = e.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({' '.join(str(cause).split())})"
    for key, setting in DERIVED_TRAINER_ARGS.items():
        if f"'{key}'" in text and "TrainerConfig" in text:
            text += f"; the lab sets trainer.{key} itself, from {setting}"
    return text
