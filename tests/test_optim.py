"""Optimizers (Muon + AdamW, schedule-free, 8-bit) and weight averaging inside a real (tiny) Lightning run."""

import copy

import lightning as L
import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from callbacks import AveragedWeights
from lm_lab.errors import ConfigError
from lm_lab.models import GPT, ModelConfig
from lm_lab.module import LMModule
from lm_lab.optim import MuonWithAdamW, OptimizerConfig, SchedulerConfig, SplitMuon, build_optimizer
from lm_lab.optim.optimizers import muon_split, qkv_splits

TINY = ModelConfig(n_layer=2, n_head=2, d_model=32, block_size=16, vocab_size=97)


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (4, 17), generator=g) for _ in range(n)]


def loss_of(model, batch):
    return torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())


def test_muon_takes_hidden_matrices_and_adamw_the_rest():
    model = GPT(TINY)
    hidden, rest = muon_split(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in hidden} == {
        n for n, p in model.named_parameters() if p.ndim == 2 and n not in ("wte.weight", "wpe.weight")
    }
    assert "wte.weight" in {names[id(p)] for p in rest} and all(p.ndim == 2 for p in hidden)


def test_muon_with_adamw_equals_the_two_optimizers_and_restores_exactly():
    torch.manual_seed(0)
    a, b = GPT(TINY), GPT(TINY)
    b.load_state_dict(a.state_dict())
    cfg = OptimizerConfig(name="muon", lr=2e-2)
    combined = build_optimizer(a, cfg)
    hidden, rest = muon_split(b)
    # q, k and v separate matrices (tests/test_optim_papers.py checks SplitMuon against torch.optim.Muon on each)
    muon = SplitMuon(
        hidden, splits=qkv_splits(b), lr=2e-2, weight_decay=0.1, momentum=0.95, adjust_lr_fn="match_rms_adamw"
    )
    from lm_lab.optim import param_groups

    adamw = torch.optim.AdamW(param_groups(rest, 0.1), lr=2e-2, betas=(0.9, 0.95))
    sched = LambdaLR(combined, lambda s: 1.0 / (s + 1))  # one scheduler drives both parts
    data = batches(4)
    for i, batch in enumerate(data[:3]):
        for model, opts in ((a, [combined]), (b, [muon, adamw])):
            loss_of(model, batch).backward()
            for o in opts:
                if o is not combined:
                    for g in o.param_groups:
                        g["lr"] = 2e-2 / (i + 1)
                o.step()
                o.zero_grad()
        sched.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    # a restored copy continues identically
    state = copy.deepcopy(combined.state_dict())
    c = GPT(TINY)
    c.load_state_dict(a.state_dict())
    restored = build_optimizer(c, cfg)
    restored.load_state_dict(state)
    assert isinstance(restored, MuonWithAdamW) and restored.muon.state is restored.state
    for model, opt in ((a, combined), (c, restored)):
        loss_of(model, data[3]).backward()
        opt.step()
    for p, q in zip(a.parameters(), c.parameters(), strict=True):
        assert torch.equal(p, q)


ODD = {"lr": 0.0123, "betas": (0.81, 0.92), "eps": 3e-7, "weight_decay": 0.07, "momentum": 0.83, "warmup_steps": 17}


@pytest.mark.parametrize("name", ["adamw", "muon", "schedule_free"])
def test_every_hyperparameter_reaches_the_optimizer(name):
    """Unusual values for every field, read back from the built optimizer's parameter groups."""
    if name == "schedule_free":
        pytest.importorskip("schedulefree")
    model = GPT(TINY)
    opt = build_optimizer(model, OptimizerConfig(name=name, **ODD))
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))
    for group in opt.param_groups:
        assert group["lr"] == ODD["lr"]
        is_muon = name == "muon" and "momentum" in group and "betas" not in group
        if is_muon:  # Muon's groups: hidden matrices, decayed
            assert group["momentum"] == ODD["momentum"] and group["weight_decay"] == ODD["weight_decay"]
            continue
        assert tuple(group["betas"]) == ODD["betas"] and group["eps"] == ODD["eps"]
        decayed = all(p.ndim >= 2 for p in group["params"])
        assert group["weight_decay"] == (ODD["weight_decay"] if decayed else 0.0)
        if name == "schedule_free":
            assert group["warmup_steps"] == ODD["warmup_steps"]
    if name == "muon":
        assert sum("betas" not in g for g in opt.param_groups) == len(opt.muon.param_groups) >= 1


def test_gpu_only_and_unsupported_optimizer_settings_are_refused_up_front():
    cfg = OptimizerConfig(name="adamw8bit")
    problems = cfg.check_environment(on_gpu=False, strategy="fsdp")
    assert any("runs on CUDA GPUs only" in p for p in problems)
    assert any("known to break under trainer.strategy='fsdp'" in p for p in problems)
    assert cfg.check_environment(on_gpu=True, strategy="ddp") == [] or any(
        "bitsandbytes" in p for p in cfg.check_environment(True, "ddp")
    )
    with pytest.raises(ConfigError, match="optimizer.name='lion' is unknown"):
        OptimizerConfig(name="lion")


