"""Data pipeline speed, measured side by side in one process.

1. Preparing: `prepare` (read the corpus through `datasets`, tokenise in worker processes, hash, write shards)
   against a bare single-core loop of the same tokenizer over the same documents. The ratio per core is the
   pipeline's overhead (aim: >= 0.8).
2. Training reads: the training DataLoader's tokens/s against what `gpt2_small` consumes per second on a GPU
   (its FLOPs per token at a given MFU of the device's peak), so the loader is never the bottleneck.

    python benchmarks/data.py [--tokenizer bpe|bytes] [--procs N] [--repeat 2]

The corpus is the embedded one (the standard library, ~10 MB) written as JSONL, read as `data=local`.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from lm_lab.data.config import DataConfig
from lm_lab.data.embedded import embedded_documents
from lm_lab.data.prepare import get_tokenizer, prepare
from lm_lab.data.shards import TokenShards, read_meta
from lm_lab.data.tokenizers import TokenizerConfig
from lm_lab.data.windows import TrainWindows
from lm_lab.models import ModelConfig, flops_per_token


def _cpu() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its finished child processes."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


BARE = """
import pickle, sys, time
from lm_lab.data.tokenizers import tokenizer_from_spec
spec, texts = pickle.load(open(sys.argv[1], "rb"))
tok = tokenizer_from_spec(spec)
t0 = time.perf_counter()
n = sum(len(tok.encode(t)) + 1 for t in texts)
print(n, t0, time.perf_counter())
"""


def bare_parallel(spec: tuple, texts: list[str], procs: int, tmp: Path) -> float:
    """The bare loop in `procs` separate processes at once, each over its share of the documents."""
    files = []
    for k in range(procs):
        files.append(tmp / f"share{k}.pkl")
        with open(files[-1], "wb") as f:
            pickle.dump((spec, texts[k::procs]), f)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    runs = [
        subprocess.Popen([sys.executable, "-c", BARE, str(f)], stdout=subprocess.PIPE, text=True, env=env)
        for f in files
    ]
    out = [tuple(float(x) for x in p.communicate()[0].split()) for p in runs]
    return sum(o[0] for o in out) / (max(o[2] for o in out) - min(o[1] for o in out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="bpe", choices=["bpe", "bytes"])
    parser.add_argument("--procs", type=int, default=os.cpu_count())
    parser.add_argument(
        "--repeat", type=int, default=10, help="copies of the corpus (~10 MB each): fixed start-up costs fade"
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device bf16 peak (H100 SXM dense: 989)")
    parser.add_argument("--mfu", type=float, default=0.45, help="assumed GPU MFU of gpt2_small training")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    texts = [d.text for d in embedded_documents()] * args.repeat
    texts = [f"{t}\n# copy {i // (len(texts) // args.repeat)}\n" for i, t in enumerate(texts)]  # distinct documents
    (tmp / "corpus").mkdir()
    with open(tmp / "corpus" / "docs.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    mb = sum(len(t.encode()) for t in texts) / 1e6
    tok_cfg = TokenizerConfig(name=args.tokenizer, vocab_size=4096 if args.tokenizer == "bpe" else 257)

    def config(procs: int, cache: str) -> DataConfig:
        return DataConfig(
            name="bench",
            source="local",
            path=str(tmp / "corpus"),
            val_fraction=0.01,
            cache_dir=str(tmp / cache),
            num_proc=procs,
        )

    tokenizer = get_tokenizer(config(1, "tok"), tok_cfg)  # trains the BPE once, outside the timings
    print(f"corpus: {len(texts)} documents, {mb:.1f} MB | tokenizer {tokenizer.name} | {args.procs} processes")

    t0 = time.perf_counter()
    n_bare = sum(len(tokenizer.encode(t)) + 1 for t in texts)
    bare = n_bare / (time.perf_counter() - t0)
    print(f"bare loop (1 core)        : {bare:12,.0f} tokens/s")
    ceiling = bare_parallel(tokenizer.spec, texts, args.procs, tmp)
    print(
        f"bare loop x {args.procs} processes   : {ceiling:12,.0f} tokens/s  = {ceiling / args.procs / bare:.2f} x bare per core"
        " (what this machine's cores give together)"
    )

    results = {}
    for procs in sorted({1, args.procs}):
        cache = f"cache{procs}"
        cfg = config(procs, cache)
        if tok_cfg.name == "bpe":  # reuse the trained tokenizer so only tokenisation is timed
            trained = next((tmp / "tok").rglob("*.tokenizer.json"))
            target = tmp / cache / trained.relative_to(tmp / "tok")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(trained.read_bytes())
        t0, cpu0 = time.perf_counter(), _cpu()
        folder = prepare(cfg, tok_cfg, progress=False)
        seconds = time.perf_counter() - t0
        main_cpu, workers_cpu = (b - a for a, b in zip(cpu0, _cpu(), strict=True))
        meta = read_meta(folder)
        tokens = sum(s["tokens"] for s in meta["splits"].values()) + meta["held_out_beyond_cap"]["tokens"]
        assert tokens == n_bare, (tokens, n_bare)
        results[procs] = tokens / seconds
        cores = procs if procs > 1 else 1
        print(
            f"prepare, num_proc={procs:<3}     : {results[procs]:12,.0f} tokens/s  = {results[procs] / cores / bare:.2f} x bare per core"
            + ("  (one process; tokenizers may use threads)" if procs == 1 else "")
        )
        print(
            f"    wall {seconds:.1f} s; CPU: main process {main_cpu:.1f} s (read, split, write), workers {workers_cpu:.1f} s"
            + (f"; {results[procs] / ceiling:.2f} x the {procs}-process bare loop" if procs == args.procs > 1 else "")
        )

    # -- training reads ---------------------------------------------------------------------------------
    shards = TokenShards(folder, "train")
    model = ModelConfig(vocab_size=50257)  # gpt2_small
    seq_len, micro = 1024, 16
    loader = DataLoader(TrainWindows(shards, seq_len, micro, micro, seed=0), batch_size=None)
    times, it = [], iter(loader)
    for _ in range(200):
        t0 = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t0)
    loader_tps = micro * seq_len / statistics.median(times)
    needed = args.mfu * args.peak_tflops * 1e12 / flops_per_token(model, seq_len)
    print(f"train loader (1 process)  : {loader_tps:12,.0f} tokens/s  (median over 200 batches of {micro} x {seq_len})")
    print(
        f"gpt2_small consumes       : {needed:12,.0f} tokens/s  at {args.mfu:.0%} MFU of {args.peak_tflops:g} TFLOP/s"
        f" -> loader / need = {loader_tps / needed:.1f}x"
    )


if __name__ == "__main__":
    main()
