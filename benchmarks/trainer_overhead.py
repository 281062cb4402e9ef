"""What the Lightning shell costs per step: a bare PyTorch loop vs `LMModule` in a `Trainer`, side by side.

Both train the same model on the same batches with the same optimizer, clipping and schedule; the
Trainer run also has the lab's default callbacks (throughput, checkpoint on validation is off) and a
TensorBoard logger, as a real run does. Prints the median step time of each and their ratio.

    python benchmarks/trainer_overhead.py                          # gpt2_tiny on CPU
    python benchmarks/trainer_overhead.py --model gpt2_small --batch 16 --seq-len 1024   # on a GPU: bf16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import LambdaLR

from callbacks import TokenThroughput
from lm_lab.config import compose
from lm_lab.models import GPT, ModelConfig, flops_per_token, next_token_loss
from lm_lab.module import LMModule
from lm_lab.optim import OptimizerConfig, SchedulerConfig, build_optimizer, lr_multiplier


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(cfg: ModelConfig, batches: list[torch.Tensor], device: torch.device, bf16: bool) -> list[float]:
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    opt = build_optimizer(model, OptimizerConfig(), fused=device.type == "cuda")
    sched = LambdaLR(opt, lr_multiplier(SchedulerConfig(warmup_steps=0), len(batches)))
    times, last = [], None
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = next_token_loss(model, batch).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        sync(device)
        now = time.perf_counter()
        if last is not None:
            times.append(now - last)
        last = now
    return times


class StepTimer(L.Callback):
    """Time from one step's end to the next (everything the Trainer does per step is inside), keyed by the
    global step the interval ends at."""

    def __init__(self):
        self.times: dict[int, float] = {}
        self._last: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(pl_module.device)
        now = time.perf_counter()
        if self._last is not None:
            self.times[trainer.global_step] = now - self._last
        self._last = now


def lightning_loop(
    cfg: ModelConfig, batches: list[torch.Tensor], device: torch.device, bf16: bool, callbacks: list | None = None
) -> dict[int, float]:
    """`LMModule` in a `Trainer` (TensorBoard logger, no validation) over `batches`: step times by global step.
    `callbacks` default to the lab's throughput callback."""
    torch.manual_seed(0)
    module = LMModule(cfg, OptimizerConfig(), SchedulerConfig(warmup_steps=0), max_steps=len(batches))
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator=device.type,
            devices=1,
            precision="bf16-mixed" if bf16 else "32-true",
            max_steps=len(batches),
            callbacks=[timer, *(callbacks if callbacks is not None else [TokenThroughput()])],
            logger=L.pytorch.loggers.TensorBoardLogger(tmp, name="", version=""),
            log_every_n_steps=10,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,  # no validation in these comparisons
        )
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return timer.times


def setup(model: str, vocab_size: int | None, seq_len: int | None) -> tuple[ModelConfig, int, torch.device, bool]:
    """(model config, sequence length, device, bf16) of a benchmark: the preset from conf/model, vocabulary 4096
    for gpt2_tiny else 50257, the model's block size, CUDA with bf16 when there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    vocab = vocab_size or (4096 if model == "gpt2_tiny" else 50257)
    values = OmegaConf.to_container(compose([f"model={model}"]).model, resolve=True)
    cfg = ModelConfig(**{**values, "vocab_size": vocab})
    return cfg, seq_len or cfg.block_size, device, bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2_tiny")
    parser.add_argument("--vocab-size", type=int, default=None, help="default: 4096 for gpt2_tiny, else 50257")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=None, help="default: the model's block_size")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    parser.add_argument("--rounds", type=int, default=3, help="alternate bare/Lightning this many times (median)")
    args = parser.parse_args()

    cfg, seq_len, device, bf16 = setup(args.model, args.vocab_size, args.seq_len)
    vocab = cfg.vocab_size
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (args.batch, seq_len + 1), generator=g) for _ in range(args.steps)]

    medians = {"bare": [], "lightning": []}
    for _ in range(args.rounds):  # alternate, so drift on a noisy machine hits both alike
        medians["bare"].append(statistics.median(bare_loop(cfg, batches, device, bf16)[args.warmup :]))
        times = lightning_loop(cfg, batches, device, bf16)
        medians["lightning"].append(statistics.median(list(times.values())[args.warmup :]))
    bare, lit = statistics.median(medians["bare"]), statistics.median(medians["lightning"])
    tokens = args.batch * seq_len
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"device {name} | {args.model} vocab {vocab} | batch {args.batch} x {seq_len} | {'bf16-mixed' if bf16 else 'fp32'}"
    )
    print(f"flops/token {flops_per_token(cfg, seq_len):.3g}")
    print(
        f"bare loop  : {bare * 1e3:8.2f} ms/step  {tokens / bare:12,.0f} tokens/s   (medians per round: {[round(m * 1e3, 2) for m in medians['bare']]})"
    )
    print(
        f"lightning  : {lit * 1e3:8.2f} ms/step  {tokens / lit:12,.0f} tokens/s   (medians per round: {[round(m * 1e3, 2) for m in medians['lightning']]})"
    )
    print(f"overhead   : {100 * (lit / bare - 1):+.1f}% per step (lightning / bare = {lit / bare:.3f})")


if __name__ == "__main__":
    main()
