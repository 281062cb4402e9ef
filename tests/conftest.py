"""Shared fixtures: tiny configs in code, and one cache folder for the whole session's token files."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch

from lm_lab.config import register_schemas
from lm_lab.models import ModelConfig

register_schemas()

# `datasets` sleeps 5 s after each pass over interleaved parquet shards (apache/arrow#45214); the tests' corpora
# are passed over many times in a second, so they skip the pause (real epochs are long enough not to care)
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


@pytest.fixture(autouse=True)
def _fresh_seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session, so the embedded corpus is tokenised once."""
    return tmp_path_factory.mktemp("lm_lab_cache")


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig(name="test", n_layer=2, n_head=2, d_model=32, block_size=16, vocab_size=97)
