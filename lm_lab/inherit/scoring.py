"""`score(run, weights)`: a model's validation loss on a run's held-out tokens, as `fit` scores its final weights."""

from __future__ import annotations

import lightning as L
import torch

from lm_lab.config import RunConfig
from lm_lab.data.prepare import preflight
from lm_lab.module import LMModule
from lm_lab.train import data_module


def score(run: RunConfig, weights: str | dict[str, torch.Tensor]) -> float:
    """The token-weighted mean cross-entropy (nats) of `weights` (a lab checkpoint, run directory or Hugging Face
    folder, or a state dict of `run.model`) on the validation tokens `run`'s final evaluation scores
    (`train.final_val_tokens`), so it compares with the `val_loss` of any run of the same data and `seq_len`."""
    from lm_lab.checkpoint import read_source

    run = run.derive()
    tr = run.train
    preflight(run.data, run.tokenizer)
    state = read_source(weights)[1] if isinstance(weights, str) else weights
    data = data_module(run, val_tokens=tr.final_tokens)
    module = LMModule(run.model, run.optimizer, run.scheduler, max_steps=tr.max_steps)
    module.start_from(state)
    kwargs = run.trainer.lightning_kwargs(run.model)
    kwargs.update(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(**kwargs)
    trainer.validate(module, datamodule=data, verbose=False)
    return float(trainer.callback_metrics["val/loss"])
