"""What the lab's Lightning training step costs against a bare PyTorch loop of the same model, in one process.

The Lightning side is the lab's real `lm_lab.train.fit`: its Trainer, data module and `LMModule`, the default
training callbacks (`default_callbacks` minus the progress bar: TokenThroughput, LossSpikes, ModelCheckpoint on
`val/loss`, LastCheckpoint with its step and minute cadence switched off, so no save falls between the timed
steps) and the TensorBoard logger, `train.log_every` at its default. Validation runs once, after the last step
(`train.val_every=max_steps`, `trainer.num_sanity_val_steps=0`); it and the checkpoints it writes are untimed.

The bare side is the same model (the same seeded init, checked equal to Lightning's), the same batches (a second,
identical data module over the same tokens, its loader iterated by hand), the lab's `build_optimizer` with the
same `OptimizerConfig` (fused on CUDA), clipping at `optimizer.grad_clip`, the same LR schedule, precision (bf16
autocast on a GPU with bf16, fp32 on CPU) and compile setting (`model.compile()`):

    batch -> device; forward + loss under autocast; backward; clip; optimizer.step; zero_grad; scheduler.step

The two alternate step by step: the first callback, `Alternate`, runs one bare step at the end of each Lightning
step. It synchronises CUDA, books the Lightning interval (now - the end of the previous bare step: everything
the Trainer does per step, hooks, logging, the lab's callbacks, its data fetch, exactly once), then runs and
times the bare step on its own. After `--warmup` steps, `--steps` pairs are measured; the ratio is the median
of the per-pair ratios bare_time_i / lightning_time_i (= Lightning tokens/s / bare tokens/s) with a 95% bootstrap
interval. Peak memory: on CUDA the allocator's peak over each side's step (peak stats reset before it; both
models are resident, so what differs is each side's step); on CPU the peak RSS (VmHWM) of a child process that
runs only that side (`--memory-only`). Losses of the two sides are compared step by step.

    python benchmarks/throughput.py --threads 1    # CPU: gpt2_tiny, llama_tiny; batch 16 x 256, fp32, 150 pairs
    python benchmarks/throughput.py                # GPU: gpt2_small, gpt2_medium; batch 16 x 1024, bf16, compile
    python benchmarks/throughput.py --models gpt2_tiny --batch 2 --seq-len 32 --override model.n_layer=1 \
        --threads 1 --no-child-memory --profile 30     # Lightning's fixed cost per step, and cProfile's view of it

On a shared CPU use `--threads 1`: two OpenMP threads on two busy cores stall at every parallel region (on the
2-core CI machine beside a test suite: 1.2-3.4 s a step instead of 0.34 s, per-pair ratios from 0.55 to 1.29;
one thread: 0.75 s, 0.90 to 1.06). On a GPU, `--child-memory` adds each side's peak measured alone.

Targets: on CPU, gpt2_tiny's Lightning side at >= 0.97 of the bare loop's tokens/s; on an H100/H200 with
gpt2_small and gpt2_medium (bf16, --compile, batch 16 x 1024), >= 0.98 of the bare loop and MFU >= 45%.
Every step ends in a CUDA synchronisation on both sides (it is how a step is timed), so neither overlaps the
next step's launches with the previous step's kernels; the lab's step also synchronises once inside (its
non-finite gradient-norm check, before the optimizer step), which the bare loop does not.
`--override key=value` passes any lab setting through (e.g. `--override optimizer.lr=3e-4`); `--drop NAME`
leaves out one of the lab's callbacks (throughput, loss_spikes, checkpoint, last_checkpoint) or the logger.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import inspect
import json
import math
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from scipy.stats import bootstrap
from torch.optim.lr_scheduler import LambdaLR

from callbacks import LastCheckpoint, LossSpikes, TokenThroughput
from lm_lab.config import RunConfig, compose
from lm_lab.devices import peak_flops
from lm_lab.models import GPT, flops_per_token, next_token_loss, param_count
from lm_lab.optim import build_optimizer, lr_multiplier
from lm_lab.train import data_module, default_callbacks, default_loggers, fit

CALLBACKS = {
    "throughput": TokenThroughput,
    "loss_spikes": LossSpikes,
    "checkpoint": ModelCheckpoint,
    "last_checkpoint": LastCheckpoint,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_vocab(model: str) -> int:
    """The vocabulary a benchmark gives a model (no tokenizer download): 4096 for the tiny presets, else GPT-2's."""
    return 4096 if model.endswith("_tiny") else 50257


