"""Train a language model: `python run.py [experiment=NAME] [model=NAME] [group.key=value ...]`.

Hydra glue around `lm_lab.train.fit`: compose the config (conf/), build the typed `RunConfig`, instantiate the
callbacks and loggers, train, and turn the outcome into an exit status (0 done, 2 bad config or input, 3
non-finite, 130 interrupted, 1 failed) and, for sweepers, the final validation loss.

The same command with the same `hydra.run.dir` resumes the run from its last checkpoint (`ckpt_path=last`).
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from lm_lab.config import check_run_dir, register_schemas
from lm_lab.errors import ConfigError
from lm_lab.launch import EXIT_CODES, fit_from_config, hydra_error_line, report_errors
from lm_lab.lock import remove_if_empty

# flags of Hydra's command line that take a value, and those after which nothing is trained
_FLAG_VALUES = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--info",
    "--experimental-rerun",
}
_NO_RUN = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc", "--version"}
# another primary config or search path: only Hydra itself composes what the command line means then
_OTHER_CONFIG = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}


def check_command_line(argv: list[str]) -> None:
    """Compose the config the command line asks for (the first point of a sweep) before Hydra runs anything, so
    an unknown option or key or a type error is one line and exit status 2, like every other config error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lm_lab.config import compose

    if any(a.split("=")[0] in _NO_RUN | _OTHER_CONFIG for a in argv):
        return
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides, skip = [], False
    for arg in argv:
        if skip or arg.startswith("-"):
            skip = not skip and arg in _FLAG_VALUES
            continue
        overrides.append(arg)
    try:
        first = []
        for o in OverridesParser.create().parse_overrides(overrides):
            if o.is_sweep_override():
                try:  # a glob sweep needs Hydra's config loader: checked by the runs it makes
                    values = iter(o.sweep_string_iterator()) if o.is_discrete_sweep() else iter(())
                    value = next(values, None)
                except Exception:
                    value = None
                if value is None:
                    continue  # an interval for a sweeper to sample: checked by the run it makes
                first.append(f"{o.get_key_element()}={value}")
            else:
                first.append(o.input_line)
        cfg = compose(first, hydra_config=True)
        out = cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir  # Hydra makes it before the run starts
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {hydra_error_line(e)}", file=sys.stderr)
        sys.exit(2)
    try:
        check_run_dir(out)
    except ConfigError as e:
        report_errors(e.problems)
        sys.exit(2)


def _one_copy_of_lightning_logs() -> None:
    """Lightning's loggers print through their own handler and Hydra's root handler: keep Hydra's (console and
    run.log), so each line appears once."""
    import lightning.pytorch  # noqa: F401  (its import adds the handler)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]:
            logger.removeHandler(handler)
        logger.propagate = True


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"), config_name="config")
def main(cfg: DictConfig) -> float:
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # memmap windows need none
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # Lightning vs newer torch
    _one_copy_of_lightning_logs()
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    try:
        results = fit_from_config(cfg, overrides)
    except ConfigError as e:
        report_errors(e.problems)
        remove_if_empty(Path(cfg.run_dir))  # a refused first start leaves no empty run directory
        sys.exit(2)
    except MissingMandatoryValue as e:  # a `???` in a config group, e.g. data=local without data.path
        report_errors([f"{e.full_key} is required (e.g. {e.full_key}=...)"])
        remove_if_empty(Path(cfg.run_dir))
        sys.exit(2)
    except InterpolationResolutionError as e:  # a resolver's ConfigError (experiment=width_depth), a bad ${...}
        cause = e
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        report_errors(cause.problems if cause is not None else [hydra_error_line(e)])
        remove_if_empty(Path(cfg.run_dir))
        sys.exit(2)
    if results.failure:
        print(f"error: {results.failure}", file=sys.stderr)
    if EXIT_CODES[results.stop_reason]:
        sys.exit(EXIT_CODES[results.stop_reason])
    return results.val_loss  # the metric Hydra's sweepers (Optuna) minimise


if __name__ == "__main__":
    register_schemas()  # typed defaults for every group, before Hydra composes
    check_command_line(sys.argv[1:])
    main()
