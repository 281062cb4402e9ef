"""Knowledge-distillation baselines (Inheritune §4, App. C.1): the losses by hand, the frozen teacher kept outside the
student, an in-process distillation run that logs its losses, and an exact resume."""

import copy
import functools
import math
from dataclasses import asdict, replace
from itertools import islice
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from callbacks.averaging import AveragedWeights
from callbacks.checkpoint import LastCheckpoint
from lm_lab.checkpoint import read_checkpoint
from lm_lab.config import RunConfig, TrainConfig, TrainerConfig
from lm_lab.data.config import DataConfig
from lm_lab.data.embedded import embedded_documents
from lm_lab.data.tokenizers import TokenizerConfig
from lm_lab.errors import ConfigError
from lm_lab.inherit.distill import (
    DistillConfig,
    DistillModule,
    cosine_loss,
    distilbert_loss,
    kd_loss,
    logit_distillation_loss,
)
from lm_lab.models import GPT, ModelConfig
from lm_lab.optim import OptimizerConfig, SchedulerConfig
from lm_lab.train import fit

QUIET = TrainerConfig(accelerator="cpu", precision="32-true", enable_progress_bar=False, enable_model_summary=False)
STUDENT = ModelConfig(name="student", n_layer=2, n_head=2, d_model=32, block_size=16, vocab_size=257)
# peaked logits (a KD signal worth matching); dropout, so a teacher left in train mode would be caught
TEACHER = replace(STUDENT, name="teacher", n_layer=3, init_std=0.1, dropout=0.1)


def kl_by_hand(s: torch.Tensor, t: torch.Tensor, temperature: float) -> float:
    """T^2 * mean over rows of sum_v p_t (log p_t - log p_s), softmaxes by explicit exp and sums, in float64."""
    s, t = s.double().reshape(-1, s.shape[-1]) / temperature, t.double().reshape(-1, t.shape[-1]) / temperature
    total = 0.0
    for row_s, row_t in zip(s.tolist(), t.tolist(), strict=True):
        zs, zt = sum(math.exp(v) for v in row_s), sum(math.exp(v) for v in row_t)
        total += sum(
            math.exp(b) / zt * ((b - math.log(zt)) - (a - math.log(zs))) for a, b in zip(row_s, row_t, strict=True)
        )
    return temperature**2 * total / len(s)


