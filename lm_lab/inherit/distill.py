"""Knowledge-distillation baselines of Inheritune (Sanyal et al. 2024, §4 and Fig. 3; App. C.1: "a distillation based
training loss, softmax temperature 1, alpha 0.6"): a student trained against a frozen teacher.

- `logit`: Hinton et al. 2015, alpha * CE + (1 - alpha) * T^2 KL(teacher || student) on the softened logits.
- `distilbert`: Sanh et al. 2019, kd_weight * T^2 KL + lm_weight * CE + cos_weight * (1 - cos) between the student's
  and teacher's last hidden states (the input of the LM head, after ln_f). DistilBERT also initialises the student
  from every other teacher layer: that is weight surgery (`init=every_other`), not this module.

The losses are pure functions on tensors; `DistillModule` is the LightningModule that computes them. The teacher is
held outside the student's module tree, so it is in no `parameters()`, `state_dict()`, checkpoint, gradient
clipping, optimizer or weight average; the checkpoint records only the settings (a resume loads the teacher again).

Deviations and choices:
- Which term alpha weights: neither the paper nor its repository has the distillation code, but the reference
  repository's KD logs (GPT2-experiments/logs/OpenWebText_logs/Baselines/KD/distill_medium.txt) report a train loss
  of exactly 0.600 x the validation cross-entropy from step 0 (6.5871 vs 10.9784) to the end (1.9418 vs 3.2444): the
  CE term carries alpha = 0.6 and KD carries 1 - alpha.
- KD is summed over the vocabulary and averaged over tokens (DistilBERT's `KLDivLoss(reduction="batchmean")` on the
  (tokens, vocab) rows), on the tokenizer's `vocab_size` columns only: the lab pads the embedding to a multiple of
  64 rows that are never targets. The CE term is the lab's usual one over every row, so `train/loss` compares with
  other runs.
- DistilBERT's weights are those of its published training command (huggingface/transformers,
  examples/research_projects/distillation/README.md: `--alpha_ce 5.0 --alpha_mlm 2.0 --alpha_cos 1.0`), the LM term
  being causal here; the temperature is the paper's 1 for both kinds (DistilBERT's script defaults to 2).
- The teacher stays in float32 on the student's device (it is not converted by a `*-true` precision).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from lm_lab.config import DISTILL_KINDS as KINDS  # noqa: F401  (re-exported)
from lm_lab.config import DistillConfig  # noqa: F401  (re-exported: the typed config lives with the others)
from lm_lab.errors import ConfigError, raise_if
from lm_lab.models import GPT, ModelConfig
from lm_lab.module import LMModule

# -- the losses: pure functions ---------------------------------------------------------------------------------


class DistillLoss(NamedTuple):
    total: torch.Tensor
    """What training minimises: the weighted sum of the terms below."""
    lm: torch.Tensor
    """Mean next-token cross-entropy (nats) over every logit row: what `train/loss` reports in every run."""
    kd: torch.Tensor
    """T^2 KL(teacher || student) of the softened distributions over the real vocabulary, mean per token."""
    cos: torch.Tensor | None
    """Mean 1 - cos between student and teacher hidden states (`distilbert` only)."""


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(t / T) || softmax(s / T)) (Hinton et al. 2015 §2: T^2 keeps the gradients' scale as T
    changes), summed over the last (vocabulary) dimension and averaged over every other one (the tokens).

    Pass only the columns of the real vocabulary (padded rows are no tokens). Computed in at least float32.
    """
    log_s = F.log_softmax(_upcast(student_logits) / temperature, dim=-1).flatten(0, -2)  # (N, V)
    log_t = F.log_softmax(_upcast(teacher_logits) / temperature, dim=-1).flatten(0, -2)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="sum") / log_s.shape[0]
    return temperature**2 * kl


def cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of 1 - cos(student, teacher) along the last (width) dimension: DistilBERT's
    `CosineEmbeddingLoss` with target 1 (Sanh et al. 2019 §3, "align the directions of the hidden states")."""
    cos = F.cosine_similarity(_upcast(student_hidden), _upcast(teacher_hidden), dim=-1)
    return (1 - cos).mean()


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # as lm_lab.models.next_token_loss


def logit_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    temperature: float = 1.0,
    alpha: float = 0.6,
) -> DistillLoss:
    """Logit KD (Hinton et al. 2015; Inheritune App. C.1): alpha * CE + (1 - alpha) * KD, with KD on the first
    `vocab_size` columns. Logits (B, T, V_padded), targets (B, T)."""
    lm = _lm_loss(student_logits, targets)
    kd = kd_loss(student_logits[..., :vocab_size], teacher_logits[..., :vocab_size], temperature)
    return DistillLoss(alpha * lm + (1 - alpha) * kd, lm, kd, None)


def distilbert_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    temperature: float = 1.0,
    kd_weight: float = 5.0,
    lm_weight: float = 2.0,
    cos_weight: float = 1.0,
) -> DistillLoss:
    """DistilBERT's objective (Sanh et al. 2019 §3), a linear combination, not normalised (as their code):
    kd_weight * KD + lm_weight * CE + cos_weight * (1 - cos). Hidden states (B, T, C) of equal width."""
    base = logit_distillation_loss(student_logits, teacher_logits, targets, vocab_size, temperature)  # its CE, KD
    cos = cosine_loss(student_hidden, teacher_hidden)
    return DistillLoss(kd_weight * base.kd + lm_weight * base.lm + cos_weight * cos, base.lm, base.kd, cos)


# -- the teacher, outside the student ---------------------------------------------------------------------------


def _load_teacher(path: str) -> tuple[ModelConfig, GPT]:
    """The teacher's config and model (eval mode) from a lab checkpoint file, run directory or Hugging Face folder."""
    from lm_lab.hf import load_any

    try:
        return load_any(path)
    except ConfigError as e:
        raise ConfigError(f"distill.teacher={path!r}: {e.problems[0]}") from None


class _Shared:
    """Holds the teacher as a plain attribute: not a submodule of the student, and shared rather than copied by
    `copy.deepcopy` (Lightning's `WeightAveraging` deep-copies the whole LightningModule into its average)."""

    def __init__(self, model: GPT):
        self.model = model

    def __deepcopy__(self, memo) -> _Shared:
        return self


class _LastOutput:
    """A forward hook that keeps its module's last output (here ln_f's: the hidden states the LM head reads).
    A deep copy (the weight average's model) gets a fresh, empty one."""

    def __init__(self):
        self.value: torch.Tensor | None = None

    def __call__(self, module, args, output) -> None:
        self.value = output

    def pop(self) -> torch.Tensor:
        value, self.value = self.value, None
        return value

    def __deepcopy__(self, memo) -> _LastOutput:
        return _LastOutput()


def _teacher_problems(student: ModelConfig, teacher: ModelConfig, kind: str, path: str) -> list[str]:
    problems = []
    if student.vocab_size is not None and teacher.vocab_size != student.vocab_size:
        problems.append(
            f"distill.teacher={path!r} has vocab_size {teacher.vocab_size}, the student model.vocab_size "
            f"{student.vocab_size}: distillation needs the teacher's tokenizer"
        )
    if teacher.block_size < student.block_size:
        problems.append(
            f"distill.teacher={path!r} has block_size {teacher.block_size} < model.block_size {student.block_size}: "
            f"the teacher cannot read the student's windows; lower model.block_size"
        )
    if kind == "distilbert" and teacher.d_model != student.d_model:
        problems.append(
            f"distill.kind=distilbert aligns hidden states, but the teacher's d_model {teacher.d_model} != "
            f"model.d_model {student.d_model}: use a student of width {teacher.d_model} or distill.kind=logit"
        )
    return problems