def run_config(
    model: str,
    *,
    steps: int,
    batch: int = 16,
    seq_len: int | None = None,
    vocab_size: int | None = None,
    compile: bool = False,
    overrides: list[str] = (),
) -> RunConfig:
    """A `steps`-step run of `conf/model/<model>` on the embedded corpus in bytes (no download): validation only
    after the last step, no sanity check, no progress bar or model summary; `overrides` go last."""
    values = [
        f"model={model}",
        f"model.vocab_size={vocab_size or default_vocab(model)}",
        "tokenizer=bytes",
        "data=embedded",
        f"train.batch_size={batch}",
        f"train.max_steps={steps}",
        f"train.val_every={steps}",
        f"train.compile={str(compile).lower()}",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    if seq_len:
        values.append(f"train.seq_len={seq_len}")
    cfg = compose([*values, *overrides])
    window = cfg.train.seq_len or cfg.model.block_size
    if not any(o.startswith("train.val_tokens=") for o in overrides):  # the untimed final validation: 2 batches
        cfg.train.val_tokens = 2 * batch * window
    if cfg.scheduler.warmup_steps > steps:  # a short run keeps the schedule's shape
        cfg.scheduler.warmup_steps = steps // 10
    return RunConfig.from_dict(cfg)


def lab_callbacks(run_dir: str | Path, drop: tuple[str, ...] = ()) -> list[L.Callback]:
    """The lab's default training callbacks without the progress bar (and those named in `drop`); LastCheckpoint
    saves only after the final validation (its every-N-steps and every-M-minutes saves are off)."""
    kept = []
    for cb in default_callbacks(run_dir):
        if isinstance(cb, ProgressBar) or any(isinstance(cb, CALLBACKS[name]) for name in drop):
            continue
        if isinstance(cb, LastCheckpoint):
            cb.every_n_steps = cb.every_minutes = None
        kept.append(cb)
    return kept


class StepTimer(L.Callback):
    """Time from one step's end to the next (everything the Trainer does per step is inside), keyed by the
    global step the interval ends at. Put it first among the callbacks."""

    def __init__(self):
        self.times: dict[int, float] = {}
        self._last: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(pl_module.device)
        now = time.perf_counter()
        if self._last is not None:
            self.times[trainer.global_step] = now - self._last
        self._last = now


def lightning_loop(run: RunConfig, callbacks: list[L.Callback]) -> dict[int, float]:
    """The lab's `fit` of `run` in a temporary directory, with a `StepTimer` before `callbacks` and the TensorBoard
    logger: step times by global step."""
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        fit(run, tmp, resume=None, callbacks=[timer, *callbacks], loggers=default_loggers(tmp))
    return timer.times


class BareStep:
    """One training step of `run`'s model in plain PyTorch, as the lab's LMModule trains it."""

    def __init__(self, run: RunConfig, device: torch.device, precision: str):
        if precision not in ("32-true", "bf16-mixed"):
            raise SystemExit(f"the bare loop runs 32-true or bf16-mixed, not {precision!r}")
        # the init fit() makes: seeded with train.seed, built on the device (Lightning builds the module's model
        # there, drawing from that device's generator); the process's random state is left as it was
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
            torch.manual_seed(run.train.seed)
            self.model = GPT(run.model)
        self.model.train()
        if run.train.compile:
            self.model.compile()
        self.device, self.bf16 = device, precision == "bf16-mixed"
        self.opt = build_optimizer(self.model, run.optimizer, fused=device.type == "cuda")
        self.sched = LambdaLR(self.opt, lr_multiplier(run.scheduler, run.train.max_steps))
        self.clip = run.optimizer.grad_clip or math.inf

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        with torch.enable_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = next_token_loss(self.model, batch).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        return loss.detach()


def bare_batches(run: RunConfig, trainer: L.Trainer | None = None):
    """The training batches of `run` from a data module of its own: the loader fit's data module makes (with
    `trainer`: the same pinned memory and start), iterated by hand."""
    data = data_module(run)
    data.trainer = trainer
    data.prepare_data()
    data.setup("fit")
    return iter(data.train_dataloader())


class Alternate(L.Callback):
    """After each Lightning step, one bare step on the next batch of an identical iterator; both timed. It must be
    the first callback, so the Lightning interval holds every other hook once."""

    def __init__(self, run: RunConfig, warmup: int, profile: bool = False):
        self.run, self.warmup = run, warmup
        self.lightning: list[float] = []
        self.bare: list[float] = []
        self.losses: list[tuple[float, float]] = []
        self.memory = {"lightning": 0, "bare": 0, "resident_lightning": 0, "resident_bare": 0}
        self.same_batches = True
        self.same_init: bool | None = None
        self.profiles = (cProfile.Profile(), cProfile.Profile()) if profile else None

    def on_train_start(self, trainer, pl_module):
        if trainer.callbacks[0] is not self:
            raise RuntimeError(f"Alternate must be the first callback, not {type(trainer.callbacks[0]).__name__}")
        if trainer.accumulate_grad_batches != 1:
            raise SystemExit("the bare loop has no gradient accumulation: keep train.micro_batch_size = batch_size")
        self.device, self.precision = pl_module.device, trainer.precision
        self.step = BareStep(self.run, self.device, self.precision)
        lab = pl_module.model.state_dict()
        self.same_init = all(torch.equal(v, lab[k]) for k, v in self.step.model.state_dict().items())
        if not self.same_init:  # should not happen: say so, and start from the same weights anyway
            self.step.model.load_state_dict(lab)
        self.batches = bare_batches(self.run, trainer)
        self._start_lightning()

    def _start_lightning(self) -> None:
        if self.device.type == "cuda":
            self._resident = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.profiles and self._measured():
            self.profiles[0].enable()
        sync(self.device)
        self._end = time.perf_counter()

    def _measured(self) -> bool:
        return len(self.lightning) + 1 > self.warmup  # the pair about to run counts

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(self.device)
        lightning = time.perf_counter() - self._end
        if self.profiles:
            self.profiles[0].disable()
        measured = self._measured()
        self._book("lightning", measured)

        if self.profiles and measured:
            self.profiles[1].enable()
        t0 = time.perf_counter()
        bare_batch = next(self.batches)
        loss = self.step(bare_batch)
        sync(self.device)
        bare = time.perf_counter() - t0
        if self.profiles:
            self.profiles[1].disable()
        self._book("bare", measured)

        self.lightning.append(lightning)
        self.bare.append(bare)
        self.losses.append((outputs["loss"].item(), loss.item()))
        self.same_batches &= torch.equal(batch.cpu(), bare_batch)
        if trainer.global_step < trainer.max_steps:  # (after the last step: validation, untimed)
            self._start_lightning()

    def _book(self, side: str, measured: bool) -> None:
        """Peak memory of the step `side` just ran (over the measured steps), and what was resident before it."""
        if self.device.type != "cuda":
            return
        if measured:
            self.memory[side] = max(self.memory[side], torch.cuda.max_memory_allocated(self.device))
            self.memory[f"resident_{side}"] = self._resident
        self._resident = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)