def save_teacher(cfg: ModelConfig, path: Path, seed: int = 1) -> GPT:
    """A GPT saved as a lab checkpoint: the four keys `read_checkpoint` requires plus the model config."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "global_step": 0,
            "loops": {},
            "optimizer_states": [],
            "hyper_parameters": {"model": asdict(cfg)},
        },
        path,
    )
    return model


def module(teacher: Path, kind: str = "distilbert", **settings) -> DistillModule:
    """A DistillModule of STUDENT, its model built, as Lightning would build it."""
    distill = DistillConfig(kind, str(teacher), **settings)
    m = DistillModule(STUDENT, OptimizerConfig(), SchedulerConfig(), max_steps=4, distill=distill)
    m.configure_model()
    return m


# -- the losses by hand -----------------------------------------------------------------------------------------


def test_kd_loss_is_the_temperature_scaled_kl_mean_per_token():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 5, generator=g, dtype=torch.float64), 3 * torch.randn(2, 3, 5, generator=g).double()
    for temperature in (1.0, 2.0):
        assert kd_loss(s, t, temperature).item() == pytest.approx(kl_by_hand(s, t, temperature), rel=1e-12)
    assert kd_loss(s, t, 2.0).dtype == torch.float64  # float64 in, float64 out (not cast down)
    # KL(teacher || student), not the reverse: the two differ on these logits
    assert abs(kd_loss(t, s).item() - kd_loss(s, t).item()) > 0.1
    assert kd_loss(t, t, 3.0).item() == 0.0


def test_logit_kd_weights_ce_by_alpha_and_ignores_padded_vocab_rows():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 8, generator=g).double(), torch.randn(2, 4, 8, generator=g).double()
    t[..., 5:] = 30.0  # padded rows (vocab 5 padded to 8): the teacher's values there must not count
    targets = torch.randint(0, 5, (2, 4), generator=g)
    loss = logit_distillation_loss(s, t, targets, vocab_size=5, temperature=2.0, alpha=0.6)
    kd = kl_by_hand(s[..., :5], t[..., :5], 2.0)
    ce = -torch.log_softmax(s, -1).gather(-1, targets[..., None]).mean().item()  # over all 8 rows, as every run
    assert loss.lm.item() == pytest.approx(ce, rel=1e-12) and loss.kd.item() == pytest.approx(kd, rel=1e-12)
    assert loss.total.item() == pytest.approx(0.6 * ce + 0.4 * kd, rel=1e-12) and loss.cos is None


def test_distilbert_loss_is_the_linear_combination_with_the_cosine_embedding_loss():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 7, generator=g).double(), torch.randn(2, 3, 7, generator=g).double()
    hs, ht = torch.randn(2, 3, 4, generator=g).double(), torch.randn(2, 3, 4, generator=g).double()
    targets = torch.randint(0, 6, (2, 3), generator=g)
    rows = zip(hs.reshape(6, 4), ht.reshape(6, 4), strict=True)
    cos = sum(1 - (a @ b / (a.norm() * b.norm())).item() for a, b in rows) / 6
    assert cosine_loss(hs, ht).item() == pytest.approx(cos, rel=1e-12)
    target = torch.ones(6, dtype=torch.float64)  # DistilBERT's CosineEmbeddingLoss with target 1
    torch.testing.assert_close(
        cosine_loss(hs, ht), torch.nn.CosineEmbeddingLoss()(hs.view(6, 4), ht.view(6, 4), target)
    )
    loss = distilbert_loss(s, t, hs, ht, targets, vocab_size=6)  # defaults: T 1, weights 5 / 2 / 1
    ce = F.cross_entropy(s.view(6, 7), targets.view(6)).item()
    kd = kl_by_hand(s[..., :6], t[..., :6], 1.0)
    assert (loss.kd.item(), loss.cos.item()) == (pytest.approx(kd, rel=1e-12), pytest.approx(cos, rel=1e-12))
    assert loss.total.item() == pytest.approx(5 * kd + 2 * ce + 1 * cos, rel=1e-12)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"kind": "feature"}, r"distill.kind='feature' is unknown"),
        ({"kind": "logit"}, r"distill.kind=logit needs distill.teacher=PATH"),
        ({"temperature": 0}, r"distill.temperature=0 must be a positive number"),
        ({"alpha": 1.5}, r"distill.alpha=1.5 must be in \[0, 1\]"),
        ({"cos_weight": -1.0}, r"distill.cos_weight=-1.0 must be a number >= 0"),
        ({"kind": "distilbert", "teacher": "t", "kd_weight": 0, "lm_weight": 0, "cos_weight": 0}, r"all 0"),
    ],
)
def test_bad_distill_settings_are_refused_by_name(settings, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**settings)


def test_defaults_are_the_papers_and_distilberts():
    cfg = DistillConfig()
    assert (cfg.kind, cfg.temperature, cfg.alpha) == ("none", 1.0, 0.6)  # App. C.1
    assert (cfg.kd_weight, cfg.lm_weight, cfg.cos_weight) == (5.0, 2.0, 1.0)  # DistilBERT's training command


# -- the teacher: frozen, outside the student -------------------------------------------------------------------


def test_a_teacher_equal_to_the_student_gives_zero_kd_and_cosine(tmp_path):
    teacher = save_teacher(STUDENT, tmp_path / "t.ckpt")
    m = module(tmp_path / "t.ckpt")
    m.model.load_state_dict(teacher.state_dict())
    batch = torch.randint(0, 257, (2, 9))
    loss = m.distillation_loss(batch)
    assert loss.kd.item() == 0.0 and abs(loss.cos.item()) < 1e-6
    ce = F.cross_entropy(teacher(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
    torch.testing.assert_close(loss.lm, ce)
    torch.testing.assert_close(loss.total, 2 * ce + 5 * loss.kd + loss.cos)


def test_logit_kd_module_scores_student_and_teacher_outputs_on_the_real_vocabulary(tmp_path):
    teacher = save_teacher(TEACHER, tmp_path / "t.ckpt").eval()
    m = module(tmp_path / "t.ckpt", kind="logit", alpha=0.25, temperature=2.0)
    batch = torch.randint(0, 257, (2, 9))
    x, y = batch[:, :-1], batch[:, 1:]
    s, t = m.model(x), teacher(x)
    assert s.shape[-1] == t.shape[-1] == 320  # 257 ids padded to a multiple of 64
    loss = m.distillation_loss(batch)
    assert loss.kd.item() == pytest.approx(kl_by_hand(s[..., :257], t[..., :257], 2.0), rel=1e-5)
    torch.testing.assert_close(loss.lm, F.cross_entropy(s.flatten(0, 1), y.flatten()))
    torch.testing.assert_close(loss.total, 0.25 * loss.lm + 0.75 * loss.kd)


def test_the_teacher_is_frozen_and_no_part_of_the_student(tmp_path):
    save_teacher(TEACHER, tmp_path / "t.ckpt")
    m = module(tmp_path / "t.ckpt")
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    teacher_ids = {id(p) for p in m.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in m.parameters()}
    assert {k.removeprefix("model.") for k in m.state_dict()} == set(GPT(STUDENT).state_dict())
    assert not m.teacher.training and not any(p.requires_grad for p in m.teacher.parameters())
    m.distillation_loss(torch.randint(0, 257, (2, 9))).total.backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert all(p.grad is not None for p in m.parameters())  # the student learns from every term
    m.train()  # as Lightning does before training: the teacher stays in eval mode (no dropout)
    batch = torch.randint(0, 257, (2, 9))
    assert not m.teacher.training and torch.equal(m.distillation_loss(batch).kd, m.distillation_loss(batch).kd)
    # Lightning's WeightAveraging deep-copies the module: the copy shares the teacher, its hooks write to its own
    copied = copy.deepcopy(m)
    assert copied.teacher is m.teacher and copied._student_hidden is not m._student_hidden
    assert copied.model.ln_f._forward_hooks and next(iter(copied.model.ln_f._forward_hooks.values())) is (
        copied._student_hidden
    )
    assert all(torch.equal(v, before[k]) for k, v in m.teacher.state_dict().items())


def test_incompatible_teachers_are_refused_before_any_work(tmp_path):
    save_teacher(replace(TEACHER, d_model=48, n_head=2), tmp_path / "wide.ckpt")
    with pytest.raises(ConfigError, match=r"teacher's d_model 48 != model.d_model 32: .*distill.kind=logit"):
        module(tmp_path / "wide.ckpt")
    assert module(tmp_path / "wide.ckpt", kind="logit").teacher.config.d_model == 48  # logit KD needs no equal width
    save_teacher(replace(TEACHER, vocab_size=300), tmp_path / "vocab.ckpt")
    with pytest.raises(ConfigError, match=r"vocab_size 300, the student model.vocab_size 257"):
        module(tmp_path / "vocab.ckpt", kind="logit")
    save_teacher(replace(TEACHER, block_size=8), tmp_path / "short.ckpt")
    with pytest.raises(ConfigError, match=r"block_size 8 < model.block_size 16"):
        module(tmp_path / "short.ckpt", kind="logit")
    with pytest.raises(ConfigError, match=r"distill.teacher='.*missing.ckpt': .*not found"):
        module(tmp_path / "missing.ckpt")


def test_a_resume_with_other_distillation_settings_is_refused(tmp_path):
    save_teacher(TEACHER, tmp_path / "t.ckpt")
    saved = module(tmp_path / "t.ckpt")
    ckpt = {"hyper_parameters": dict(saved.hparams)}
    ckpt["distill_teacher_model"] = asdict(saved.teacher_config)
    module(tmp_path / "t.ckpt").on_load_checkpoint(dict(ckpt))  # the same settings: accepted
    with pytest.raises(ConfigError, match=r"distill.temperature: checkpoint 1.0, this run 2.0"):
        module(tmp_path / "t.ckpt", temperature=2.0).on_load_checkpoint(dict(ckpt))
    save_teacher(replace(TEACHER, n_layer=4), tmp_path / "t4.ckpt")
    with pytest.raises(ConfigError, match=r"is another model \(differs in \['n_layer'\]\)"):
        module(tmp_path / "t4.ckpt").on_load_checkpoint(dict(ckpt))


# -- in-process runs --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> DataConfig:
    """60 standard-library documents as .txt files, read byte by byte: prepared in a moment."""
    root = tmp_path_factory.mktemp("corpus")
    for i, doc in enumerate(islice(embedded_documents(), 60)):
        (root / f"doc{i:03d}.txt").write_text(doc.text[:1500], encoding="utf-8")
    cache = tmp_path_factory.mktemp("tokens")  # outside the corpus folder, whose files fingerprint the corpus
    return DataConfig(
        name="distill", source="local", path=str(root), val_fraction=0.2, cache_dir=str(cache), num_proc=1
    )


def tiny_run(data: DataConfig, max_steps: int) -> RunConfig:
    return RunConfig(
        model=replace(STUDENT, vocab_size=None),  # from the tokenizer: 257, padded to 320 rows
        tokenizer=TokenizerConfig(name="bytes", vocab_size=257),
        data=data,
        optimizer=OptimizerConfig(lr=3e-3),
        scheduler=SchedulerConfig(name="constant", warmup_steps=0),  # the same LRs for 3 + 3 steps as for 6
        train=TrainConfig(max_steps=max_steps, batch_size=4, val_every=3, val_tokens=512, log_every=1),
        trainer=QUIET,
    )


class Logged(L.Callback):
    """Every training step's logged metrics and the returned (minimised) loss."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        logged = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/") and k.endswith("loss")
        }
        self.steps.append({**logged, "returned": outputs["loss"].item()})


