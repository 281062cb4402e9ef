"""The architecture variants inside real (tiny) runs: exact resume, active parameters and MoE routing logs."""

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lm_lab.checkpoint import ARCHITECTURE, check_compatible, read_checkpoint, start_weights
from lm_lab.config import InitConfig
from lm_lab.errors import ConfigError
from lm_lab.models import GPT, ModelConfig, active_param_count, next_token_loss, param_count
from lm_lab.module import LMModule
from lm_lab.optim import OptimizerConfig, SchedulerConfig
from lm_lab.train import default_callbacks, fit
from tests.test_fit import smoke

# LLaMA-style with grouped-query attention, an untied head, DenseFormer's averaging and a top-2 MoE in the pattern
VARIANT = ModelConfig.preset(
    "llama_tiny",
    n_layer=2,
    d_model=32,
    n_head=4,
    n_kv_head=2,
    block_size=128,
    block_pattern="A,E",
    moe_experts=4,
    moe_expert_mlp="swiglu",
    denseformer=True,
)


class Metrics(L.Callback):
    """What the module logged at the last training step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged = {k: v.item() for k, v in trainer.callback_metrics.items()}
        self.total, self.lm = outputs["loss"].item(), trainer.callback_metrics["train/loss"].item()


def variant_run(cache_dir: Path, max_steps: int):
    run = smoke(cache_dir, max_steps=max_steps, val_every=3, val_tokens=4096)
    return replace(run, model=VARIANT, scheduler=SchedulerConfig(name="constant", warmup_steps=2))


def test_a_moe_denseformer_llama_run_logs_its_routing_and_resumes_exactly(tmp_path, cache_dir):
    metrics = Metrics()
    whole = fit(
        variant_run(cache_dir, 6), tmp_path / "whole", callbacks=[metrics, *default_callbacks(tmp_path / "whole")]
    )
    model = whole.module.model_config  # with the tokenizer's vocabulary
    assert whole.params == param_count(model) and whole.params_active == active_param_count(model)
    assert whole.params_active < whole.params  # 2 of 4 experts per token
    loads = [metrics.logged[f"moe/load_{e}"] for e in range(4)]
    assert sum(loads) == pytest.approx(1.0) and 0.0 <= metrics.logged["moe/dropped"] < 1.0
    assert metrics.logged["moe/balance"] >= 1.0 - 1e-6  # Switch's balance loss is at least 1
    # training minimises cross-entropy + the weighted auxiliary losses; train/loss is the cross-entropy alone
    aux = metrics.logged["train/aux_loss"]
    assert aux > 0 and metrics.total == pytest.approx(metrics.lm + aux, rel=1e-6)
    # stopped after the step-3 validation and resumed: the same run, bit for bit
    fit(variant_run(cache_dir, 3), tmp_path / "resumed")
    resumed = fit(variant_run(cache_dir, 6), tmp_path / "resumed")
    assert resumed.starts == 2 and resumed.val_loss == whole.val_loss
    a, b = (read_checkpoint(tmp_path / d / "checkpoints" / "last.ckpt") for d in ("whole", "resumed"))
    assert a["state_dict"].keys() == b["state_dict"].keys() and any("dwa.alphas" in k for k in a["state_dict"])
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


def test_validation_scores_the_cross_entropy_alone_and_training_adds_the_aux_loss():
    module = LMModule(replace(VARIANT, vocab_size=97), OptimizerConfig(), SchedulerConfig(), max_steps=1)
    module.configure_model()
    batch = torch.randint(0, 97, (2, 17), generator=torch.Generator().manual_seed(0))
    by_hand = F.cross_entropy(module.model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
    aux = module.model.aux_loss()
    assert aux is not None and aux.item() > 0
    assert torch.equal(module.loss(batch), by_hand)
    assert torch.equal(next_token_loss(module.model, batch).total, by_hand + aux)


def test_lm_lab_count_reports_total_active_and_per_component_parameters(capsys):
    from lm_lab.cli import main

    assert main(["count", "--model", "hagele_124m", "--vocab-size", "50257", "mlp=moe", "moe_expert_mlp=swiglu"]) == 0
    out = json.loads(capsys.readouterr().out)
    parts = out["params_by_component"]
    d, ff, layers = 768, 2048, 12  # 8 SwiGLU experts of 3 d ff each, top-2 active; embedding padded to 50304 rows
    assert parts["experts"] == layers * 8 * 3 * d * ff and parts["routers"] == layers * d * 8
    assert parts["embedding"] == 50304 * d and parts["positions"] == 0 and parts["head"] == 0  # RoPE, tied
    assert out["params"] == sum(parts.values())
    assert out["params"] - out["params_active"] == layers * 6 * 3 * d * ff
    flops = out["flops_per_token_by_component"]  # 6 x active parameters per component, + the attention scores
    assert sum(flops.values()) == out["flops_per_token"]
    assert flops["experts"] == 6 * layers * 2 * 3 * d * ff and flops["head"] == 6 * 50304 * d
    assert flops["attention_scores"] == 12 * layers * 512 * d


def test_an_expert_without_tokens_still_gets_a_gradient_as_ddp_requires():
    """DDP (find_unused_parameters=False) fails when a parameter gets no gradient: idle experts get zeros."""
    cfg = ModelConfig(n_layer=1, n_head=2, d_model=16, block_size=8, vocab_size=50, block_pattern="A,E", moe_experts=8)
    model = GPT(cfg)
    next_token_loss(model, torch.randint(0, 50, (1, 3))).total.backward()  # 2 tokens x top-2: at most 4 experts
    idle = [e for e in model.blocks[0].moe.experts if e.fc.weight.grad.abs().sum() == 0]
    assert idle and all(p.grad is not None for p in model.parameters())


def fake_checkpoint(path: Path, cfg: ModelConfig, model: GPT, **optimizer) -> Path:
    """The parts of a lab checkpoint that the start-from checks read."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    hyper = {"model": asdict(cfg), "optimizer": {"name": "adamw", **optimizer}}
    torch.save(
        {"state_dict": state, "global_step": 1, "loops": {}, "optimizer_states": [], "hyper_parameters": hyper}, path
    )
    return path


