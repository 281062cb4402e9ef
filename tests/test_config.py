"""Every YAML composes and validates; bad configs fail before any work with a line that names the field."""

from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from lm_lab.config import RunConfig, compose
from lm_lab.errors import ConfigError

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def run_config(overrides: list[str]) -> RunConfig:
    return RunConfig.from_dict(_plain(overrides))


def test_design_groups_exist():
    assert set(GROUPS) >= {"model", "data", "tokenizer", "optimizer", "scheduler", "trainer", "budget", "init",
                           "callbacks", "logger", "experiment"}  # fmt: skip
    assert (CONF / "hydra" / "launcher" / "local.yaml").exists()


# options that only make sense with another setting
COMPANIONS = {
    "data=local": ["data.path=."],
    "optimizer=schedule_free": ["scheduler=constant", "scheduler.warmup_steps=0"],
    "init=checkpoint": ["init.path=x.ckpt"],
}


@pytest.mark.parametrize(
    "override",
    [
        f"{'+' if group == 'recipe' else ''}{group}={path.stem}"  # recipes are not in the defaults list: add them
        for group in GROUPS
        for path in sorted((CONF / group).glob("*.yaml"))
    ],
)
def test_every_yaml_composes_and_validates(override):
    plain = _plain([override, *COMPANIONS.get(override, [])])
    if override == "optimizer=adamw8bit" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="adamw8bit runs on CUDA GPUs only"):
            RunConfig.from_dict(plain)
        return
    if plain["trainer"]["accelerator"] == "gpu" and not torch.cuda.is_available():
        plain["trainer"].update(accelerator="cpu", precision="32-true")  # the GPU-on-CPU refusal has its own test
    run = RunConfig.from_dict(plain)
    assert run.train.seq_len <= run.model.block_size
    assert run.model.vocab_size == run.tokenizer.vocab_size


def test_default_is_the_main_job():
    run = run_config([])
    assert run.model.name == "gpt2_tiny" and run.data.name == "embedded" and run.tokenizer.name == "bpe"
    assert (run.optimizer.betas, run.optimizer.weight_decay, run.optimizer.grad_clip) == ((0.9, 0.95), 0.1, 1.0)
    assert run.scheduler.final_lr_frac == 0.1
    assert run.accumulate_grad_batches == 1 and run.tokens_per_step == 16 * 256


def test_accumulation_is_derived_from_the_global_batch():
    run = RunConfig.from_dict(_plain(["train.batch_size=64", "train.micro_batch_size=8"]), world_size=2)
    assert run.accumulate_grad_batches == 4


def _plain(overrides):
    return OmegaConf.to_container(compose(overrides), resolve=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.n_head=3"], r"model\.n_head=3 does not divide model\.d_model=128"),
        (["model.n_layer=0"], r"model\.n_layer=0 must be a positive integer"),
        (["train.seq_len=512"], r"train\.seq_len=512 exceeds model\.block_size=256"),
        (
            ["train.batch_size=16", "train.micro_batch_size=5"],
            r"train\.batch_size=16 is not a multiple of train\.micro_batch_size=5",
        ),
        (["train.max_steps=0"], r"train\.max_steps=0 must be a positive integer"),
        (["model.dropout=1.5"], r"model\.dropout=1\.5 must be a probability"),
        (["model.vocab_size=100"], r"model\.vocab_size=100 is smaller than tokenizer\.vocab_size=4096"),
        (["optimizer.lr=-1"], r"optimizer\.lr=-1"),
        (["tokenizer.name=wordpiece"], r"tokenizer\.name='wordpiece' is unknown"),
        (["train.max_steps=20"], r"scheduler\.warmup_steps=40 exceeds train\.max_steps=20"),
        (["budget.name=a100_3h"], r"budget\.name='a100_3h' is not available yet"),
        (["+train.epochs=3"], r"train\.epochs is not a train setting"),
        (["optimizer=schedule_free", "scheduler=constant"], r"scheduler\.warmup_steps=40 would warm schedule-free"),
        (
            ["optimizer=schedule_free", "scheduler=constant", "scheduler.warmup_steps=0", "train.on_nonfinite=skip"],
            r"train\.on_nonfinite=skip cannot skip a schedule-free update",
        ),
        (["optimizer.momentum=1.5"], r"optimizer\.momentum=1\.5 must be in \[0, 1\)"),
        (
            ["+callbacks.avg._target_=callbacks.AveragedWeights", "+callbacks.avg.kind=median"],
            r"callbacks\.avg\.kind='median' is unknown; use ema or swa",
        ),
        (
            ["+callbacks.avg._target_=callbacks.AveragedWeights", "+callbacks.avg.every_n_steps=0"],
            r"callbacks\.avg\.every_n_steps=0 must be an integer >= 1",
        ),
        (
            ["+callbacks.avg._target_=callbacks.AveragedWeights", "+callbacks.avg.decays=0.9"],
            r"callbacks\.avg\.decays is not a setting; use kind, decay, start_step, every_n_steps",
        ),
    ],
)
def test_bad_configs_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_config(overrides)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        run_config(["model.n_head=3", "train.max_steps=-5", "optimizer.lr=0"])
    assert len(err.value.problems) == 3


def test_unknown_group_option_lists_the_choices():
    with pytest.raises(MissingConfigException, match="gpt2_huge"):
        run_config(["model=gpt2_huge"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_gpu_trainer_on_a_cpu_machine_is_refused():
    with pytest.raises(ConfigError, match=r"trainer\.accelerator='gpu' but no CUDA GPU is visible"):
        run_config(["trainer=gpu"])