def callbacks(run_dir: Path, logged: Logged) -> list:
    ckpts = str(run_dir / "checkpoints")
    return [AveragedWeights(kind="ema", decay=0.5), LastCheckpoint(dirpath=ckpts, every_n_steps=3), logged]


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    save_teacher(TEACHER, path)
    return path


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, corpus, teacher_path):
    """A DistilBERT-style run of 6 steps, with an EMA of the weights (Lightning deep-copies the module for it)."""
    run_dir, logged = tmp_path_factory.mktemp("distilled") / "run", Logged()
    distill = DistillConfig(kind="distilbert", teacher=str(teacher_path))
    module_cls = functools.partial(DistillModule, distill=distill)
    results = fit(tiny_run(corpus, 6), run_dir, callbacks=callbacks(run_dir, logged), module_cls=module_cls)
    return run_dir, results, logged, module_cls


def test_a_distillation_run_trains_logs_its_losses_and_leaves_the_teacher_out(tmp_path, distilled, teacher_path):
    run_dir, results, logged, module_cls = distilled
    assert results.stop_reason == "max_steps" and results.steps == 6 and math.isfinite(results.val_loss)
    assert len(logged.steps) == 6
    assert set(logged.steps[0]) == {"train/loss", "train/kd_loss", "train/cos_loss", "train/distill_loss", "returned"}
    for step in logged.steps:  # what is logged is what is minimised, term by term
        total = 5 * step["train/kd_loss"] + 2 * step["train/loss"] + step["train/cos_loss"]
        assert step["train/distill_loss"] == pytest.approx(total, rel=1e-5) == step["returned"]
        assert step["train/kd_loss"] > 0 and 0 < step["train/cos_loss"] < 2
    assert logged.steps[-1]["train/distill_loss"] < logged.steps[0]["train/distill_loss"]  # it learns
    # the teacher was not trained and is in no checkpoint, average or parameter list
    teacher, fresh = results.module.teacher, save_teacher(TEACHER, tmp_path / "again.ckpt").state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in results.module.parameters()}
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")  # weights_only=True: plain data
    student_keys = {f"model.{k}" for k in GPT(STUDENT).state_dict()}
    assert set(ckpt["state_dict"]) == student_keys
    assert {k for k in ckpt["averaged_state_dict_ema"] if k != "n_averaged"} == {f"module.{k}" for k in student_keys}
    recorded = {**asdict(module_cls.keywords["distill"]), "teacher": str(teacher_path.resolve())}
    assert ckpt["hyper_parameters"]["distill"] == recorded and ckpt["distill_teacher_model"] == asdict(TEACHER)
    # load_from_checkpoint rebuilds the student and loads the teacher from the recorded path
    back = DistillModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert back.distill_config.kind == "distilbert" and torch.equal(back.teacher.wte.weight, teacher.wte.weight)


def test_a_resumed_distillation_run_equals_the_uninterrupted_one(tmp_path, corpus, distilled):
    whole, _, straight, module_cls = distilled
    run_dir, parts = tmp_path / "parts", Logged()
    fit(tiny_run(corpus, 3), run_dir, callbacks=callbacks(run_dir, parts), module_cls=module_cls)
    resumed = fit(tiny_run(corpus, 6), run_dir, callbacks=callbacks(run_dir, parts), module_cls=module_cls)
    assert resumed.starts == 2 and resumed.steps == 6 and resumed.val_loss == distilled[1].val_loss
    assert parts.steps == straight.steps  # every logged loss of every step, bit for bit
    a, b = (read_checkpoint(d / "checkpoints" / "last.ckpt") for d in (whole, run_dir))
    for key in ("state_dict", "averaged_state_dict_ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
