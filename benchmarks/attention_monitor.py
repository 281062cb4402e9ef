"""What the attention-degeneration monitor costs: training steps without and with `AttentionMonitor`, alternating.

One process alternates rounds of `--steps` training steps (the lab's `fit` on the embedded corpus in bytes, as
throughput.py runs it: TensorBoard logger, none of the lab's callbacks) without the monitor and with it measuring every
`--every` steps (often, so that its cost is measured many times). Each
step is timed from one step's end to the next (the timer runs before the monitor, so a measurement after step s
and the gradient norms of update s + 1 both fall in the interval ending at step s + 1). From the medians:

    cost of one measurement = median(intervals with a measurement) - median(steps without the monitor)
    overhead at interval N  = cost / (N x median step)

and the measurement's parts (the k*/m* analysis, the two heatmap images) timed alone.

    python benchmarks/attention_monitor.py                        # gpt2_tiny on CPU, batch 16 x 256
    python benchmarks/attention_monitor.py --model gpt2_small --batch 16 --seq-len 1024   # on a GPU: bf16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from throughput import default_vocab, lightning_loop, run_config, sync  # the Trainer loop both benchmarks time

from callbacks import AttentionMonitor
from lm_lab.analysis import analyze, heatmap_image
from lm_lab.models import GPT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2_tiny")
    parser.add_argument("--vocab-size", type=int, default=None, help="default: 4096 for *_tiny, else 50257")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=None, help="default: the model's block_size")
    parser.add_argument("--steps", type=int, default=61, help="training steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="steps of each round left out")
    parser.add_argument("--rounds", type=int, default=3, help="alternate without/with the monitor this many times")
    parser.add_argument("--every", type=int, default=10, help="the monitor's interval in the timed rounds")
    parser.add_argument("--monitor-batch", type=int, default=AttentionMonitor().config.batch_size)
    parser.add_argument("--intervals", type=int, nargs="+", default=[50, 100, 200, 500])
    args = parser.parse_args()

    vocab = args.vocab_size or default_vocab(args.model)
    run = run_config(args.model, steps=args.steps, batch=args.batch, seq_len=args.seq_len, vocab_size=vocab)
    derived = run.derive()
    cfg, seq_len = derived.model, derived.train.seq_len
    device = torch.device("cuda" if derived.trainer.uses_cuda else "cpu")
    bf16 = derived.trainer.resolved_precision() == "bf16-mixed"
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, vocab, (args.monitor_batch, seq_len + 1), generator=g)

    plain, fired, quiet = [], [], []
    for _ in range(args.rounds):  # alternate, so drift on a noisy machine hits both alike
        times = lightning_loop(run, callbacks=[])
        plain += [t for s, t in times.items() if s > args.warmup]
        monitor = AttentionMonitor(every_n_steps=args.every, batch_size=args.monitor_batch, windows=windows)
        times = lightning_loop(run, callbacks=[monitor])
        for s, t in times.items():
            if s > args.warmup:
                (fired if (s - 1) % args.every == 0 else quiet).append(t)
    step, with_measure, between = statistics.median(plain), statistics.median(fired), statistics.median(quiet)
    cost = with_measure - step

    # the parts of one measurement, timed alone on a fresh model
    model = GPT(cfg).to(device)
    x = windows[:, :-1].to(device)
    analysis, images = [], []
    for _ in range(5):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            sync(device)
            t0 = time.perf_counter()
            result = analyze(model, x)
            sync(device)
        t1 = time.perf_counter()
        heatmap_image(result["k_star"], "k*"), heatmap_image(result["m_star"], "m*")
        analysis.append(t1 - t0)
        images.append(time.perf_counter() - t1)

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {name} | {args.model} | train batch {args.batch} x {seq_len} | {'bf16-mixed' if bf16 else 'fp32'}")
    print(
        f"monitor: {args.monitor_batch} windows x {seq_len} tokens, {cfg.n_layer} layers x {cfg.n_head} heads "
        f"= {args.monitor_batch * cfg.n_layer * cfg.n_head} SVDs of {seq_len}x{seq_len} (float64)"
    )
    print(f"step without the monitor          : {step * 1e3:9.1f} ms  (median of {len(plain)})")
    print(f"step with it, between measurements: {between * 1e3:9.1f} ms  (median of {len(quiet)})")
    print(f"step with a measurement           : {with_measure * 1e3:9.1f} ms  (median of {len(fired)})")
    print(f"cost of one measurement           : {cost * 1e3:9.1f} ms  = {cost / step:.2f} steps")
    print(
        f"  of which analyze (forward + SVDs): {statistics.median(analysis) * 1e3:.1f} ms, "
        f"two heatmap images: {statistics.median(images) * 1e3:.1f} ms (medians of 5, alone)"
    )
    for n in args.intervals:
        print(f"overhead every {n:4d} steps          : {100 * cost / (n * step):6.2f}% of training time")


if __name__ == "__main__":
    main()