class Windows(L.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(batches(64, seed=1), batch_size=None)

    def val_dataloader(self):
        return DataLoader(batches(2, seed=2), batch_size=None)


def tiny_trainer(tmp_path, callbacks, steps=6):
    return L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


class ScheduleFreeProbe(L.Callback):
    """Records, at each validation batch, the optimizer's mode and whether the weights are the average x."""

    def __init__(self):
        self.seen = []

    def on_validation_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        self.y = [p.detach().clone() for p in pl_module.parameters()]
        self.z = [opt.state[p]["z"].clone() for p in pl_module.parameters()]

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        opt = trainer.optimizers[0]
        beta1 = opt.param_groups[0]["betas"][0]
        expected = [y + (1 - 1 / beta1) * (z - y) for y, z in zip(self.y, self.z, strict=True)]  # x from y and z
        is_x = all(torch.allclose(p, e, atol=1e-6) for p, e in zip(pl_module.parameters(), expected, strict=True))
        self.seen.append(("val", opt.param_groups[0]["train_mode"], is_x))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(("train", trainer.optimizers[0].param_groups[0]["train_mode"], None))


def test_schedule_free_validates_the_averaged_weights_and_trains_in_train_mode(tmp_path):
    pytest.importorskip("schedulefree")
    torch.manual_seed(0)
    module = LMModule(
        TINY,
        OptimizerConfig(name="schedule_free", lr=1e-2),
        SchedulerConfig(name="constant", warmup_steps=0),
        max_steps=6,
    )
    probe = ScheduleFreeProbe()
    trainer = tiny_trainer(tmp_path, [probe])
    trainer.fit(module, datamodule=Windows())
    vals = [s for s in probe.seen if s[0] == "val"]
    trains = [s for s in probe.seen if s[0] == "train"]
    assert len(vals) == 4 and all(mode is False and is_x for _, mode, is_x in vals)  # eval mode, weights = x
    assert len(trains) == 6 and all(mode is True for _, mode, _ in trains)  # back in train mode for every step
    # a validate after fit (run.py's, for a resumed finished run) scores x too, and leaves train mode behind
    in_fit = trainer.callback_metrics["val/loss"].clone()
    trainer.validate(module, datamodule=Windows(), verbose=False)
    assert probe.seen[-1][1:] == (False, True) and trainer.optimizers[0].param_groups[0]["train_mode"] is True
    assert torch.equal(trainer.callback_metrics["val/loss"], in_fit)


def test_schedule_free_needs_a_constant_schedule():
    from omegaconf import OmegaConf

    from lm_lab.config import RunConfig, compose

    plain = OmegaConf.to_container(compose(["optimizer=schedule_free"]), resolve=True)
    with pytest.raises(
        ConfigError, match="optimizer.name=schedule_free replaces the LR schedule; use scheduler=constant"
    ):
        RunConfig.from_dict(plain).derive()


class Snapshots(L.Callback):
    def __init__(self):
        self.params = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.params.append([p.detach().clone() for p in pl_module.parameters()])


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_averaged_weights_match_their_definition_and_are_evaluated_beside_the_raw_ones(tmp_path, kind):
    torch.manual_seed(0)
    module = LMModule(TINY, OptimizerConfig(lr=1e-2), SchedulerConfig(name="constant", warmup_steps=0), max_steps=6)
    averaging = AveragedWeights(kind=kind, decay=0.8, start_step=1, every_n_steps=2)
    snaps = Snapshots()
    trainer = tiny_trainer(tmp_path, [snaps, averaging])
    trainer.fit(module, datamodule=Windows())
    picked = [snaps.params[i] for i in (1, 3, 5)]  # step indices 1, 3, 5: from start_step, every 2
    expected = [p.clone() for p in picked[0]]
    for n, later in enumerate(picked[1:], start=2):
        for e, p in zip(expected, later, strict=True):
            e.copy_(0.8 * e + 0.2 * p if kind == "ema" else e + (p - e) / n)  # not 0.5: decay and 1 - decay differ
    averaged = list(averaging._average_model.module.parameters())
    for e, a in zip(expected, averaged, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    raw = list(module.parameters())
    assert all(torch.equal(r, s) for r, s in zip(raw, snaps.params[-1], strict=True))  # the run keeps its raw weights
    metrics = trainer.callback_metrics
    assert f"val/loss_{kind}" in metrics and metrics[f"val/loss_{kind}"] != metrics["val/loss"]
    ckpt = {}
    averaging.on_save_checkpoint(trainer, module, ckpt)
    assert any(k.startswith("module.") for k in ckpt[f"averaged_state_dict_{kind}"])


def test_an_ema_and_an_swa_run_side_by_side_and_both_resume(tmp_path):
    torch.manual_seed(0)
    module = LMModule(TINY, OptimizerConfig(lr=1e-2), SchedulerConfig(name="constant", warmup_steps=0), max_steps=4)
    ema, swa = AveragedWeights(kind="ema", decay=0.5), AveragedWeights(kind="swa")
    trainer = tiny_trainer(tmp_path, [ema, swa])
    trainer.fit(module, datamodule=Windows())
    assert {"val/loss_ema", "val/loss_swa"} <= set(trainer.callback_metrics)
    assert trainer.callback_metrics["val/loss_ema"] != trainer.callback_metrics["val/loss_swa"]
    trainer.save_checkpoint(tmp_path / "both.ckpt")
    ckpt = torch.load(tmp_path / "both.ckpt", weights_only=True)
    for cb in (ema, swa):  # each average is restored from its own entry
        fresh = AveragedWeights(kind=cb.kind)
        fresh._average_model = copy.deepcopy(cb._average_model)
        for p in fresh._average_model.parameters():
            p.data.zero_()
        fresh.on_load_checkpoint(trainer, module, ckpt)
        for a, b in zip(fresh._average_model.parameters(), cb._average_model.parameters(), strict=True):
            assert torch.equal(a, b)
    assert ema.state_key != swa.state_key and {ema.state_key, swa.state_key} <= set(ckpt["callbacks"])
