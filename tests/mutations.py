"""Hand-written mutants: realistic bugs, each injected alone into a copy of the source, with the tests that must
catch it. `python -m tests.mutations` runs every mutant's tests and reports CAUGHT or SURVIVED (exit 1 if any
survived); `--only ID ...` runs some; `--list` prints the catalogue. Not collected by pytest (no `test_` prefix).

A new feature adds its mutants here: break it on purpose the way a refactor would, and name the test that fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    """pytest node ids or files; the mutant is caught when they fail."""
    what: str


M = Mutant
MUTANTS = [
    # -- the model and its init -------------------------------------------------------------------------------
    M(
        "ln-swap",
        "lm_lab/models/gpt.py",
        "h = getattr(self, norm)(x)",
        "h = getattr(self, self.sublayers[-1 - self.sublayers.index((norm, layer))][0])(x)",
        ("tests/test_models.py::test_parity_with_huggingface_gpt2",),
        "ln_1 and ln_2 swapped in the block",
    ),
    M(
        "exact-gelu",
        "lm_lab/models/layers.py",
        'nn.GELU(approximate="tanh")',
        "nn.GELU()",
        ("tests/test_models.py::test_parity_with_huggingface_gpt2",),
        "exact GELU instead of GPT-2's tanh GELU",
    ),
    M(
        "no-resid-scale",
        "lm_lab/models/gpt.py",
        "block.init_residual(std / math.sqrt(self.config.n_residual_layers))",
        "block.init_residual(std)",
        ("tests/test_models.py::test_init_statistics_follow_gpt2",),
        "no 1/sqrt(2L) scaling of residual projections",
    ),
    M(
        "wpe-std",
        "lm_lab/models/gpt.py",
        "self.wpe.weight, mean=0.0, std=0.01",
        "self.wpe.weight, mean=0.0, std=std",
        ("tests/test_models.py::test_init_statistics_follow_gpt2",),
        "position-embedding init std 0.02 instead of 0.01",
    ),
    M(
        "not-causal",
        "lm_lab/models/layers.py",
        "dropout_p=dropout_p, is_causal=True, scale=scale",
        "dropout_p=dropout_p, is_causal=False, scale=scale",
        ("tests/test_models.py::test_causal_masking",),
        "attention sees the future",
    ),
    M(
        "attn-scale",
        "lm_lab/models/layers.py",
        "if cfg.attn_scale_by_layer else None",
        "if cfg.attn_scale_by_layer else 1.0",
        ("tests/test_models.py::test_parity_with_huggingface_gpt2",),
        "attention logits not scaled by 1/sqrt(d)",
    ),
    M(
        "untied-head",
        "lm_lab/models/gpt.py",
        "            self.lm_head.weight = self.wte.weight",
        "            pass",
        ("tests/test_models.py::test_named_sizes_match_published_gpt2",),
        "output head not tied to the embedding",
    ),
    M(
        "no-ln-f",
        "lm_lab/models/gpt.py",
        "return self.lm_head(self.ln_f(x))",
        "return self.lm_head(x)",
        ("tests/test_models.py::test_parity_with_huggingface_gpt2",),
        "final LayerNorm skipped",
    ),
    M(
        "ln-eps",
        "lm_lab/models/layers.py",
        "super().__init__(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)",
        "super().__init__(cfg.d_model, eps=1e-6, bias=cfg.bias)",
        ("tests/test_models.py::test_parity_with_huggingface_gpt2",),
        "final LayerNorm ignores layer_norm_eps",
    ),
    M(
        "attn-dropout-eval",
        "lm_lab/models/layers.py",
        "self.attn_dropout if self.training else 0.0",
        "self.attn_dropout",
        ("tests/test_models.py::test_dropout_on_in_training_off_in_eval",),
        "attention dropout left on in eval",
    ),
    M(
        "bias-init",
        "lm_lab/models/layers.py",
        "            if m.bias is not None:\n                nn.init.zeros_(m.bias)",
        "            if m.bias is not None:\n                nn.init.normal_(m.bias, std=std)",
        ("tests/test_models.py::test_init_statistics_follow_gpt2",),
        "linear biases not zero at init",
    ),
    # -- loss and targets -------------------------------------------------------------------------------------
    M(
        "no-shift",
        "lm_lab/models/loss.py",
        "F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())",
        "F.cross_entropy(logits.flatten(0, 1), batch[:, :-1].flatten())",
        ("tests/test_fit.py::test_the_loss_is_next_token_cross_entropy_by_hand",),
        "targets not shifted",
    ),
    M(
        "val-per-batch",
        "lm_lab/module.py",
        "self.val_loss.update(self.loss(batch), weight=batch.shape[0] * (batch.shape[1] - 1))",
        "self.val_loss.update(self.loss(batch))",
        ("tests/test_fit.py::test_validation_loss_is_the_token_mean_over_every_window",),
        "val loss averaged per batch",
    ),
    # -- optimizer, clipping ----------------------------------------------------------------------------------
    M(
        "no-clip",
        "lm_lab/module.py",
        "norm = torch.nn.utils.clip_grad_norm_(self.parameters(), clip)",
        "norm = torch.nn.utils.clip_grad_norm_(self.parameters(), math.inf)",
        ("tests/test_fit.py::test_gradients_are_clipped_to_the_configured_norm",),
        "gradient clipping skipped",
    ),
    M(
        "betas-dropped",
        "lm_lab/optim/optimizers.py",
        "return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)",
        "return torch.optim.AdamW(groups, lr=cfg.lr, eps=cfg.eps, fused=fused)",
        ("tests/test_optim.py::test_every_hyperparameter_reaches_the_optimizer",),
        "AdamW built without the betas",
    ),
    M(
        "eps-dropped",
        "lm_lab/optim/optimizers.py",
        "return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)",
        "return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)",
        ("tests/test_optim.py::test_every_hyperparameter_reaches_the_optimizer",),
        "AdamW built without eps",
    ),
    M(
        "decay-norms",
        "lm_lab/optim/optimizers.py",
        "decayed = {id(p) for p in params if p.ndim >= 2 and id(p) not in exempt}",
        "decayed = {id(p) for p in params if p.ndim >= 1 and id(p) not in exempt}",
        ("tests/test_models.py::test_weight_decay_only_on_matrices",),
        "weight decay on norms and biases",
    ),
    M(
        "muon-momentum",
        "lm_lab/optim/optimizers.py",
        "momentum=cfg.momentum,",
        "momentum=0.95,",
        ("tests/test_optim.py::test_every_hyperparameter_reaches_the_optimizer",),
        "optimizer.momentum ignored by Muon",
    ),
    M(
        "sf-warmup",
        "lm_lab/optim/optimizers.py",
        "warmup_steps=cfg.warmup_steps,",
        "warmup_steps=0,",
        ("tests/test_optim.py::test_every_hyperparameter_reaches_the_optimizer",),
        "schedule-free warmup ignored",
    ),
    # -- schedules --------------------------------------------------------------------------------------------
    M(
        "cooldown-steps-ignored",
        "lm_lab/optim/schedules.py",
        "return self.cooldown_steps if self.cooldown_steps is not None else int(self.cooldown_frac * total_steps)",
        "return int(self.cooldown_frac * total_steps)",
        ("tests/test_schedules.py::test_every_scheduler_field_changes_the_lr",),
        "scheduler.cooldown_steps ignored",
    ),
    M(
        "warmup-off-by-one",
        "lm_lab/optim/schedules.py",
        "progress = step / warmup_steps",
        "progress = (step + 1) / warmup_steps",
        ("tests/test_schedules.py::test_warmup_follows_hagele_et_al",),
        "warmup one step ahead",
    ),
    M(
        "cosine-final",
        "lm_lab/optim/schedules.py",
        "return final_lr_frac + (1 - final_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))",
        "return 0.5 * (1 + math.cos(math.pi * progress))",
        ("tests/test_schedules.py::test_decays_hit_the_formula_at_the_landmarks",),
        "cosine decays to 0, not final_lr_frac",
    ),
    M(
        "warmup-start-ignored",
        "lm_lab/optim/schedules.py",
        '"start_frac": c["warmup_start_frac"],',
        '"start_frac": 0.01,',
        ("tests/test_schedules.py::test_every_scheduler_field_changes_the_lr",),
        "scheduler.warmup_start_frac ignored",
    ),
    M(
        "shape-ignored",
        "lm_lab/optim/schedules.py",
        'cooldown_steps=self.cooldown_steps, shape=c["cooldown_shape"]',
        'cooldown_steps=self.cooldown_steps, shape="1-sqrt"',
        ("tests/test_schedules.py::test_every_scheduler_field_changes_the_lr",),
        "scheduler.cooldown_shape ignored",
    ),
    M(
        "restart-mult-ignored",
        "lm_lab/optim/schedules.py",
        'period=c["restart_steps"], mult=c["restart_mult"]',
        'period=c["restart_steps"], mult=1.0',
        ("tests/test_schedules.py::test_every_scheduler_field_changes_the_lr",),
        "scheduler.restart_mult ignored",
    ),
    M(
        "plateau-threshold",
        "lm_lab/optim/schedules.py",
        'val_loss < p["best"] * (1 - self.cfg["plateau_threshold"])',
        'val_loss < p["best"]',
        ("tests/test_schedules.py::test_plateau_fields_decide_when_the_lr_is_cut",),
        "scheduler.plateau_threshold ignored",
    ),
    M(
        "lr-interval-epoch",
        "lm_lab/module.py",
        '"scheduler": scheduler, "interval": "step"',
        '"scheduler": scheduler, "interval": "epoch"',
        ("tests/test_fit.py::test_golden_loss_sequence_of_the_main_job",),
        "LR schedule stepped per epoch",
    ),
    # -- tokenizer and split ----------------------------------------------------------------------------------
    M(
        "bpe-sees-val",
        "lm_lab/data/prepare.py",
        "if cfg.val_from is None and held_out(doc, cfg.val_fraction):",
        "if False and held_out(doc, cfg.val_fraction):",
        ("tests/test_data.py::test_bpe_is_trained_on_the_training_documents_only",),
        "BPE trained on validation documents",
    ),
    M(
        "held-out-flipped",
        "lm_lab/data/shards.py",
        "return digest / 2**64 < val_fraction",
        "return digest / 2**64 > 1 - val_fraction",
        ("tests/test_data.py::test_held_out_is_a_pure_function_of_the_text",),
        "another held-out rule (same fraction)",
    ),
    M(
        "val-overlap",
        "lm_lab/data/windows.py",
        "(i, k * seq_len) for i, size",
        "(i, k * (seq_len // 2)) for i, size",
        ("tests/test_data.py::test_val_windows_cover_each_target_once_across_ranks",),
        "validation windows overlap",
    ),
    # -- resume -----------------------------------------------------------------------------------------------
    M(
        "skipped-not-restored",
        "lm_lab/module.py",
        'self.skipped_steps, self._skipped_in_a_row = checkpoint.get("skipped_steps", [0, 0])',
        "self.skipped_steps, self._skipped_in_a_row = 0, 0",
        ("tests/test_faults.py::test_skipped_updates_are_counted_across_a_resume",),
        "skipped-step counters not restored",
    ),
    M(
        "train-seconds-not-restored",
        "lm_lab/module.py",
        'self.train_seconds_before = cost.get("train_seconds", 0.0)',
        "self.train_seconds_before = 0.0",
        ("tests/test_faults.py::test_killed_right_after_a_step_checkpoint",),
        "train_seconds of earlier starts lost",
    ),
    M(
        "starts-not-restored",
        "lm_lab/module.py",
        'self.starts = cost.get("starts", 0) + 1',
        "self.starts = 1",
        ("tests/test_faults.py::test_killed_right_after_a_step_checkpoint",),
        "start count not restored",
    ),
    M(
        "spikes-not-restored",
        "callbacks/loss_spikes.py",
        '        self.count = state["count"]',
        "        self.count = 0",
        ("tests/test_resume.py::test_loss_spike_monitor_state_survives_a_checkpoint",),
        "loss-spike count not restored",
    ),
    M(
        "rng-not-restored",
        "lm_lab/module.py",
        "            set_rng_state(self._rng_to_restore, rank=self.global_rank, world_size=self.trainer.world_size)\n",
        "",
        ("tests/test_faults.py::test_killed_right_after_a_step_checkpoint",),
        "random state not restored",
    ),
    M(
        "rng-rank0-everywhere",
        "lm_lab/checkpoint.py",
        "return per_rank[rank].clone() if",
        "return per_rank[0].clone() if",
        ("tests/test_resume.py::test_rng_state_per_rank",),
        "every rank gets rank 0's random state back",
    ),
    M(
        "config-hparams-not-applied",
        "lm_lab/module.py",
        "        self._apply_config_to_restored_optimizer()\n",
        "",
        ("tests/test_faults.py::test_a_resume_takes_the_optimizer_settings_of_its_config",),
        "resume keeps the checkpoint's optimizer hyperparameters",
    ),
    M(
        "only-lr-applied",
        "lm_lab/optim/optimizers.py",
        'HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "momentum", "nesterov")',
        'HYPERPARAMETERS = ("lr",)',
        ("tests/test_faults.py::test_a_resume_takes_the_optimizer_settings_of_its_config",),
        "resume applies the config's LR but not its betas, eps or weight decay",
    ),
    M(
        "oldest-checkpoint",
        "lm_lab/checkpoint.py",
        '-pc[1]["global_step"], pc[0].name != "last.ckpt"',
        'pc[1]["global_step"], pc[0].name != "last.ckpt"',
        ("tests/test_resume.py::test_resume_picks_the_newest_checkpoint_by_step",),
        "resume picks the oldest checkpoint",
    ),
    M(
        "position-wrong",
        "lm_lab/data/datamodule.py",
        "return global_step * (self.batch_size // self.micro_batch_size)",
        "return global_step * self.batch_size",
        ("tests/test_faults.py::test_killed_right_after_a_step_checkpoint",),
        "the data position after a resume counts windows, not micro-batches",
    ),
    # -- identity checks --------------------------------------------------------------------------------------
    M(
        "dm-identity-off",
        "lm_lab/data/datamodule.py",
        'changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]',
        "changed = []",
        ("tests/test_data.py::test_a_resume_that_would_read_other_tokens_is_refused",),
        "the data module resumes onto other token files, tokenizer, seed or batch size",
    ),
    M(
        "fit-identity-off",
        "lm_lab/checkpoint.py",
        "        if key in saved_data and saved_data[key] != value:",
        "        if False:",
        ("tests/test_faults.py::test_a_resume_with_other_data_settings_is_refused_before_any_work",),
        "check_compatible ignores seed, batch size, seq_len and the corpus",
    ),
    # -- metrics and timing -----------------------------------------------------------------------------------
    M(
        "clock-through-val",
        "callbacks/throughput.py",
        "            self._elapsed += self.clock() - self._t0  # stop the clock during validation",
        "            pass",
        ("tests/test_fit.py::test_throughput_excludes_validation_time",),
        "throughput clock runs through validation",
    ),
    M(
        "flops-attn-term",
        "lm_lab/models/counting.py",
        'out["attention_scores"] = 12 * cfg.n_layer',
        'out["attention_scores"] = 6 * cfg.n_layer',
        ("tests/test_models.py::test_flops_per_token_formula",),
        "attention FLOPs halved",
    ),
    M(
        "tokens-per-step",
        "callbacks/throughput.py",
        "self.tokens_per_step = micro * self.seq_len * trainer.accumulate_grad_batches * trainer.world_size",
        "self.tokens_per_step = micro * self.seq_len * trainer.world_size",
        ("tests/test_fit.py::test_throughput_excludes_validation_time",),
        "tokens per step ignore gradient accumulation",
    ),
    M(
        "unigram-log2",
        "lm_lab/data/shards.py",
        "np.log(p)",
        "np.log2(p)",
        ("tests/test_data.py::test_unigram_entropy_exact",),
        "unigram entropy in bits, not nats",
    ),
    # -- beyond the probe's list: more bugs a refactor or a new variant could bring ----------------------------
    M(
        "rng-rank0-ddp",
        "lm_lab/checkpoint.py",
        "return per_rank[rank].clone() if",
        "return per_rank[0].clone() if",
        ("tests/test_resume.py::test_two_process_run_killed_and_resumed_continues_each_ranks_random_state",),
        "every rank gets rank 0's random state back (a real 2-process kill and resume)",
    ),
    M(
        "ema-decay-flipped",
        "callbacks/averaging.py",
        '{"avg_fn": get_ema_avg_fn(decay)}',
        '{"avg_fn": get_ema_avg_fn(1 - decay)}',
        ("tests/test_optim.py::test_averaged_weights_match_their_definition_and_are_evaluated_beside_the_raw_ones",),
        "EMA with decay and 1 - decay swapped",
    ),
    M(
        "averaging-start",
        "callbacks/averaging.py",
        "and step_idx >= self.start_step",
        "and step_idx > self.start_step",
        ("tests/test_optim.py::test_averaged_weights_match_their_definition_and_are_evaluated_beside_the_raw_ones",),
        "weight averaging starts one step late",
    ),
    M(
        "checkpoint-every-n",
        "callbacks/checkpoint.py",
        "step % self.every_n_steps == 0",
        "step % (self.every_n_steps + 1) == 0",
        ("tests/test_faults.py::test_killed_right_after_a_step_checkpoint",),
        "step checkpoints at the wrong interval",
    ),
    M(
        "prefer-snapshots",
        "lm_lab/checkpoint.py",
        "found.sort(key=lambda pc: (_before_validation(pc[1]), ",
        "found.sort(key=lambda pc: (False, ",
        ("tests/test_resume.py::test_resume_picks_the_newest_checkpoint_by_step",),
        "resume from a snapshot taken just before a validation (that validation would be skipped)",
    ),
    M(
        "shapes-unchecked",
        "lm_lab/checkpoint.py",
        "problems = tensor_problems(model_shapes(run.model), model_state(ckpt))",
        "problems = []",
        ("tests/test_resume.py::test_finished_runs_incompatible_resumes_and_a_lost_final_validation",),
        "a resume into a model of another shape is not refused up front",
    ),
    M(
        "fork-optimizer-unchecked",
        "lm_lab/checkpoint.py",
        "if differ and not allow:",
        "if False:",
        ("tests/test_fit.py::test_a_fork_with_another_optimizer_is_refused_unless_allowed",),
        "a fork with another peak LR is not refused",
    ),
    M(
        "fork-length",
        "lm_lab/config.py",
        "max_steps = fork_step + sched.cooldown_steps  # a cooldown fork",
        "max_steps = tr.max_steps  # a cooldown fork",
        ("tests/test_forks.py::test_cooldown_forks_equal_single_wsd_runs",),
        "a cooldown fork's length not derived from its start",
    ),
    M(
        "nonfinite-unguarded",
        "lm_lab/module.py",
        "elif not torch.isfinite(norm):",
        "elif False:",
        ("tests/test_fit.py::test_a_non_finite_stop_inside_fit_returns_instead_of_exiting",),
        "non-finite gradients applied",
    ),
    M(
        "epoch-phase-fixed",
        "lm_lab/data/windows.py",
        "phase = int(rng.integers(self.seq_len))",
        "phase = 0",
        ("tests/test_data.py::test_epoch_plan_tiles_each_shard_once_per_epoch",),
        "every epoch cuts the same windows",
    ),
    M(
        "ranks-overlap",
        "lm_lab/data/windows.py",
        "j = local * self.world + self.rank",
        "j = local + self.rank",
        ("tests/test_data.py::test_ranks_read_disjoint_parts_that_make_up_the_single_process_stream",),
        "ranks read overlapping micro-batches",
    ),
    M(
        "val-ranks-overlap",
        "lm_lab/data/windows.py",
        "self.windows = all_windows[rank::world]",
        "self.windows = all_windows",
        ("tests/test_data.py::test_val_windows_cover_each_target_once_across_ranks",),
        "every rank scores every val window",
    ),
    M(
        "muon-takes-embeddings",
        "lm_lab/optim/optimizers.py",
        "hidden = {id(p) for p in params if p.ndim == 2 and id(p) not in embeddings}",
        "hidden = {id(p) for p in params if p.ndim == 2}",
        ("tests/test_optim.py::test_muon_takes_hidden_matrices_and_adamw_the_rest",),
        "Muon orthogonalises the embeddings",
    ),
    M(
        "chinchilla-dense",
        "lm_lab/models/counting.py",
        'return 2 * t * (d * cfg.d_ff * (3 if kind == "swiglu" else 2))',
        'return 2 * t * (d * cfg.d_ff * (3 if kind == "swiglu" else 1))',
        ("tests/test_models.py::test_flops_per_token_formula",),
        "App. F MLP FLOPs halved",
    ),
    M(
        "final-val-tokens",
        "lm_lab/config.py",
        'return self.val_tokens if self.final_val_tokens == "val_tokens" else self.final_val_tokens',
        "return self.val_tokens",
        ("tests/test_fit.py::test_final_evaluation_on_the_whole_held_out_split",),
        "train.final_val_tokens ignored",
    ),
    M(
        "rng-view",
        "lm_lab/checkpoint.py",
        "return per_rank[rank].clone() if",
        "return per_rank[rank] if",
        ("tests/test_resume.py::test_rng_state_per_rank",),
        "a rank's random state restored from a view (torch 2.13 segfaults)",
    ),
    M(
        "ranks-same-dropout",
        "lm_lab/module.py",
        "elif self.global_rank > 0:",
        "elif False:",
        ("tests/test_resume.py::test_two_process_run_killed_and_resumed_continues_each_ranks_random_state",),
        "every rank draws the same dropout masks",
    ),
    M(
        "cooldown-final",
        "lm_lab/optim/schedules.py",
        "    return f + (1 - f) * g\n",
        "    return f + (1 + f) * g\n",
        ("tests/test_schedules.py::test_wsd_against_the_formulas",),
        "a cooldown to a non-zero final LR overshoots",
    ),
    M(
        "plateau-no-reset",
        "lm_lab/optim/schedules.py",
        'p["best"], p["bad"] = val_loss, 0',
        'p["best"] = val_loss',
        ("tests/test_schedules.py::test_plateau_edges",),
        "an improvement does not reset the plateau count",
    ),
    M(
        "appendix-f-softmax",
        "lm_lab/models/counting.py",
        "+ 3 * h * t * t  # softmax",
        "+ 3 * h * t  # softmax",
        ("tests/test_models.py::test_chinchilla_appendix_f_by_hand",),
        "App. F softmax term wrong (a 1% tolerance hid it)",
    ),
    M(
        "token-dtype-edge",
        "lm_lab/data/shards.py",
        "vocab_size <= 2**16",
        "vocab_size < 2**16",
        ("tests/test_data.py::test_token_files_use_the_smallest_dtype_that_holds_every_id",),
        "a 65,536-id vocabulary stored as uint32",
    ),
    M(
        "results-tokens",
        "lm_lab/train.py",
        "tokens = trainer.global_step * run.tokens_per_step",
        "tokens = trainer.global_step * tr.batch_size",
        ("tests/test_fit.py::test_validation_loss_is_the_token_mean_over_every_window",),
        "results' tokens count sequences",
    ),
    M(
        "results-flops",
        "lm_lab/train.py",
        "flops=float(tokens * fpt),",
        "flops=float(6 * tokens * param_count(run.model)),",
        ("tests/test_fit.py::test_validation_loss_is_the_token_mean_over_every_window",),
        "results' FLOPs as 6 N D",
    ),
    M(
        "device-order",
        "lm_lab/devices.py",
        '"gh200", r"gh200",',
        '"gh200", r"gh200 superchip",',
        ("tests/test_devices.py",),
        "a GH200 matched as an H200 (first match wins)",
    ),
    M(
        "device-sparse-peak",
        "lm_lab/devices.py",
        'Device("h100_nvl", r"h100\\s*nvl", 835.5',
        'Device("h100_nvl", r"h100\\s*nvl", 1671.0',
        ("tests/test_devices.py",),
        "the H100 NVL's sparse figure as its peak",
    ),
    # -- compute budgets and the planner ------------------------------------------------------------------------
    M(
        "budget-ceil",
        "lm_lab/scaling/budget.py",
        "return math.floor(flops / (per_token * tokens_per_step))",
        "return math.ceil(flops / (per_token * tokens_per_step))",
        ("tests/test_budget.py::test_flop_budget_derives_the_steps",),
        "a FLOP budget rounded up: one step more than it pays for",
    ),
    M(
        "budget-ignores-convention",
        "lm_lab/scaling/budget.py",
        'if flop_count == "chinchilla":',
        'if flop_count == "never":',
        ("tests/test_budget.py::test_flop_budget_derives_the_steps",),
        "budget.flop_count=chinchilla ignored (steps from 6N + 12LTd)",
    ),
    M(
        "gpu-hours-no-mfu",
        "lm_lab/scaling/budget.py",
        "return self.hours * 3600.0 * self.peak()[0] * 1e12 * self.mfu",
        "return self.hours * 3600.0 * self.peak()[0] * 1e12",
        ("tests/test_budget.py::test_gpu_hours_are_flops_of_the_device_peak",),
        "the assumed MFU left out of a GPU-hour budget",
    ),
    M(
        "budget-not-the-horizon",
        "lm_lab/config.py",
        "            max_steps = from_budget  # the budget's steps",
        "            max_steps = max_steps  # the budget's steps",
        ("tests/test_budget.py::test_a_flop_budget_stops_at_its_step_with_the_schedule_at_its_end",),
        "the budget's steps not used as train.max_steps",
    ),
    M(
        "clock-no-final-validation",
        "lm_lab/scaling/budget.py",
        "return n * step_seconds + middle * val_seconds + final_seconds",
        "return n * step_seconds + middle * val_seconds",
        (
            "tests/test_budget.py::test_a_wall_clock_budget_starts_the_cooldown_on_time_and_ends_annealed_at_the_deadline",
        ),
        "the final validation's time not reserved",
    ),
    M(
        "clock-cooldown-late",
        "callbacks/budget.py",
        "left <= self.cooldown_frac * self.seconds",
        "left < self.cooldown_frac * self.seconds / 2",
        (
            "tests/test_budget.py::test_a_wall_clock_budget_starts_the_cooldown_on_time_and_ends_annealed_at_the_deadline",
        ),
        "the cooldown started at half its share of the time",
    ),
    M(
        "clock-forgets-spent-time",
        "callbacks/budget.py",
        'state.get("seconds", 0.0), state.get("stopped", False)',
        '0.0, state.get("stopped", False)',
        (
            "tests/test_budget.py::test_a_wall_clock_budget_killed_mid_cooldown_resumes_with_the_time_left_and_the_same_schedule",
        ),
        "a resumed run's budget restarts from zero",
    ),
    M(
        "clock-forgets-horizon",
        "callbacks/budget.py",
        'self.horizon, self.cooldown_steps = state.get("horizon"), state.get("cooldown_steps")',
        "self.horizon, self.cooldown_steps = None, None",
        (
            "tests/test_budget.py::test_a_wall_clock_budget_killed_mid_cooldown_resumes_with_the_time_left_and_the_same_schedule",
        ),
        "a resumed run decides its cooldown again",
    ),
    M(
        "clock-no-retime",
        "callbacks/budget.py",
        "        elif self.cooldown_steps and step < self.horizon:\n            decision = self._retime(step)",
        "        elif False:\n            decision = self._retime(step)",
        ("tests/test_budget.py::test_a_slower_cooldown_is_re_timed_and_still_ends_annealed_within_one_step",),
        "the cooldown's end never re-timed",
    ),
    M(
        "clock-never-stops",
        "callbacks/budget.py",
        "return self.used() + clock_cost(step, 1, **self._times()) > self.seconds",
        "return False",
        ("tests/test_budget.py::test_the_clock_stops_a_run_before_the_step_that_would_overshoot",),
        "the clock never stops a run",
    ),
    M(
        "clock-fork-inherits",
        "callbacks/budget.py",
        "        if self.resuming:  # (a fork's source",
        "        if True:  # (a fork's source",
        (
            "tests/test_budget.py::test_a_wall_clock_budget_killed_mid_cooldown_resumes_with_the_time_left_and_the_same_schedule",
        ),
        "a fork takes its source's spent seconds and horizon",
    ),
    M(
        "clock-past-the-cap",
        "callbacks/budget.py",
        "return (end, 0) if end < self.cap else None",
        "return end, 0",
        ("tests/test_budget.py::test_the_step_cap_of_a_wall_clock_budget_ends_the_run_with_its_own_schedule",),
        "a cosine horizon decided past budget.max_steps",
    ),
    M(
        "law-hoffmann-exponent",
        "lm_lab/scaling/laws.py",
        "a = self.beta / (self.alpha + self.beta)",
        "a = self.alpha / (self.alpha + self.beta)",
        ("tests/test_planner.py::test_parametric_optimum_minimises_the_loss_on_the_iso_flop_line",),
        "N_opt's exponent a = alpha / (alpha + beta) (swapped with b)",
    ),
    M(
        "planner-non-embedding",
        "lm_lab/scaling/planner.py",
        "miss = abs(param_count(cfg) / target - 1)",
        "miss = abs(non_embedding_params(cfg) / target - 1)",
        ("tests/test_planner.py::test_the_plan_has_the_parameters_it_prints_and_lands_within_5_percent",),
        "shapes matched on non-embedding parameters (Kaplan's count) against Hoffmann's N_opt",
    ),
    M(
        "plan-steps-from-6nd",
        "lm_lab/scaling/planner.py",
        "steps = budget_steps(budget, cfg, seq_len, tokens_per_step)",
        "steps = math.floor(flops / (6 * param_count(cfg) * tokens_per_step))",
        ("tests/test_planner.py::test_the_plan_has_the_parameters_it_prints_and_lands_within_5_percent",),
        "the plan's steps from 6N instead of the count run.py derives them with",
    ),
    # -- scaling studies: report, sweeps, bits per byte ------------------------------------------------------
    M(
        "report-student-t",
        "lm_lab/scaling/report.py",
        "stats.ttest_ind(a, b, equal_var=False)",
        "stats.ttest_ind(a, b)",
        ("tests/test_report.py::test_welch_flags_a_planted_difference_and_not_a_null_one",),
        "Student's t-test (equal variances) instead of Welch's",
    ),
    M(
        "report-normal-interval",
        "lm_lab/scaling/report.py",
        "half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)",
        "half = 1.96 * sd / math.sqrt(n)",
        ("tests/test_report.py::test_fields_that_differ_and_seed_groups",),
        "a normal 95% interval for 3 seeds (t has 4.30, not 1.96)",
    ),
    M(
        "report-seed-not-grouped",
        "lm_lab/scaling/report.py",
        "key = tuple(run.settings.get(f) for f in fields if f != SEED)",
        "key = tuple(run.settings.get(f) for f in fields)",
        ("tests/test_report.py::test_fields_that_differ_and_seed_groups",),
        "runs that differ only by seed not grouped",
    ),
    M(
        "report-spent-flops",
        "lm_lab/scaling/report.py",
        'out["flops"] = r.budget_flops if r.budget_flops is not None else r.flops',
        'out["flops"] = r.flops',
        ("tests/test_report.py::test_csv_feeds_the_fits_and_leaves_unfinished_runs_out",),
        "the CSV's flops are the FLOPs spent, so an IsoFLOP budget's runs no longer share one value",
    ),
    M(
        "isoflop-span-halved",
        "lm_lab/scaling/sweep.py",
        "return [n_opt * span ** (2 * i / (points - 1) - 1) for i in range(points)]",
        "return [n_opt * span ** (i / (points - 1) - 0.5) for i in range(points)]",
        ("tests/test_sweeps.py::test_isoflop_targets_span_a_factor_of_four_each_way",),
        "IsoFLOP sizes spanning x1/2..x2 instead of x1/4..x4",
    ),
    M(
        "cooldown-accounting-forks-from-scratch",
        "lm_lab/scaling/sweep.py",
        'forks = sum(p["flops"] - p["fork_step"] * p["flops"] / p["steps"] for p in points)',
        'forks = sum(p["flops"] for p in points)',
        ("tests/test_sweeps.py::test_fork_plan_and_accounting",),
        "each cooldown charged as a run from scratch",
    ),
    M(
        "bpb-nats",
        "lm_lab/train.py",
        "return val_loss * tokens / n_bytes / math.log(2)",
        "return val_loss * tokens / n_bytes",
        ("tests/test_fit.py::test_validation_loss_is_the_token_mean_over_every_window",),
        "bits per byte in nats",
    ),
    M(
        "token-bytes-symbols",
        "lm_lab/data/tokenizers.py",
        "                    lengths[i] = len(t)\n",
        "                    lengths[i] = len(t.encode())\n",
        ("tests/test_data.py::test_token_bytes_add_up_to_the_texts_utf8_bytes",),
        "a byte-level token's printable symbols counted as UTF-8 (2 bytes for each non-ASCII byte)",
    ),
    M(
        "fit-huber-delta",
        "lm_lab/scaling/fits.py",
        "HUBER_DELTA = 1e-3",
        "HUBER_DELTA = 1e-2",
        ("tests/test_fits.py::test_parametric_recovers_a_known_law",),
        "Huber delta 1e-2 instead of Hoffmann et al.'s 1e-3",
    ),
    M(
        "fit-grid-a",
        "lm_lab/scaling/fits.py",
        '"a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),',
        '"a": (0.0, 5.0, 10.0, 15.0, 20.0),',
        ("tests/test_fits.py::test_the_default_grid_is_the_papers",),
        "the initialisation grid of a cut short",
    ),
    M(
        "fit-vertex-sign",
        "lm_lab/scaling/fits.py",
        "centre - c1 / (2 * c2)",
        "centre + c1 / (2 * c2)",
        ("tests/test_fits.py::test_isoflop_recovers_the_power_laws_and_predicts",),
        "the parabola's vertex with the wrong sign",
    ),
    M(
        "fit-allocation-swapped",
        "lm_lab/scaling/fits.py",
        '{"a": beta / (alpha + beta), "b": alpha / (alpha + beta)',
        '{"a": alpha / (alpha + beta), "b": beta / (alpha + beta)',
        ("tests/test_fits.py::test_parametric_recovers_a_known_law",),
        "N_opt's and D_opt's exponents swapped",
    ),
    M(
        "fit-gradient-sign",
        "lm_lab/scaling/fits.py",
        "-(pw1 @ log_n)",
        "(pw1 @ log_n)",
        ("tests/test_fits.py::test_objective_is_the_sum_of_huber_losses_and_its_gradient_is_exact",),
        "the analytic gradient's alpha component with the wrong sign",
    ),
    M(
        "fit-loose-tolerance",
        "lm_lab/scaling/fits.py",
        '"ftol": 1e-14, "gtol": 1e-12',
        '"ftol": 1e-6, "gtol": 1e-5',
        ("tests/test_fits.py::test_parametric_recovers_a_known_law",),
        "a loose stopping rule (stops at a visibly worse optimum)",
    ),
    M(
        "fit-bootstrap-quartiles",
        "lm_lab/scaling/fits.py",
        "[2.5, 97.5]",
        "[25, 75]",
        ("tests/test_fits.py::test_bootstrap_intervals_are_the_95_percent_percentiles_of_refits_on_resamples",),
        "the bootstrap interval is the interquartile range",
    ),
    M(
        "search-cd-ties-move",
        "lm_lab/scaling/search.py",
        "            if v < value:\n                x[i], value, moved = j, v, True",
        "            if v <= value:\n                x[i], value, moved = j, v, True",
        (
            "tests/test_search.py::test_coordinate_descent_finds_the_grid_minimum_of_a_separable_objective_and_stops_after_a_quiet_pass",
        ),
        "coordinate descent counts a tie as a move, so a full pass never ends quiet",
    ),
    M(
        "search-running-trials-free",
        "lm_lab/scaling/search.py",
        "        return cls(len(counted), spent, spent + pending * trial_flops)",
        "        return cls(len(counted), spent, spent)",
        ("tests/test_search.py::test_the_ledger_counts_a_retried_trial_once_and_a_running_one_at_its_full_budget",),
        "running trials cost nothing in the FLOP budget",
    ),
    M(
        "search-dead-worker-waits",
        "lm_lab/scaling/search.py",
        '(pid == worker["pid"] or not alive(pid))',
        'pid == worker["pid"]',
        ("tests/test_search.py::test_a_dead_workers_trial_is_rerun_at_once_with_its_parameters_in_its_run_directory",),
        "a dead local worker's trial waits out the grace period",
    ),
    M(
        "search-retry-new-dir",
        "lm_lab/scaling/search.py",
        '        keep = {k: trial.user_attrs[k] for k in ("run_dir",) if k in trial.user_attrs}',
        "        keep = {}",
        ("tests/test_search.py::test_a_dead_workers_trial_is_rerun_at_once_with_its_parameters_in_its_run_directory",),
        "a re-run trial trains afresh in a new directory instead of resuming its checkpoint",
    ),
    M(
        "search-one-seed",
        "lm_lab/scaling/search.py",
        "make_sampler(self.sampler, trial_seed(self.seed, len(trials)))",
        "make_sampler(self.sampler, self.seed)",
        ("tests/test_search.py::test_each_sampler_is_reproducible_on_the_law_objective_and_keeps_to_its_flop_budget",),
        "one sampler seed for every trial: points repeat",
    ),
    M(
        "search-budget-overshoot",
        "lm_lab/scaling/search.py",
        "book.committed + self.space.trial_flops > self.budget_flops",
        "book.committed > self.budget_flops",
        ("tests/test_search.py::test_each_sampler_is_reproducible_on_the_law_objective_and_keeps_to_its_flop_budget",),
        "the last trial overshoots the study's FLOP budget",
    ),
    M(
        "swa-window-unequal-weights",
        "lm_lab/optim/averaging.py",
        "mean.lerp_(w, 1 / self.count)",
        "mean.lerp_(w, 1 / (self.count + 1))",
        ("tests/test_swa_windows.py::test_window_means_equal_their_definition_on_a_known_sequence",),
        "a window's samples weighed unequally",
    ),
    M(
        "swa-last-window-only",
        "lm_lab/optim/averaging.py",
        "[*self.completed, self.running][-self.windows :]",
        "[self.running]",
        ("tests/test_swa_windows.py::test_window_means_equal_their_definition_on_a_known_sequence",),
        "windows=n scores only the latest window",
    ),
    M(
        "swa-window-shifted",
        "callbacks/averaging.py",
        "t = trainer.global_step - 1 - self.start_step",
        "t = trainer.global_step - self.start_step",
        ("tests/test_swa_windows.py::test_the_callback_scores_the_latest_windows_in_a_real_run",),
        "windows shifted by one step",
    ),
    M(
        "swa-scores-before-a-window",
        "callbacks/averaging.py",
        "(self.windowed is None or bool(self.windowed.completed))",
        "(self.windowed is None or True)",
        ("tests/test_swa_windows.py::test_the_callback_scores_the_latest_windows_in_a_real_run",),
        "the initial weights scored before any window completes",
    ),
    M(
        "swa-windows-not-restored",
        "callbacks/averaging.py",
        "if self.windowed is not None and windows is not None:",
        "if False:",
        ("tests/test_swa_windows.py::test_a_run_killed_mid_window_resumes_the_windows_bit_exact",),
        "the windows not restored on resume",
    ),
    # -- architectures (issue 13) -----------------------------------------------------------------------------
    M(
        "moe-no-gshard-renorm",
        "lm_lab/models/moe.py",
        "gates = gates / gates.sum(dim=-1, keepdim=True)",
        "gates = gates",
        ("tests/test_architectures.py::test_moe_routes_every_token_to_k_experts",),
        "top-2 gates not renormalised (GShard)",
    ),
    M(
        "moe-capacity-without-k",
        "lm_lab/models/moe.py",
        "math.ceil(cfg.moe_capacity_factor * cfg.moe_top_k * tokens / cfg.moe_experts)",
        "math.ceil(cfg.moe_capacity_factor * tokens / cfg.moe_experts)",
        (
            "tests/test_architectures.py::test_capacity_formula",
            "tests/test_architectures.py::test_top2_capacity_queues_first_choices_before_second_choices",
        ),
        "expert capacity ignores top_k",
    ),
    M(
        "moe-token-major-queue",
        "lm_lab/models/moe.py",
        "onehot = F.one_hot(experts.t().reshape(-1), self.cfg.moe_experts)  # (k * N, E), choice-major\n            position = (onehot.cumsum(0) * onehot).sum(-1) - 1\n            kept = (position < limit).view(self.cfg.moe_top_k, -1).t()  # (N, k)",
        "onehot = F.one_hot(experts.reshape(-1), self.cfg.moe_experts)\n            position = (onehot.cumsum(0) * onehot).sum(-1) - 1\n            kept = (position < limit).view(-1, self.cfg.moe_top_k)",
        ("tests/test_architectures.py::test_top2_capacity_queues_first_choices_before_second_choices",),
        "second choices queued with first choices, token by token",
    ),
    M(
        "moe-capacity-in-eval",
        "lm_lab/models/moe.py",
        "limit = capacity(self.cfg, x.shape[0]) if self.training else None",
        "limit = capacity(self.cfg, x.shape[0])",
        ("tests/test_architectures.py::test_evaluation_routes_every_token_whatever_the_capacity",),
        "evaluation drops tokens over capacity",
    ),
    M(
        "moe-no-aux-in-training",
        "lm_lab/models/loss.py",
        "return Loss(lm if aux is None else lm + aux, lm, aux)",
        "return Loss(lm, lm, aux)",
        (
            "tests/test_variant_runs.py::test_validation_scores_the_cross_entropy_alone_and_training_adds_the_aux_loss",
            "tests/test_variant_runs.py::test_a_moe_denseformer_llama_run_logs_its_routing_and_resumes_exactly",
        ),
        "the MoE losses never reach the gradient",
    ),
    M(
        "moe-active-counts-all",
        "lm_lab/models/counting.py",
        "experts = cfg.moe_top_k if active else cfg.moe_experts",
        "experts = cfg.moe_experts",
        (
            "tests/test_architectures.py::test_moe_active_params_and_flops",
            "tests/test_variant_runs.py::test_a_moe_denseformer_llama_run_logs_its_routing_and_resumes_exactly",
        ),
        "active parameters count every expert",
    ),
    M(
        "dwa-init-first",
        "lm_lab/models/gpt.py",
        "alpha.data[-1] = 1.0",
        "alpha.data[0] = 1.0",
        ("tests/test_architectures.py::test_denseformer_at_init_is_the_plain_model",),
        "DenseFormer starts on the embeddings, not the plain model",
    ),
    M(
        "dwa-averages-averaged-inputs",
        "lm_lab/models/gpt.py",
        "                outputs.append(x)\n                x = self.dwa(outputs, i)",
        "                outputs.append(x)\n                x = self.dwa(outputs, i)\n                outputs[-1] = x",
        ("tests/test_architectures.py::test_denseformer_forward_by_hand",),
        "DWA averages the averaged inputs instead of the blocks' outputs",
    ),
    M(
        "rope-interleaved",
        "lm_lab/models/layers.py",
        "    x1, x2 = x.chunk(2, dim=-1)\n    rotated = torch.cat((-x2, x1), dim=-1)",
        "    x1, x2 = x[..., ::2], x[..., 1::2]\n    rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)",
        (
            "tests/test_architectures.py::test_rope_rotates_the_half_split_pairs_at_llama_frequencies",
            "tests/test_architectures.py::test_parity_with_huggingface_llama",
        ),
        "RoPE pairs (2i, 2i+1) against the half-split tables",
    ),
    M(
        "gqa-tiled-heads",
        "lm_lab/models/layers.py",
        "        y = self.attend(q, k, v,",
        "        k, v = (t.repeat(1, self.n_head // self.n_kv_head, 1, 1) for t in (k, v))\n        y = self.attend(q, k, v,",
        ("tests/test_architectures.py::test_grouped_query_attention_is_mha_with_repeated_kv_heads",),
        "query head h reads kv head h % n_kv instead of h // group",
    ),
    M(
        "inverse-layer-scale-in-sqrt",
        "lm_lab/models/layers.py",
        "math.sqrt(self.head_dim) * (layer_idx + 1)",
        "math.sqrt(self.head_dim * (layer_idx + 1))",
        ("tests/test_architectures.py::test_parity_with_huggingface_gpt2_scaled_by_inverse_layer",),
        "inverse-layer scale inside the square root",
    ),
    M(
        "swiglu-width-floor",
        "lm_lab/models/config.py",
        "return m * math.ceil(int(2 * 4 * self.d_model / 3) / m)",
        "return m * math.floor(int(2 * 4 * self.d_model / 3) / m)",
        ("tests/test_architectures.py::test_hagele_sizes_match_their_table",),
        "SwiGLU width rounded down",
    ),
    M(
        "moe-f-stays-dense",
        "lm_lab/models/config.py",
        'return ["E" if k == "F" and self.mlp == "moe" else k for k in kinds]',
        "return kinds",
        ("tests/test_architectures.py::test_block_pattern_builds_the_named_sublayers",),
        "mlp=moe leaves the feed-forwards dense",
    ),
    M(
        "muon-qkv-fused",
        "lm_lab/optim/optimizers.py",
        "splits=qkv_splits(model),",
        "splits={},",
        ("tests/test_optim_papers.py::test_muon_orthogonalises_the_models_q_k_and_v_apart",),
        "Muon orthogonalises the fused qkv as one matrix",
    ),
    M(
        "muon-block-lr-of-whole",
        "lm_lab/optim/optimizers.py",
        "rows.add_(ortho, alpha=-_adjust_lr(lr, adjust_lr_fn, block.shape))",
        "rows.add_(ortho, alpha=-_adjust_lr(lr, adjust_lr_fn, param.shape))",
        (
            "tests/test_optim_papers.py::test_split_muon_is_torch_muon_on_each_row_block_as_its_own_matrix",
            "tests/test_optim_papers.py::test_muon_orthogonalises_the_models_q_k_and_v_apart",
        ),
        "q/k/v LR adjusted by the fused shape",
    ),
    M(
        "decay-embeddings-ignored",
        "lm_lab/optim/optimizers.py",
        "exempt = set() if decay_embeddings else embeddings",
        "exempt = set()",
        (
            "tests/test_optim_papers.py::test_decay_embeddings_false_exempts_every_embedding_and_the_tied_head_true_keeps_todays_groups",
            "tests/test_optim_papers.py::test_a_zero_gradient_step_decays_exactly_the_chosen_tensors",
        ),
        "optimizer.decay_embeddings=false ignored",
    ),
    M(
        "muon-adamw-decays-embeddings",
        "lm_lab/optim/optimizers.py",
        "param_groups(rest, cfg.weight_decay, cfg.decay_embeddings, embedding_ids(model))",
        "param_groups(rest, cfg.weight_decay)",
        ("tests/test_optim_papers.py::test_a_zero_gradient_step_decays_exactly_the_chosen_tensors",),
        "Muon's AdamW part decays embeddings regardless",
    ),
    M(
        "8bit-embeddings-8bit",
        "lm_lab/optim/optimizers.py",
        "        keep_embeddings_32bit(model)\n",
        "",
        ("tests/test_optim_papers.py::test_adamw8bit_keeps_the_embeddings_states_in_32bit",),
        "8-bit AdamW quantises the embedding's states",
    ),
    M(
        "recipe-decays",
        "conf/recipe/hagele.yaml",
        "decay_embeddings: false",
        "decay_embeddings: true",
        ("tests/test_optim_papers.py::test_the_hagele_recipe_decays_no_embedding_and_the_default_config_does",),
        "Hägele recipe decays embeddings",
    ),
    M(
        "muon-untied-head",
        "lm_lab/optim/optimizers.py",
        '    head = getattr(model, "lm_head", None)\n',
        "    head = None\n",
        ("tests/test_optim_papers.py::test_muon_leaves_an_untied_head_to_adamw",),
        "an untied head goes to Muon",
    ),
    M(
        "width-depth-round-in-d",
        "lm_lab/scaling/width_depth.py",
        "best = min(candidates, key=lambda h: (abs(12 * (h * head_dim) ** 2 * n_layer - params), h))",
        "best = max(1, round(heads))",
        ("tests/test_width_depth.py::test_the_width_is_the_multiple_nearest_in_N_not_in_d",),
        "width rounded in d, not in N",
    ),
    M(
        "width-depth-miss-sign",
        "lm_lab/scaling/width_depth.py",
        "if abs(miss) > max_miss:",
        "if miss > max_miss:",
        (
            "tests/test_width_depth.py::test_refusals_name_the_setting_and_the_fix",
            "tests/test_width_depth.py::test_every_shape_holds_N_with_whole_heads",
        ),
        "shapes far below N accepted",
    ),
    M(
        "width-depth-no-head-floor",
        "lm_lab/scaling/width_depth.py",
        "candidates = {max(1, math.floor(heads)), max(1, math.ceil(heads))}",
        "candidates = {math.floor(heads), math.ceil(heads)}",
        ("tests/test_width_depth.py::test_the_width_is_at_least_one_head",),
        "zero heads allowed",
    ),
    M(
        "dropout-attn-site-to-resid",
        "conf/experiment/dropout.yaml",
        'attn: {embd: 0.0, attn: "${dropout_study.p}", resid: 0.0}',
        'attn: {embd: 0.0, attn: 0.0, resid: "${dropout_study.p}"}',
        ("tests/test_width_depth.py::test_each_dropout_site_sets_its_three_probabilities",),
        "dropout study's attn site drops the residual",
    ),
    M(
        "resume-ignores-architecture",
        "lm_lab/checkpoint.py",
        'problems = architecture_problems(saved.get("model", {}), run.model)',
        "problems = []",
        ("tests/test_variant_runs.py::test_a_resume_refuses_architecture_and_decay_changes_that_keep_every_shape",),
        "a resume with another norm/positions/tying/routing continues silently",
    ),
    M(
        "resume-ignores-decay-rule",
        "lm_lab/checkpoint.py",
        'if saved.get("optimizer") and saved_decay != run.optimizer.decay_embeddings:',
        "if False:",
        ("tests/test_variant_runs.py::test_a_resume_refuses_architecture_and_decay_changes_that_keep_every_shape",),
        "a resume with another decay rule crashes inside torch",
    ),
    M(
        "untied-over-tied",
        "lm_lab/checkpoint.py",
        "if not problems and tied and not torch.equal(",
        "if False and not torch.equal(",
        ("tests/test_variant_runs.py::test_an_untied_head_is_never_loaded_over_a_tied_models_embedding",),
        "an untied head silently overwrites a tied embedding",
    ),
    M(
        "router-half-precision",
        "lm_lab/models/moe.py",
        "with torch.autocast(x.device.type, enabled=False):",
        "with torch.autocast(x.device.type):",
        ("tests/test_architectures.py::test_router_and_denseformer_averages_stay_float32_under_bf16_autocast",),
        "the router runs in bf16 under autocast",
    ),
    M(
        "surgery-attn-without-norm",
        "lm_lab/inherit/surgery.py",
        '"attn": ("A", True),',
        '"attn": ("A", False),',
        ("tests/test_surgery.py::test_inheriting_n_layers_copies_exactly_the_chosen_sub_modules",),
        "modules=attn inherits the attention without its norm",
    ),
    M(
        "surgery-half-width-qkv",
        "lm_lab/inherit/surgery.py",
        'if ".qkv." in key:',
        'if ".qkv_." in key:',
        ("tests/test_surgery.py::test_half_width_keeps_the_first_half_of_every_hidden_dimension",),
        "half width slices the fused qkv as one matrix, not per head",
    ),
    M(
        "surgery-growth-offset",
        "lm_lab/inherit/surgery.py",
        "else (ref_state, j, parts) for j in range(n)]",
        "else (ref_state, j - m, parts) for j in range(n)]",
        (
            "tests/test_surgery.py::test_growth_takes_the_first_blocks_from_the_trained_target_and_the_next_from_the_reference",
        ),
        "growth inherits the reference's first layers instead of its next ones",
    ),
    M(
        "surgery-stack-order",
        "lm_lab/inherit/surgery.py",
        "[(state, j % m, None) for j in range(n)]",
        "[(state, j // (n // m), None) for j in range(n)]",
        (
            "tests/test_surgery.py::test_stacking_repeats_the_trained_blocks_and_hybrid_stacking_the_references_first_half",
        ),
        "stacking repeats each layer in place instead of the stack on top",
    ),
    M(
        "surgery-weights-always-partial",
        "lm_lab/checkpoint.py",
        "partial = fn is not None",
        "partial = True",
        ("tests/test_surgery.py::test_start_weights_dispatches_each_surgery_and_logs_what_is_fresh",),
        "init=weights without a map accepts a checkpoint missing tensors",
    ),
    M(
        "surgery-inits-ignored-by-fit",
        "lm_lab/train.py",
        'elif run.init.name not in ("random", "fork"):',
        'elif run.init.name == "weights":',
        ("tests/test_surgery.py::test_fit_starts_a_two_layer_target_from_a_four_layer_runs_first_layers",),
        "fit ignores init=inheritune and trains from random weights",
    ),
    M(
        "hf-vocab-rows-shifted",
        "lm_lab/hf.py",
        "t = t[: cfg.vocab_size].clone()",
        "t = t[1 : cfg.vocab_size + 1].clone()",
        ("tests/test_hf.py::test_lm_eval_accuracy_equals_the_accuracy_of_our_own_log_likelihoods",),
        "the export drops the wrong vocabulary rows",
    ),
    M(
        "hf-llama-qkv-order",
        "lm_lab/hf.py",
        '[f"{hf}.self_attn.{p}_proj" for p in "qkv"]',
        '[f"{hf}.self_attn.{p}_proj" for p in "qvk"]',
        ("tests/test_hf.py::test_an_hf_llama_reads_as_the_lab_model_with_equal_logits",),
        "LLaMA's k and v projections swapped on import",
    ),
    M(
        "hf-llama-eps-export",
        "lm_lab/hf.py",
        '"rms_norm_eps": cfg.layer_norm_eps,',
        '"rms_norm_eps": 1e-6,',
        ("tests/test_hf.py::test_a_lab_llama_exports_as_llamaforcausallm_with_equal_logits",),
        "the exported LLaMA config loses the norm epsilon",
    ),
    M(
        "hf-gpt2-eps-import",
        "lm_lab/hf.py",
        'layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),',
        "layer_norm_eps=1e-5,",
        ("tests/test_hf.py::test_a_sharded_hf_gpt2_folder_reads_as_the_lab_model_with_equal_logits",),
        "GPT-2's layer_norm_epsilon ignored on import",
    ),
    M(
        "distill-kd-mean-over-batch",
        "lm_lab/inherit/distill.py",
        'kl = F.kl_div(log_s, log_t, log_target=True, reduction="sum") / log_s.shape[0]',
        'kl = F.kl_div(log_s, log_t, log_target=True, reduction="sum") / student_logits.shape[0]',
        ("tests/test_distill.py::test_kd_loss_is_the_temperature_scaled_kl_mean_per_token",),
        "KD averaged per sequence, not per token",
    ),
    M(
        "distill-alpha-swapped",
        "lm_lab/inherit/distill.py",
        "return DistillLoss(alpha * lm + (1 - alpha) * kd, lm, kd, None)",
        "return DistillLoss((1 - alpha) * lm + alpha * kd, lm, kd, None)",
        ("tests/test_distill.py::test_logit_kd_weights_ce_by_alpha_and_ignores_padded_vocab_rows",),
        "alpha weights the KD term instead of the LM term",
    ),
    M(
        "distill-padded-rows",
        "lm_lab/inherit/distill.py",
        "kd = kd_loss(student_logits[..., :vocab_size], teacher_logits[..., :vocab_size], temperature)",
        "kd = kd_loss(student_logits, teacher_logits, temperature)",
        ("tests/test_distill.py::test_logit_kd_weights_ce_by_alpha_and_ignores_padded_vocab_rows",),
        "KD counts the padded vocabulary rows",
    ),
    M(
        "distill-teacher-registered",
        "lm_lab/inherit/distill.py",
        "self.teacher_config, self._teacher = teacher_cfg, _Shared(teacher)",
        "self.teacher_config, self._teacher, self.teacher_module = teacher_cfg, _Shared(teacher), teacher",
        ("tests/test_distill.py::test_the_teacher_is_frozen_and_no_part_of_the_student",),
        "the teacher becomes a submodule of the student (its parameters trained and checkpointed)",
    ),
    M(
        "distill-train-loss-is-total",
        "lm_lab/inherit/distill.py",
        'self.log("train/loss", loss.lm, prog_bar=True)',
        'self.log("train/loss", loss.total, prog_bar=True)',
        ("tests/test_distill.py::test_a_distillation_run_trains_logs_its_losses_and_leaves_the_teacher_out",),
        "train/loss logs the distillation objective, not the LM loss",
    ),
    M(
        "grow-strict-match",
        "lm_lab/inherit/grow.py",
        "if math.isfinite(val_loss) and val_loss <= reference + tolerance:",
        "if math.isfinite(val_loss) and val_loss < reference + tolerance:",
        ("tests/test_inheritune.py::test_stage_sizes_and_decisions",),
        "a target equal to the reference grows again",
    ),
    M(
        "grow-past-k",
        "lm_lab/inherit/grow.py",
        "sizes.append(min(sizes[-1] + grow_by, k))",
        "sizes.append(sizes[-1] + grow_by)",
        ("tests/test_inheritune.py::test_stage_sizes_and_decisions",),
        "the loop grows past the reference's depth",
    ),
    M(
        "grow-from-reference-always",
        "lm_lab/inherit/grow.py",
        'grows = previous is not None and self.cfg.grow_from == "target"',
        "grows = False",
        ("tests/test_inheritune.py::test_the_loop_stops_at_the_right_stage",),
        "each stage re-inherits from the reference: the trained target is thrown away",
    ),
    M(
        "grow-baseline-2x",
        "lm_lab/inherit/grow.py",
        "steps = 2 * T",
        "steps = T",
        ("tests/test_inheritune.py::test_grow_from_reference_re_inherits_and_baselines_follow_the_final_size",),
        "the 2T baseline trains T steps",
    ),
    M(
        "grow-reference-scored-on-val-tokens",
        "lm_lab/inherit/scoring.py",
        "data = data_module(run, val_tokens=tr.final_tokens)",
        "data = data_module(run, val_tokens=4096)",
        ("tests/test_inheritune.py::test_a_real_loop_inherits_resumes_mid_loop_and_scores_like_fit",),
        "the reference is scored on other tokens than the stages' final evaluations",
    ),
    M(
        "distill-config-ignored",
        "lm_lab/train.py",
        'if run.distill.kind != "none" and module_cls is LMModule:',
        "if False:",
        ("tests/test_inheritune.py::test_a_real_loop_inherits_resumes_mid_loop_and_scores_like_fit",),
        "distill= in the config trains without the teacher",
    ),
    M(
        "attn-rank-tolerance",
        "lm_lab/analysis/attention.py",
        "count = (share < threshold - TOLERANCE).sum(-1) + 1",
        "count = (share < threshold).sum(-1) + 1",
        ("tests/test_analysis.py::test_known_spectrum_gives_the_hand_computed_rank_at_and_around_each_boundary",),
        "k* miscounts a share that float rounding leaves just under 0.9",
    ),
    M(
        "attn-mass-rows",
        "lm_lab/analysis/attention.py",
        "mass = probs.double().sum(-2)",
        "mass = probs.double().sum(-1)",
        ("tests/test_analysis.py::test_all_mass_on_one_column_is_one_column_and_rank_one",),
        "m* sums rows (always 1) instead of columns",
    ),
    M(
        "attn-gqa-repeat",
        "lm_lab/models/layers.py",
        "k, v = (t.repeat_interleave(H // t.shape[1], dim=1) for t in (k, v))",
        "k, v = (t.repeat(1, H // t.shape[1], 1, 1) for t in (k, v))",
        ("tests/test_analysis.py::test_explicit_attention_equals_the_fused_kernel_and_keeps_causal_probabilities",),
        "the explicit attention groups query heads with the wrong key/value heads",
    ),
    M(
        "attn-explicit-scale",
        "lm_lab/models/layers.py",
        "scale = self.scale if self.scale is not None else 1.0 / math.sqrt(D)",
        "scale = 1.0 / math.sqrt(D)",
        ("tests/test_analysis.py::test_explicit_attention_equals_the_fused_kernel_and_keeps_causal_probabilities",),
        "the explicit attention ignores attn_scale_by_layer",
    ),
    M(
        "attn-monitor-shifted-batch",
        "callbacks/attention.py",
        "self._batch[:, :-1],  # the model's input",
        "self._batch[:, 1:],  # the model's input",
        ("tests/test_analysis.py::test_monitor_leaves_training_bit_identical_and_logs_scalars_and_images",),
        "the monitor measures on the targets, not the inputs",
    ),
    # -- corpora: layouts, bad files, pieces, the cache (issue 10) -----------------------------------------------
    M(
        "whole-long-documents",
        "lm_lab/data/files.py",
        "        if second is None:  # fits in one piece",
        "        if True:  # fits in one piece",
        ("tests/test_corpus_files.py::test_a_document_larger_than_the_process_may_hold_is_prepared",),
        "a long .txt document is read whole into memory",
    ),
    M(
        "cut-inside-whitespace",
        "lm_lab/data/files.py",
        "if i + 1 < len(text) and not text[i - 1].isspace() and not text[i + 1].isspace():",
        "if i + 1 < len(text) and not text[i + 1].isspace():",
        ("tests/test_corpus_files.py::test_cut_keeps_the_tokens_of_byte_level_bpes",),
        "pieces cut after a run of newlines (the run's last newline pre-tokenises differently)",
    ),
    M(
        "readme-config-ignored",
        "lm_lab/data/files.py",
        "        name = config or configs.get_default_config_name()",
        "        name = configs.get_default_config_name()",
        ("tests/test_corpus_files.py::test_a_local_copy_of_a_hub_dataset_is_read_by_its_readme_configs",),
        "a local copy reads the README's default config whatever data.config says",
    ),
    M(
        "unassigned-files-dropped",
        "lm_lab/data/files.py",
        "    left = [f for f in data if f not in assigned]",
        "    left = []",
        ("tests/test_corpus_files.py::test_a_folder_is_read_as_what_it_holds",),
        "files that split names in file names leave in no split are silently dropped",
    ),
    M(
        "compressed-unrecognised",
        "lm_lab/data/files.py",
        'if fmt != "parquet" and name.endswith(suffix + comp):',
        'if fmt != "parquet" and name.endswith(suffix + comp) and comp == ".zst":',
        ("tests/test_corpus_files.py::test_a_folder_is_read_as_what_it_holds",),
        "a folder of .txt.gz files is not read as text",
    ),
    M(
        "text-type-unchecked",
        "lm_lab/data/files.py",
        "        if text is not None and not isinstance(text, str):",
        "        if False:",
        ("tests/test_corpus_files.py::test_every_bad_file_gets_one_line_naming_it_and_the_fix",),
        "a number in the text field reaches the tokenizer",
    ),
    M(
        "partial-silent",
        "lm_lab/data/files.py",
        "            if len(have) < total:",
        "            if len(have) < 0:",
        ("tests/test_corpus_files.py::test_a_partial_download_is_read_with_a_line_saying_what_is_missing",),
        "a partial download is read without a word",
    ),
    M(
        "val-cap-reads-on",
        "lm_lab/data/prepare.py",
        '                if (val_only or all_val) and writers["val"].tokens >= cap',
        '                if val_only and writers["val"].tokens >= cap',
        ("tests/test_corpus_files.py::test_slimpajama_split_folders_stream_and_stop_reading_validation_at_its_cap",),
        "a validation split is tokenised to its end though its cap is reached",
    ),
    M(
        "damaged-folder-kept",
        "lm_lab/data/prepare.py",
        '    if (out / "meta.json").exists() and damage(out) is None:\n        return out',
        "    if out.exists():\n        return out",
        ("tests/test_corpus_files.py::test_a_damaged_token_folder_is_rebuilt_and_dead_temp_folders_removed",),
        "a token folder that lost meta.json or a shard is returned as it is",
    ),
    M(
        "dead-temps-kept",
        "lm_lab/data/prepare.py",
        "        dead = not _alive(pid) if owner == host",
        "        dead = False if owner == host",
        (
            "tests/test_corpus_files.py::test_a_damaged_token_folder_is_rebuilt_and_dead_temp_folders_removed",
            "tests/test_corpus_files.py::test_a_killed_prepare_leaves_no_temp_folder_behind",
        ),
        "temp folders of killed preparations pile up",
    ),
    M(
        "sigterm-skips-cleanup",
        "lm_lab/data/prepare.py",
        "    signal.signal(signal.SIGTERM, raise_exit)",
        "    pass",
        ("tests/test_corpus_files.py::test_a_killed_prepare_leaves_no_temp_folder_behind",),
        "SIGTERM kills a prepare without removing its temp folder",
    ),
    M(
        "orphan-workers",
        "lm_lab/data/prepare.py",
        "        tokenizer.threads = False\n        _die_with_parent()",
        "        tokenizer.threads = False",
        ("tests/test_corpus_files.py::test_workers_die_with_their_parent",),
        "tokenising workers outlive a killed parent",
    ),
    M(
        "bpe-key-without-train-bytes",
        "lm_lab/data/tokenizers.py",
        'return f"bpe{self.vocab_size}-{self.train_bytes}b"',
        'return f"bpe{self.vocab_size}"',
        ("tests/test_corpus_files.py::test_every_field_that_changes_what_is_read_changes_the_cache",),
        "a BPE trained on fewer bytes is reused for another train_bytes",
    ),
    M(
        "fingerprint-without-reading-fields",
        "lm_lab/data/sources.py",
        '        h.update(f"\\0{cfg.txt_split}\\0{cfg.encoding}\\0{cfg.encoding_errors}\\0{cfg.on_bad_document}".encode())',
        "        pass",
        ("tests/test_corpus_files.py::test_every_field_that_changes_what_is_read_changes_the_cache",),
        "token files made under another txt_split / encoding / policy are reused",
    ),
    M(
        "empty-validation-late",
        "lm_lab/data/prepare.py",
        "        passes.append((cfg.split, False))",
        "        passes.insert(0, (cfg.split, False))",
        ("tests/test_corpus_files.py::test_an_empty_validation_split_is_found_before_the_training_split_is_read",),
        "an empty validation split is found only after the training split was read",
    ),
]


def mutated(mutant: Mutant, root: Path) -> str:
    """The text of `mutant.file` under `root` with the mutant applied (its text must occur exactly once)."""
    text = (root / mutant.file).read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"mutant {mutant.id}: the text to replace occurs {count} times in {mutant.file}, not once")
    return text.replace(mutant.old, mutant.new)


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    for name in files.stdout.splitlines():
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run(mutant: Mutant, cache: Path) -> tuple[bool, float, str]:
    """(caught, seconds, last lines of the output) for one mutant in a fresh copy of the tree."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.id}-") as tmp:
        root = Path(tmp)
        copy_tree(root)
        (root / mutant.file).write_text(mutated(mutant, root))
        env = {**os.environ, "PYTHONPATH": str(root), "LM_LAB_CACHE": str(cache), "CUDA_VISIBLE_DEVICES": ""}
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        if proc.returncode > 1:  # 2-5: the tests did not run (collection error, no such test ...)
            raise SystemExit(f"mutant {mutant.id}: pytest could not run its tests (rc {proc.returncode}):\n{tail}")
        return proc.returncode != 0, time.monotonic() - started, tail  # 1: a test failed; < 0: a test crashed it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="mutant ids to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip running the tests on the real code first")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or ()) - {m.id for m in MUTANTS})
    if unknown:
        parser.error(f"unknown mutant ids {unknown}; --list shows them")
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.id:28} {m.what}  <- {', '.join(m.tests)}")
        return 0
    for m in chosen:  # every mutant applies, before minutes are spent on the first
        mutated(m, ROOT)
    survived = []
    with tempfile.TemporaryDirectory(prefix="mutant-cache-") as cache:
        tests = sorted({t for m in chosen for t in m.tests})
        if not args.no_baseline:  # a mutant is only caught by tests that pass on the real code
            env = {**os.environ, "LM_LAB_CACHE": cache, "CUDA_VISIBLE_DEVICES": ""}
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT, env=env
            )
            if proc.returncode:
                raise SystemExit("the mutants' tests fail on the real code: fix them first")
        for m in chosen:
            caught, seconds, tail = run(m, Path(cache))
            print(f"{'CAUGHT  ' if caught else 'SURVIVED'} {m.id:28} {seconds:6.1f} s  {m.what}", flush=True)
            if not caught:
                survived.append(m.id)
                print("    " + tail.replace("\n", "\n    "), flush=True)
    print(
        f"{len(chosen) - len(survived)} of {len(chosen)} mutants caught"
        + (f"; survived: {survived}" if survived else "")
    )
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