def test_an_untied_head_is_never_loaded_over_a_tied_models_embedding(tmp_path):
    untied = ModelConfig(n_layer=1, n_head=2, d_model=16, block_size=8, vocab_size=64, tie_embeddings=False)
    path = fake_checkpoint(tmp_path / "untied.ckpt", untied, GPT(untied))
    tied = replace(untied, tie_embeddings=True)
    with pytest.raises(ConfigError, match="lm_head.weight differs from wte.weight .* set model.tie_embeddings=false"):
        start_weights(InitConfig(name="weights", path=str(path)), tied)
    assert start_weights(InitConfig(name="weights", path=str(path)), untied).keys() == GPT(untied).state_dict().keys()
    path = fake_checkpoint(tmp_path / "tied.ckpt", tied, GPT(tied))  # a tied source into a tied model is fine
    assert torch.equal(
        *(start_weights(InitConfig(name="weights", path=str(path)), tied)[k] for k in ("wte.weight", "lm_head.weight"))
    )


def test_a_resume_refuses_architecture_and_decay_changes_that_keep_every_shape(tmp_path, cache_dir):
    run = variant_run(cache_dir, 6)
    run = replace(run, model=replace(run.model, vocab_size=4096))
    path = fake_checkpoint(tmp_path / "last.ckpt", run.model, GPT(run.model), decay_embeddings=True)
    ckpt = torch.load(path, weights_only=True)
    check_compatible(path, ckpt, run)  # the same settings: fine
    for change, field in [
        ({"positions": "none"}, "model.positions: checkpoint 'rope', this run 'none'"),
        ({"tie_embeddings": True}, "model.tie_embeddings: checkpoint False, this run True"),
        ({"moe_top_k": 1}, "model.moe_top_k: checkpoint 2, this run 1"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(field)):
            check_compatible(path, ckpt, replace(run, model=replace(run.model, **change)))
    with pytest.raises(ConfigError, match="optimizer.decay_embeddings: checkpoint True, this run False"):
        check_compatible(path, ckpt, replace(run, optimizer=replace(run.optimizer, decay_embeddings=False)))
    # a checkpoint written before these fields existed holds GPT-2's defaults: a GPT-2 run continues it
    gpt2 = replace(run, model=ModelConfig.preset("gpt2_tiny", n_layer=2, n_head=2, d_model=32, vocab_size=4096))
    old = {k: v for k, v in asdict(gpt2.model).items() if k not in ARCHITECTURE}
    ckpt = torch.load(fake_checkpoint(tmp_path / "old.ckpt", gpt2.model, GPT(gpt2.model)), weights_only=True)
    ckpt["hyper_parameters"]["model"] = old  # and no optimizer.decay_embeddings either
    check_compatible(path, ckpt, gpt2)