class DistillModule(LMModule):
    """LMModule whose training step minimises a distillation objective against a frozen teacher.

    Built like LMModule plus `distill`. Logs `train/loss` (the LM cross-entropy, as every run), `train/kd_loss`,
    `train/cos_loss` (distilbert) and `train/distill_loss` (what is minimised); validation is LMModule's.
    """

    def __init__(self, *args, distill: DistillConfig | dict, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = distill if isinstance(distill, DistillConfig) else DistillConfig(**distill)
        self.distill_config = cfg
        self.teacher_config: ModelConfig | None = None
        self._teacher: _Shared | None = None
        self._student_hidden: _LastOutput | None = None
        self._teacher_hidden: _LastOutput | None = None
        recorded = asdict(cfg)
        if cfg.kind != "none":
            recorded["teacher"] = str(Path(cfg.teacher).expanduser().resolve())
            teacher_cfg, teacher = _load_teacher(cfg.teacher)
            raise_if(_teacher_problems(self.model_config, teacher_cfg, cfg.kind, cfg.teacher))
            teacher.requires_grad_(False).eval()
            self.teacher_config, self._teacher = teacher_cfg, _Shared(teacher)
            if cfg.kind == "distilbert":
                self._teacher_hidden = _LastOutput()
                teacher.ln_f.register_forward_hook(self._teacher_hidden)
        # plain dicts only (weights_only checkpoints); `load_from_checkpoint` loads the teacher from this path
        self.save_hyperparameters({"distill": recorded})

    @property
    def teacher(self) -> GPT | None:
        return self._teacher.model if self._teacher is not None else None

    def configure_model(self) -> None:
        super().configure_model()
        if self.distill_config.kind == "distilbert" and self._student_hidden is None:
            self._student_hidden = _LastOutput()
            self.model.ln_f.register_forward_hook(self._student_hidden)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.teacher is not None:
            self.teacher.to(self.device).eval()

    def distillation_loss(self, batch: torch.Tensor) -> DistillLoss:
        """The objective on a (B, T + 1) batch of token windows: inputs batch[:, :-1], targets batch[:, 1:]."""
        cfg, x, y = self.distill_config, batch[:, :-1], batch[:, 1:]
        logits = self.model(x)  # (B, T, V_padded)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        vocab = self.model_config.vocab_size
        if cfg.kind == "logit":
            return logit_distillation_loss(logits, teacher_logits, y, vocab, cfg.temperature, cfg.alpha)
        hidden, teacher_hidden = self._student_hidden.pop(), self._teacher_hidden.pop()  # (B, T, C) each
        return distilbert_loss(
            logits,
            teacher_logits,
            hidden,
            teacher_hidden,
            y,
            vocab,
            cfg.temperature,
            cfg.kd_weight,
            cfg.lm_weight,
            cfg.cos_weight,
        )

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.distill_config.kind == "none":
            return super().training_step(batch, batch_idx)
        loss = self.distillation_loss(batch)
        aux = self.model.aux_loss()  # MoE students keep their balance and z-losses
        total = loss.total if aux is None else loss.total + aux
        self._last_loss = total.detach()
        self.log("train/loss", loss.lm, prog_bar=True)
        self.log("train/kd_loss", loss.kd)
        if loss.cos is not None:
            self.log("train/cos_loss", loss.cos)
        self.log("train/distill_loss", total)
        if aux is not None:
            self.log("train/aux_loss", aux)
            self._log_routing()
        return total

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.teacher_config is not None:  # what a resume checks its teacher against
            checkpoint["distill_teacher_model"] = asdict(self.teacher_config)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resume (or fork) continues one trajectory: refuse other distillation settings or another teacher
        architecture. The teacher's path may differ (a moved run directory)."""
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("hyper_parameters", {}).get("distill")
        if saved is None:
            return
        mine = self.hparams["distill"]
        problems = [
            f"distill.{k}: checkpoint {v!r}, this run {mine.get(k)!r}"
            for k, v in saved.items()
            if k != "teacher" and v != mine.get(k)
        ]
        teacher = checkpoint.get("distill_teacher_model")
        if teacher is not None and self.teacher_config is not None and teacher != asdict(self.teacher_config):
            differ = [k for k, v in teacher.items() if asdict(self.teacher_config).get(k) != v]
            problems.append(f"distill.teacher={self.distill_config.teacher!r} is another model (differs in {differ})")
        if problems:
            raise ConfigError(
                f"this checkpoint was distilled otherwise ({'; '.join(problems)}); resume with its distillation "
                f"settings and teacher, or start afresh"
            )


__all__ = [
    "DistillConfig",
    "DistillLoss",
    "DistillModule",
    "cosine_loss",
    "distilbert_loss",
    "kd_loss",
    "logit_distillation_loss",
]