def measure(args, model: str) -> dict:
    """One model's alternating run: times, losses, memory (CUDA) and the run's description."""
    run = run_config(
        model,
        steps=args.warmup + args.steps,
        batch=args.batch,
        seq_len=args.seq_len,
        vocab_size=args.vocab_size,
        compile=args.compile,
        overrides=args.override,
    )
    alternate = Alternate(run.derive(), args.warmup, profile=bool(args.profile))
    with tempfile.TemporaryDirectory() as tmp:
        loggers = [] if "logger" in args.drop else default_loggers(tmp)
        results = fit(run, tmp, resume=None, callbacks=[alternate, *lab_callbacks(tmp, args.drop)], loggers=loggers)
    out = {
        "run": run.derive(),
        "device": alternate.device,
        "precision": alternate.precision,
        "alternate": alternate,
        "stop_reason": results.stop_reason,
    }
    del results, alternate.step, alternate.batches
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def memory_only(args, model: str, side: str) -> dict:
    """A child process's run of one side alone for --memory-steps steps: its peak RSS (VmHWM), the RSS when training
    starts, and on CUDA the allocator's peak."""
    steps = args.memory_steps
    run = run_config(
        model,
        steps=steps,
        batch=args.batch,
        seq_len=args.seq_len,
        vocab_size=args.vocab_size,
        compile=args.compile,
        overrides=args.override,
    )
    seen = {}

    class Probe(L.Callback):  # the RSS when training starts, the peak at the end of each step (not validation's)
        def on_train_start(self, trainer, pl_module):
            seen["start_rss"] = _proc_status("VmRSS")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["peak_rss"] = _proc_status("VmHWM")
            if torch.cuda.is_available():
                seen["cuda_peak"] = torch.cuda.max_memory_allocated()

    if side == "lightning":
        with tempfile.TemporaryDirectory() as tmp:
            loggers = [] if "logger" in args.drop else default_loggers(tmp)
            callbacks = [*lab_callbacks(tmp, args.drop), Probe()]
            fit(run, tmp, resume=None, callbacks=callbacks, loggers=loggers)
    else:
        run = run.derive()
        L.seed_everything(run.train.seed, workers=True, verbose=False)
        if run.trainer.uses_cuda:
            torch.set_float32_matmul_precision("high")
        device = torch.device("cuda" if run.trainer.uses_cuda else "cpu")
        batches = bare_batches(run)
        step = BareStep(run, device, run.trainer.resolved_precision())
        seen["start_rss"] = _proc_status("VmRSS")
        for _ in range(steps):
            step(next(batches))
        sync(device)
        seen["peak_rss"] = _proc_status("VmHWM")
        if device.type == "cuda":
            seen["cuda_peak"] = torch.cuda.max_memory_allocated()
    return seen


