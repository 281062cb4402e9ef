"""Every YAML composes and validates; bad configs fail before any work with a line that names the field."""

import re
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from lm_lab.config import RunConfig, TrainConfig, compose
from lm_lab.errors import ConfigError
from lm_lab.models import ModelConfig
from lm_lab.models.presets import PRESETS

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = sorted(
    p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "search")
)  # search: lm-lab search's spaces (tests/test_search.py)


def run_config(overrides: list[str], world_size: int = 1) -> RunConfig:
    """The derived config of `python run.py OVERRIDES`."""
    plain = _plain(overrides)
    if world_size != 1:
        plain["trainer"]["devices"] = world_size
    return RunConfig.from_dict(plain).derive()


def test_design_groups_exist():
    assert set(GROUPS) >= {
        "model",
        "data",
        "tokenizer",
        "optimizer",
        "scheduler",
        "trainer",
        "budget",
        "init",
        "callbacks",
        "logger",
        "experiment",
    }
    assert (CONF / "hydra" / "launcher" / "local.yaml").exists()


# options that only make sense with another setting
COMPANIONS = {
    "data=local": ["data.path=."],
    "optimizer=schedule_free": ["scheduler=constant", "scheduler.warmup_steps=0"],
    "init=checkpoint": ["init.path=pyproject.toml"],  # any existing file: the checkpoint is read by fit
    "init=fork": ["init.path=pyproject.toml"],
    "init=weights": ["init.path=pyproject.toml"],
    "budget=flops": ["budget.flops=1e15"],
    "budget=gpu_hours": ["budget.hours=0.001", "budget.gpu=a100"],
    "budget=wall_clock": ["budget.minutes=2"],
    "init=inheritune": ["init.reference=pyproject.toml"],  # read by fit, not by the config
    "init=stacking": ["init.path=pyproject.toml"],
    "init=hybrid_stacking": ["init.reference=pyproject.toml"],
    "init=half_width": ["init.reference=pyproject.toml"],
    "init=every_other": ["init.reference=pyproject.toml"],
    "experiment=inheritune": ["init.reference=pyproject.toml"],
    "distill=logit": ["distill.teacher=pyproject.toml"],  # read by the module, not by the config
    "distill=distilbert": ["distill.teacher=pyproject.toml"],
    "experiment=inheritune_compare": ["init.reference=pyproject.toml"],
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
            RunConfig.from_dict(plain).derive()
        return
    if plain["trainer"]["accelerator"] == "gpu" and not torch.cuda.is_available():
        plain["trainer"].update(accelerator="cpu", precision="32-true")  # the GPU-on-CPU refusal has its own test
    run = RunConfig.from_dict(plain).derive()
    assert run.train.seq_len <= run.model.block_size
    assert run.model.vocab_size == run.tokenizer.vocab_size


def test_default_is_the_main_job():
    run = run_config([])
    assert run.model.name == "gpt2_tiny" and run.data.name == "embedded" and run.tokenizer.name == "bpe"
    assert (run.optimizer.betas, run.optimizer.weight_decay, run.optimizer.grad_clip) == ((0.9, 0.95), 0.1, 1.0)
    assert run.scheduler.final_lr_frac == 0.1
    assert run.accumulate_grad_batches == 1 and run.tokens_per_step == 16 * 256


def test_accumulation_is_derived_from_the_global_batch():
    run = run_config(["train.batch_size=64", "train.micro_batch_size=8", "trainer=cpu"], world_size=2)
    assert run.world_size == 2 and run.accumulate_grad_batches == 4


def test_the_python_defaults_are_the_main_job():
    """`RunConfig()` built in Python describes the same run as `python run.py`: defaults live in one place."""
    composed = RunConfig.from_dict(_plain([]))
    assert RunConfig() == composed
    assert RunConfig().derive() == composed.derive()
    assert (RunConfig().train.max_steps, RunConfig().train.batch_size, RunConfig().scheduler.warmup_steps) == (
        400,
        16,
        40,
    )


def test_derive_fills_every_derived_value_in_one_step_and_leaves_the_input_alone():
    run = RunConfig()
    derived = run.derive()
    assert (run.model.vocab_size, run.train.seq_len, run.train.micro_batch_size, run.world_size) == (
        None,
        None,
        None,
        None,
    )
    assert (derived.model.vocab_size, derived.train.seq_len, derived.train.micro_batch_size) == (4096, 256, 16)
    assert derived.world_size == 1 and derived.derive() == derived
    # no check assigns while it validates: a bad config raises and the input stays as it was
    bad = RunConfig(train=TrainConfig(batch_size=10, micro_batch_size=3))
    with pytest.raises(ConfigError, match="not a multiple"):
        bad.derive()
    assert bad.train.micro_batch_size == 3 and bad.train.seq_len is None


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_presets_are_the_yaml_files(name):
    """`ModelConfig.preset(NAME)` and `model=NAME` are one source of truth."""
    yaml = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"))
    yaml.pop("defaults")
    assert yaml == {"name": name, **PRESETS[name]}
    composed = ModelConfig(**_plain([f"model={name}"])["model"])
    assert ModelConfig.preset(name) == composed
    assert sorted(p.stem for p in (CONF / "model").glob("*.yaml")) == sorted(PRESETS)


def test_an_unknown_preset_lists_the_known_ones():
    with pytest.raises(
        ConfigError, match=r"model preset 'gpt2_huge' is unknown; choose one of \['gpt2_a100_3h', 'gpt2_large'"
    ):
        ModelConfig.preset("gpt2_huge")


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
        (["budget.name=a100_3h"], r"budget\.name='a100_3h' is unknown; choose one of .* \(budget=NAME\)"),
        (["budget=flops", "budget.flops=1e3"], r"budget=flops pays for no step of this model"),
        (["budget=a100_3h", "budget.mfu=2"], r"budget\.mfu=2\.0 must be in \(0, 1\]"),
        (["train.seed=-1"], r"train\.seed=-1 must be an integer in \[0, 2\^32\)"),
        (["trainer.devices=0"], r"trainer\.devices=0 must be a positive number"),
        (["trainer.precision=fp32"], r"trainer\.precision='fp32' is unknown; .* \(fp32 is 32-true\)"),
        (["+trainer.foo=1"], r"trainer\.foo is not a trainer setting; known: "),
        (
            ["+trainer.accumulate_grad_batches=2"],
            r"trainer\.accumulate_grad_batches is not a trainer setting; the lab sets it from train\.batch_size",
        ),
        (["optimizer.lr=inf"], r"optimizer\.lr=inf must be a positive number"),
        (["optimizer.lr=nan"], r"optimizer\.lr=nan must be a positive number"),
        (["train.final_val_tokens=-3"], r"train\.final_val_tokens=-3 must be `val_tokens`, a positive integer or null"),
        (
            ["+callbacks.x._target_=callbacks.LastCheckpointt"],
            r"callbacks\.x\._target_: 'callbacks\.LastCheckpointt' cannot be imported",
        ),
        (["data.cache_dir=/proc/1/lm_lab_cache"], r"data\.cache_dir='/proc/1/lm_lab_cache' is not writable"),
        (["+train.epochs=3"], r"train\.epochs is not a train setting"),
        (
            ["data.val_split_tokens=128"],
            r"data\.val_split_tokens=128 leaves no validation window of train\.seq_len \+ 1 = 257 tokens",
        ),
        (
            ["data.txt_split=sentence"],
            r"data\.txt_split='sentence' is unknown; choose one of \['file', 'line', 'paragraph'\]",
        ),
        (["data.encoding=latin-9x"], r"data\.encoding='latin-9x' is not an encoding Python knows"),
        (["data.on_bad_document=drop"], r"data\.on_bad_document='drop' is unknown; choose one of \['error', 'skip'\]"),
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


def test_tests_readme_lists_every_test_file():
    tests = Path(__file__).resolve().parent
    listed = set(re.findall(r"^\| `([\w.]+\.py)` \|", (tests / "README.md").read_text(), re.MULTILINE))
    assert listed == {p.name for p in tests.glob("*.py") if p.name != "__init__.py"}
