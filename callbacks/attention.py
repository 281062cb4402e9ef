"""Live attention-degeneration monitoring (Inheritune, Sanyal et al. 2024, §2 and App. A): every N optimizer steps,
k* and m* of every head on a fixed validation batch, the lazy layers, and the query/key gradient norms per layer."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lm_lab.analysis.attention import (
    FRACTION,
    MAX_COLUMNS,
    MAX_RANK,
    check_lazy_settings,
    check_threshold,
    qk_grad_norms,
)
from lm_lab.analysis.report import analyze, heatmap_image
from lm_lab.data.windows import ValWindows
from lm_lab.errors import CheckedSettings, ConfigError, raise_if

log = logging.getLogger(__name__)


@dataclass
class AttentionMonitorConfig(CheckedSettings):
    every_n_steps: int = 200
    """Measure after every this many optimizer steps (and at step 0). 200 keeps the cost under 2% of training
    for gpt2_tiny on a CPU (benchmarks/attention_monitor.py); the cost grows with layers x heads x T^3."""
    batch_size: int = 8
    """Sequences of the fixed batch: the first this many windows of the validation split."""
    threshold: float = 0.9
    """The share of variance (k*) and of mass (m*): the paper's 90%."""
    max_rank: float = MAX_RANK
    """A head is lazy when its batch-mean k* is at most this ..."""
    max_columns: float | None = MAX_COLUMNS
    """... or its batch-mean m* is at most this (None: k* alone)."""
    fraction: float = FRACTION
    """A layer is lazy when at least this share of its heads are."""
    images: bool = True
    """Also log k* and m* as layer x head heatmap images (when a TensorBoard logger is present)."""

    def __post_init__(self) -> None:
        raise_if(self._problems("AttentionMonitor"))

    def _problems(self, where: str) -> list[str]:
        found = []
        for name in ("every_n_steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                found.append(f"{where}.{name}={value!r} must be an integer >= 1")
        found += check_threshold(self.threshold, f"{where}.threshold")
        found += check_lazy_settings(self.max_rank, self.max_columns, self.fraction, f"{where}.")
        if not isinstance(self.images, bool):
            found.append(f"{where}.images={self.images!r} must be true or false")
        return found


class AttentionMonitor(L.Callback):
    """Logs `attn/k_star/layer_{i}` and `attn/m_star/layer_{i}` (the mean over heads of the batch-mean k* and m*),
    `attn/lazy_layers` (how many) and, with a TensorBoard logger, the images `attn/k_star` and `attn/m_star` (layer x
    head); and `attn/q_grad_norm/layer_{i}`, `attn/k_grad_norm/layer_{i}` (L2 norms of the query and key rows of the
    fused qkv weight's gradient, before clipping). Layer i is the i-th attention module (`attention_modules`).

    Everything at step s describes the weights after s optimizer steps: k* and m* are measured when step s is done
    (and at step 0 when training starts), the gradient norms of the update from s to s + 1 (the gradient at those
    same weights), so they share TensorBoard step s with `train/grad_norm`. Lightning's `train/loss` of that
    update is at step s too.

    It does not perturb training: the measurement runs in eval mode (every module's mode restored), under no_grad,
    draws no random number and changes no state, so a run's losses are bit-identical with and without it. It is
    stateless (the batch is re-read from the data, the schedule is the global step), so a resumed run continues
    it with nothing in the checkpoint. Every rank measures (a sharded model needs all of them), rank 0 logs.
    """

    settings = AttentionMonitorConfig  # lm_lab.config checks a configured one with it before any work

    def __init__(
        self,
        every_n_steps: int = AttentionMonitorConfig.every_n_steps,
        batch_size: int = AttentionMonitorConfig.batch_size,
        threshold: float = AttentionMonitorConfig.threshold,
        max_rank: float = MAX_RANK,
        max_columns: float | None = MAX_COLUMNS,
        fraction: float = FRACTION,
        images: bool = True,
        windows: torch.Tensor | None = None,
    ):
        self.config = AttentionMonitorConfig(
            every_n_steps, batch_size, threshold, max_rank, max_columns, fraction, images
        )
        self.windows = windows  # (B, T + 1) windows to measure on instead of the data module's validation windows
        self.last: dict | None = None  # the latest `analyze` result (not checkpointed: it is re-measured)
        self._batch: torch.Tensor | None = None
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batch = self._fixed_batch(trainer).to(pl_module.device)
        self._last_step = -1
        if trainer.global_step == 0:
            self._measure(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.fit_loop._should_accumulate() or step % self.config.every_n_steps or step == self._last_step:
            return
        self._measure(trainer, pl_module)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        step = trainer.global_step  # the gradient at the weights after `step` updates
        if step % self.config.every_n_steps:
            return
        q, k = torch.stack(qk_grad_norms(_model(pl_module))).tolist()  # one read from the device
        metrics = {f"attn/q_grad_norm/layer_{i}": v for i, v in enumerate(q)}
        metrics |= {f"attn/k_grad_norm/layer_{i}": v for i, v in enumerate(k)}
        _log(trainer, metrics, step)

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        c, step = self.config, trainer.global_step
        with trainer.precision_plugin.forward_context():  # the precision training runs in
            result = analyze(
                _model(pl_module),
                self._batch[:, :-1],  # the model's input of (B, T + 1) windows
                c.threshold,
                max_rank=c.max_rank,
                max_columns=c.max_columns,
                fraction=c.fraction,
            )
        self.last, self._last_step = result, step
        metrics = {}
        for row in result["rows"]:
            metrics[f"attn/k_star/layer_{row['layer']}"] = row["k_star_mean"]
            metrics[f"attn/m_star/layer_{row['layer']}"] = row["m_star_mean"]
        metrics["attn/lazy_layers"] = float(len(result["lazy_layers"]))
        _log(trainer, metrics, step)
        boards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if c.images and boards and trainer.is_global_zero:
            share = f"{c.threshold:.0%}"
            for key, title in (("k_star", f"k* ({share} variance)"), ("m_star", f"m* ({share} mass)")):
                image = heatmap_image(result[key], f"{title}, step {step}", result["lazy_layers"])
                for board in boards:
                    board.experiment.add_image(f"attn/{key}", image, global_step=step, dataformats="HWC")

    def _fixed_batch(self, trainer: L.Trainer) -> torch.Tensor:
        """The first `batch_size` windows (B, T + 1) of the validation split, the same on every rank and start."""
        if self.windows is not None:
            return self.windows
        data = trainer.datamodule
        if getattr(data, "val", None) is None or not isinstance(getattr(data, "seq_len", None), int):
            raise ConfigError(
                "AttentionMonitor measures on the first validation windows of lm_lab's LMDataModule, and this run has "
                "none; train with it (lm_lab.train.fit) or give AttentionMonitor(windows=...) a (B, T + 1) tensor"
            )
        windows = ValWindows(data.val, data.seq_len)  # reading windows draws no random number
        n = min(self.config.batch_size, len(windows))
        if n < self.config.batch_size:
            log.warning(
                "AttentionMonitor: the validation split holds %d windows, fewer than batch_size=%d",
                n,
                self.config.batch_size,
            )
        return torch.stack([windows[i] for i in range(n)])


def _model(pl_module: L.LightningModule) -> torch.nn.Module:
    """The network a LightningModule trains: LMModule's (and its subclasses') `model`, else the module itself."""
    model = getattr(pl_module, "model", None)
    return model if isinstance(model, torch.nn.Module) else pl_module


def _log(trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
    """Straight to the loggers (rank zero only), at `step`: Lightning's own `log` would keep the values only at its
    logging steps, which need not fall on the monitor's."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)