def _proc_status(key: str) -> int:
    """A field of /proc/self/status in bytes (VmHWM: the peak resident set size, VmRSS: the current one)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def child_memory(args, model: str, side: str) -> dict:
    """Run `--memory-only SIDE` for `model` in a fresh process, return what it measured."""
    cmd = [sys.executable, __file__, "--memory-only", side, "--models", model, "--batch", str(args.batch)]
    cmd += ["--memory-steps", str(args.memory_steps), "--compile" if args.compile else "--no-compile"]
    cmd += [f"--seq-len={args.seq_len}"] if args.seq_len else []
    cmd += [f"--threads={args.threads}"] if args.threads else []
    cmd += [f"--vocab-size={args.vocab_size}"] if args.vocab_size else []
    cmd += [f"--override={o}" for o in args.override] + [f"--drop={d}" for d in args.drop]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("MEMORY ")]
    if done.returncode or not lines:
        raise RuntimeError(f"memory child {side} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("MEMORY ") :])


def median_ratio(ratios: np.ndarray) -> tuple[float, float, float]:
    """(median, 95% bootstrap interval) of per-pair ratios."""
    seed = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"  # scipy >= 1.15: rng
    ci = bootstrap((ratios,), np.median, confidence_level=0.95, **{seed: np.random.default_rng(0)}).confidence_interval
    return float(np.median(ratios)), float(ci.low), float(ci.high)


def print_profile(side: str, prof: cProfile.Profile, n: int, seconds: float, top: int) -> None:
    """The `top` functions by cumulative time per step, leaving out those that hold more than a fifth of the
    interval (the loop's wrappers around forward, backward and the optimizer step), so what a Lightning step
    adds stands out. cProfile's own cost inflates Python-heavy functions: compare the two sides, not the clock."""
    rows = [
        (
            f.cumtime / n,
            f.tottime / n,
            int(str(f.ncalls).split("/")[0]),
            name,
            f"{Path(f.file_name).name}:{f.line_number}",
        )
        for name, f in pstats.Stats(prof).get_stats_profile().func_profiles.items()
        if f.cumtime < 0.2 * seconds
    ]
    print(
        f"-- cProfile of the {side} ({1e3 * seconds / n:.2f} ms a step, profiler on): per step, by cumulative time --"
    )
    print(f"{'cum ms':>8} {'own ms':>8} {'calls':>6}  function")
    for cum, own, calls, name, where in sorted(rows, reverse=True)[:top]:
        print(f"{1e3 * cum:8.3f} {1e3 * own:8.3f} {calls / n:6.1f}  {name} ({where})")


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def report(args, model: str, m: dict, memory: dict | None) -> str:
    """Print one model's figures; return its summary line."""
    run, device, a = m["run"], m["device"], m["alternate"]
    w = args.warmup
    lit, bare = np.array(a.lightning[w:]), np.array(a.bare[w:])
    n = len(lit)
    if n < 2:
        raise SystemExit(f"{model}: only {n} measured pairs (stopped: {m['stop_reason']})")
    tokens, batch, seq_len = run.tokens_per_step, run.train.batch_size, run.train.seq_len
    fpt = flops_per_token(run.model, seq_len)
    peak = peak_flops(device, m["precision"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\n== {model} | {name} | torch {torch.__version__}, lightning {L.__version__}")
    print(
        f"{param_count(run.model):,} params, vocab {run.model.vocab_size} | batch {batch} x {seq_len} = {tokens:,} "
        f"tokens/step | {m['precision']} | compile {'on' if run.train.compile else 'off'} | {fpt:.3g} FLOPs/token"
    )
    print(f"{n} measured pairs after {w} warm-up, alternating Lightning step k, bare step k, Lightning step k+1, ...")
    print(f"{'':10} {'ms/step':>9} {'tokens/s':>12} {'samples/s':>10} {'MFU':>7}")
    rows = {}
    for side, times in (("lightning", lit), ("bare", bare)):
        t = float(np.median(times))
        mfu = fpt * tokens / t / peak if peak else None
        rows[side] = (t, tokens / t, mfu)
        mfu_s = f"{100 * mfu:6.1f}%" if mfu is not None else "    n/a"
        print(f"{side:10} {1e3 * t:9.2f} {tokens / t:12,.0f} {batch / t:10,.1f} {mfu_s}")
    ratio, low, high = median_ratio(bare / lit)
    print(
        f"Lightning / bare tokens/s: {ratio:.4f}, 95% CI [{low:.4f}, {high:.4f}] (median of {n} per-pair ratios "
        f"bare_i / lightning_i, scipy bootstrap; Lightning's extra time per step {1e3 * np.median(lit - bare):+.2f} ms)"
    )
    losses = np.array(a.losses)
    diff = np.abs(losses[:, 0] - losses[:, 1])
    rel = float((diff / np.abs(losses[:, 1])).max())
    tol = 1e-2 if "16" in m["precision"] else 1e-4
    agree = "agree" if rel <= tol and a.same_batches else "DISAGREE"
    print(
        f"losses {agree}: max |lightning - bare| {diff.max():.3g} (relative {rel:.2g}, tolerance {tol:g}) over "
        f"{len(diff)} steps; step 1 {losses[0, 0]:.5f} / {losses[0, 1]:.5f}, step {len(diff)} {losses[-1, 0]:.5f} / "
        f"{losses[-1, 1]:.5f}; same batches {a.same_batches}; "
        + (
            "same init (built alike from the seed)"
            if a.same_init
            else "INIT DIFFERED: the bare model got Lightning's weights"
        )
    )
    peaks = None  # the summary's: CUDA's in-process peaks on a GPU, else the children's peak RSS
    if device.type == "cuda":
        mem = peaks = {s: a.memory[s] for s in ("lightning", "bare")}
        print(
            f"peak CUDA memory over each side's step (torch.cuda.max_memory_allocated, peak reset before it; both "
            f"models, optimizers and Lightning's gradients, kept until its next zero_grad, are resident): "
            f"lightning {mib(mem['lightning'])} (from {mib(a.memory['resident_lightning'])} resident at its start), "
            f"bare {mib(mem['bare'])} (from {mib(a.memory['resident_bare'])})"
        )
    if memory:
        mem = {s: memory[s]["peak_rss"] for s in ("lightning", "bare")}
        peaks = peaks or mem
        print(
            f"peak RSS (VmHWM of a child process that runs only that side, {args.memory_steps} steps, the same "
            f"imports and data): lightning {mib(mem['lightning'])} (RSS {mib(memory['lightning']['start_rss'])} when "
            f"training starts), bare {mib(mem['bare'])} ({mib(memory['bare']['start_rss'])})"
        )
        if "cuda_peak" in memory["bare"]:
            print(
                f"  CUDA peak allocated alone: lightning {mib(memory['lightning']['cuda_peak'])}, "
                f"bare {mib(memory['bare']['cuda_peak'])}"
            )
    if a.profiles:
        for side, prof, times in zip(("Lightning interval", "bare step"), a.profiles, (lit, bare), strict=True):
            print_profile(side, prof, n, float(np.sum(times)), args.profile)

    if device.type == "cuda":
        target, met = ">= 0.98 and MFU >= 45% (H100/H200)", ratio >= 0.98 and (rows["lightning"][2] or 0) >= 0.45
    else:
        target, met = ">= 0.97 (CPU)", ratio >= 0.97
    mfu = rows["lightning"][2]
    return (
        f"summary {model}: Lightning/bare {ratio:.3f} [{low:.3f}, {high:.3f}] | {rows['lightning'][1]:,.0f} vs "
        f"{rows['bare'][1]:,.0f} tokens/s | "
        + (f"MFU {100 * mfu:.1f}% vs {100 * rows['bare'][2]:.1f}% | " if mfu is not None else "")
        + (f"peak {mib(peaks['lightning'])} vs {mib(peaks['bare'])} | " if peaks else "")
        + f"losses {agree} (max rel {rel:.1g}) | target {target}: {'met' if met else 'MISSED'}"
    )


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        default="gpt2_small,gpt2_medium" if cuda else "gpt2_tiny,llama_tiny",
        help="conf/model names, comma-separated, run in turn (default: gpt2_small,gpt2_medium on a GPU, else tiny)",
    )
    parser.add_argument("--batch", type=int, default=16, help="global batch in sequences (no accumulation)")
    parser.add_argument("--seq-len", type=int, default=None, help="default: the model's block_size")
    parser.add_argument("--vocab-size", type=int, default=None, help="default: 4096 for *_tiny, else 50257")
    parser.add_argument("--steps", type=int, default=150, help="measured pairs")
    parser.add_argument("--warmup", type=int, default=10, help="pairs left out at the start")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=cuda, help="default: on a GPU only")
    parser.add_argument("--override", action="append", default=[], help="a lab setting, key=value (repeatable)")
    parser.add_argument("--drop", action="append", default=[], choices=[*CALLBACKS, "logger"], help="(repeatable)")
    parser.add_argument(
        "--child-memory",
        action=argparse.BooleanOptionalAction,
        default=not cuda,
        help="also measure each side's peak RSS alone in a child process (default: on CPU)",
    )
    parser.add_argument("--memory-steps", type=int, default=15, help="steps of each memory child")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--memory-only", choices=["lightning", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's top N of each side")
    parser.add_argument("--save", type=Path, default=None, help="write every pair's times and losses to this JSON file")
    args = parser.parse_args()
    args.drop = tuple(args.drop)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models.split(",")

    if args.memory_only:  # the child process of --child-memory
        print("MEMORY " + json.dumps(memory_only(args, models[0], args.memory_only)), flush=True)
        return
    summaries, saved = [], {}
    for model in models:
        m = measure(args, model)
        memory = {s: child_memory(args, model, s) for s in ("lightning", "bare")} if args.child_memory else None
        summaries.append(report(args, model, m, memory))
        a = m["alternate"]
        saved[model] = {"warmup": args.warmup, "lightning": a.lightning, "bare": a.bare, "losses": a.losses}
        saved[model]["memory"] = memory or {k: v for k, v in a.memory.items()}
    if args.save:
        args.save.write_text(json.dumps(saved))
    print()
    print("\n".join(summaries))


if __name__ == "__main__":
    main()
