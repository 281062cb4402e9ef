"""Data pipeline speed and memory, `prepare` against a bare tokenizer loop.

1. Preparing: `prepare` (read the corpus with the lab's file readers, tokenise in worker processes, hash, write shards)
   against a bare loop of the same tokenizer over the same documents, with 1 and with `--procs` processes.
   The ratio is the pipeline's overhead (aim: >= 0.8). Every `prepare` and every bare loop runs in a fresh
   subprocess, which reports its wall time (around the `prepare(...)` call, or around the loop: the BPE is
   trained beforehand, outside the timings) and its peak memory.
2. Training reads: the training DataLoader's tokens/s against what `gpt2_small` consumes per second on a GPU
   (its FLOPs per token at a given MFU of the device's peak), so the loader is never the bottleneck
   (`--no-loader` skips it).

    python benchmarks/data.py [--mb 100 | --repeat R] [--layout jsonl|txt|single] [--procs N]
                              [--tokenizer bpe|bytes] [--no-loader] [--workdir DIR] [--keep]

The corpus is the embedded one (the standard library, ~10 MB) repeated to about `--mb` MB, each copy of a
document made distinct by a copy marker, written as `--layout`: `jsonl` one docs.jsonl, one document per row;
`txt` one .txt file per document; `single` ONE .txt file, the documents joined by a blank line, read as one
document (the bare loop then tokenises the documents it was made of: the same text, the tokenizer's speed).

Peak memory is each process's VmHWM (/proc/<pid>/status: the high-water mark of its own address space);
prepare's workers are polled for theirs while it runs. `ru_maxrss` is printed beside it but is no measure of
a spawned process: Linux carries the parent's high-water mark at fork/exec into the child's `ru_maxrss`, so a
small worker of a big parent reports the parent's peak (and RUSAGE_CHILDREN, the largest child, too).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lm_lab.data.config import DataConfig
from lm_lab.data.embedded import embedded_documents
from lm_lab.data.prepare import corpus_root, get_tokenizer
from lm_lab.data.shards import read_meta
from lm_lab.data.tokenizers import TokenizerConfig

# -- code run in the subprocesses (kept to the imports each needs: they count in its memory) ------------------

_PEAK = r'''
import json, os, resource, sys, threading, time

def hwm_kib(pid="self"):
    """VmHWM: the peak resident set of the process's own address space (not inherited across exec)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0

def maxrss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss

def cpu():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime

class WorkerPeaks(threading.Thread):
    """Polls the VmHWM of this process's multiprocessing workers (children running spawn_main)."""

    def __init__(self, interval=0.1, rescan=0.5):
        super().__init__(daemon=True)
        self.interval, self.rescan, self.done = interval, rescan, threading.Event()
        self.peaks, self._last_scan = {}, 0.0

    def _scan(self):
        me = os.getpid()
        for name in os.listdir("/proc"):
            if not name.isdigit() or name in self.peaks:
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid != me:
                    continue
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if b"spawn_main" not in f.read():
                        continue  # e.g. multiprocessing's resource tracker
            except (OSError, ValueError, IndexError):
                continue
            self.peaks[name] = 0

    def run(self):
        while not self.done.wait(self.interval):
            if not self.peaks or time.monotonic() - self._last_scan > self.rescan:
                self._scan()
                self._last_scan = time.monotonic()
            for pid in self.peaks:
                self.peaks[pid] = max(self.peaks[pid], hwm_kib(pid))

def report(**result):
    print("RESULT " + json.dumps(result), flush=True)
'''

PREPARE = (
    _PEAK
    + r"""
args = json.loads(sys.argv[1])
from lm_lab.data.config import DataConfig
from lm_lab.data.prepare import prepare
from lm_lab.data.tokenizers import TokenizerConfig

cfg, tok_cfg = DataConfig(**args["data"]), TokenizerConfig(**args["tokenizer"])
poller = WorkerPeaks()
poller.start()
cpu0, t0 = cpu(), time.perf_counter()
folder = prepare(cfg, tok_cfg, progress=False)
seconds = time.perf_counter() - t0
cpu1 = cpu()
poller.done.set()
poller.join()
ru_self, ru_children = maxrss_kib()
report(
    folder=str(folder),
    seconds=seconds,
    main_cpu=cpu1[0] - cpu0[0],
    workers_cpu=cpu1[1] - cpu0[1],
    hwm_kib=hwm_kib(),
    workers_hwm_kib=sorted(poller.peaks.values()),
    ru_maxrss_kib=ru_self,
    ru_children_kib=ru_children,
)
"""
)

BARE = (
    _PEAK
    + r"""
import struct
from lm_lab.data.tokenizers import tokenizer_from_spec

spec = tuple(json.loads(sys.argv[1]))
tok = tokenizer_from_spec(spec)
n = 0
with open(sys.argv[2], "rb") as f:  # length-prefixed UTF-8 documents, read one at a time: RSS is the tokenizer's
    t0 = time.perf_counter()
    while head := f.read(8):
        n += len(tok.encode(f.read(struct.unpack("<Q", head)[0]).decode("utf-8"))) + 1
    t1 = time.perf_counter()
report(tokens=n, start=t0, end=t1, hwm_kib=hwm_kib(), ru_maxrss_kib=maxrss_kib()[0])
"""
)


def _run(script: str, *argv: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *argv], stdout=subprocess.PIPE, text=True, env=env)


def _result(proc: subprocess.Popen) -> dict:
    out = proc.communicate()[0]
    if proc.returncode != 0:
        raise SystemExit(f"a benchmark subprocess failed (exit {proc.returncode}); its errors are above")
    return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("RESULT "))[7:])


def _mib(kib: float) -> str:
    return f"{kib / 1024:,.0f}"


# -- the corpus ---------------------------------------------------------------------------------------------


def build_documents(mb: float | None, repeat: int | None) -> list[str]:
    """The embedded corpus repeated to about `mb` MB (or `repeat` whole copies), every document distinct."""
    base = [d.text for d in embedded_documents()]
    texts, size, copy = [], 0, 0
    while (size < mb * 1e6) if repeat is None else (copy < repeat):
        for t in base:
            texts.append(f"{t}\n# copy {copy}\n")
            size += len(texts[-1].encode("utf-8"))
            if repeat is None and size >= mb * 1e6:
                break
        copy += 1
    return texts


def write_corpus(texts: list[str], layout: str, folder: Path) -> Path:
    """Write the documents as `layout`; returns the `data.path` to read."""
    folder.mkdir(parents=True)
    if layout == "jsonl":
        with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
        return folder
    if layout == "txt":
        width = len(str(len(texts)))
        for i, t in enumerate(texts):
            with open(folder / f"{i:0{width}d}.txt", "w", encoding="utf-8", newline="") as f:
                f.write(t)
        return folder
    # one training document in train/, and a validation/ split of a few small documents (a corpus of one
    # document has no held-out side to speak of)
    (folder / "train").mkdir()
    (folder / "validation").mkdir()
    with open(folder / "train" / "corpus.txt", "w", encoding="utf-8", newline="") as f:
        f.write("\n\n".join(texts))
    for i, t in enumerate(texts[:20]):
        (folder / "validation" / f"held{i:02d}.txt").write_text(f"validation copy {i}\n{t[:2000]}", encoding="utf-8")
    return folder


def write_shares(texts: list[str], procs: int, folder: Path) -> list[Path]:
    """The documents dealt round-robin into `procs` files of length-prefixed UTF-8, one per bare process."""
    files = [folder / f"share{procs}-{k}.bin" for k in range(procs)]
    for k, path in enumerate(files):
        with open(path, "wb") as f:
            for t in texts[k::procs]:
                data = t.encode("utf-8")
                f.write(struct.pack("<Q", len(data)) + data)
    return files


# -- the measurements ---------------------------------------------------------------------------------------


def bare_loop(spec: tuple, shares: list[Path]) -> dict:
    """The bare loop in `len(shares)` processes at once, each over its share of the documents."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    runs = [_run(BARE, json.dumps(spec), str(f), env=env) for f in shares]
    out = [_result(p) for p in runs]
    tokens = sum(o["tokens"] for o in out)
    return {
        "tokens": tokens,
        "tps": tokens / (max(o["end"] for o in out) - min(o["start"] for o in out)),
        "hwm_kib": max(o["hwm_kib"] for o in out),
        "ru_maxrss_kib": max(o["ru_maxrss_kib"] for o in out),
    }


def prepare_once(cfg: DataConfig, tok_cfg: TokenizerConfig) -> dict:
    args = {"data": vars(cfg), "tokenizer": vars(tok_cfg)}
    result = _result(_run(PREPARE, json.dumps(args)))
    meta = read_meta(Path(result["folder"]))
    result["tokens"] = sum(s["tokens"] for s in meta["splits"].values()) + meta["held_out_beyond_cap"]["tokens"]
    result["meta"] = meta
    result["tps"] = result["tokens"] / result["seconds"]
    return result


def training_reads(folder: Path, meta: dict, peak_tflops: float, mfu: float) -> None:
    from torch.utils.data import DataLoader

    from lm_lab.data.shards import TokenShards
    from lm_lab.data.windows import TrainWindows
    from lm_lab.models import ModelConfig, flops_per_token

    # a single-document corpus may have fallen on the validation side whole
    split = max(("train", "val"), key=lambda s: meta["splits"].get(s, {}).get("tokens", 0))
    shards = TokenShards(folder, split)
    model = ModelConfig(vocab_size=50257)  # gpt2_small
    seq_len, micro = 1024, 16
    loader = DataLoader(TrainWindows(shards, seq_len, micro, micro, seed=0), batch_size=None)
    times, it = [], iter(loader)
    for _ in range(200):
        t0 = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t0)
    loader_tps = micro * seq_len / statistics.median(times)
    needed = mfu * peak_tflops * 1e12 / flops_per_token(model, seq_len)
    print(
        f"train loader (1 process)  : {loader_tps:12,.0f} tokens/s  (median over 200 batches of {micro} x {seq_len}"
        + (", from the val split" if split != "train" else "")
        + ")"
    )
    print(
        f"gpt2_small consumes       : {needed:12,.0f} tokens/s  at {mfu:.0%} MFU of {peak_tflops:g} TFLOP/s"
        f" -> loader / need = {loader_tps / needed:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="bpe", choices=["bpe", "bytes"])
    parser.add_argument("--procs", type=int, default=os.cpu_count(), help="processes of the parallel runs")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--mb", type=float, default=100.0, help="corpus size in MB (1e6 bytes) of text (default 100)")
    size.add_argument("--repeat", type=int, help="instead of --mb: this many whole copies of the ~10 MB corpus")
    parser.add_argument(
        "--layout", default="jsonl", choices=["jsonl", "txt", "single"], help="how the corpus is stored"
    )
    parser.add_argument("--no-loader", action="store_true", help="skip the training-reads measurement")
    parser.add_argument("--workdir", help="where to write the corpus and token files (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and token files afterwards")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device bf16 peak (H100 SXM dense: 989)")
    parser.add_argument("--mfu", type=float, default=0.45, help="assumed GPU MFU of gpt2_small training")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lm_lab_bench_data.", dir=args.workdir))
    try:
        run(args, tmp)
    finally:
        if args.keep:
            print(f"(corpus and token files kept in {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    texts = build_documents(args.mb, args.repeat)
    path = write_corpus(texts, args.layout, tmp / "corpus")
    single = args.layout == "single"
    mb = (
        (path / "train" / "corpus.txt").stat().st_size if single else sum(len(t.encode("utf-8")) for t in texts)
    ) / 1e6
    docs = 1 if single else len(texts)
    tok_cfg = TokenizerConfig(name=args.tokenizer, vocab_size=4096 if args.tokenizer == "bpe" else 257)

    def config(procs: int, cache: str, corpus: Path = path) -> DataConfig:
        return DataConfig(
            name="bench",
            source="local",
            path=str(corpus),
            val_fraction=0.01,
            val_from="validation" if single else None,
            cache_dir=str(tmp / cache),
            num_proc=procs,
        )

    # the BPE is trained once, outside the timings, on the documents as JSONL whatever the layout (the same
    # tokenizer for every layout; a single document would train it on one text, or on none if held out)
    t0 = time.perf_counter()
    bpe_corpus = path if args.layout == "jsonl" else write_corpus(texts, "jsonl", tmp / "bpe-corpus")
    tokenizer = get_tokenizer(config(1, "tok", bpe_corpus), tok_cfg)
    trained = corpus_root(config(1, "tok", bpe_corpus)) / f"{tok_cfg.cache_key}.tokenizer.json"
    trained_note = f" (trained in {time.perf_counter() - t0:.0f} s, not timed)" if tok_cfg.name == "bpe" else ""
    print(
        f"corpus: layout {args.layout}, {mb:.1f} MB, "
        + (f"1 document (the {len(texts)} documents joined)" if single else f"{docs} documents")
        + f" | tokenizer {tokenizer.name}{trained_note} | {args.procs} processes"
    )

    # -- bare loops ------------------------------------------------------------------------------------------
    bare = {}
    for procs in sorted({1, args.procs}):
        bare[procs] = bare_loop(tokenizer.spec, write_shares(texts, procs, tmp))
        for f in tmp.glob(f"share{procs}-*.bin"):
            f.unlink()
    one = bare[1]["tps"]
    print(
        f"bare loop (1 core)        : {one:12,.0f} tokens/s  | {bare[1]['tokens']:,} tokens"
        f" | peak RSS {_mib(bare[1]['hwm_kib'])} MiB (ru_maxrss {_mib(bare[1]['ru_maxrss_kib'])})"
    )
    if args.procs > 1:
        b = bare[args.procs]
        print(
            f"bare loop x {args.procs} processes   : {b['tps']:12,.0f} tokens/s  = {b['tps'] / args.procs / one:.2f} x bare"
            f" per core (what this machine's cores give together) | peak RSS per process {_mib(b['hwm_kib'])} MiB"
            f" (ru_maxrss {_mib(b['ru_maxrss_kib'])})"
        )
    if single:
        print(
            "    (layout single: the bare loop tokenises the documents the file was made of; its count has one"
            " end-of-text per document, prepare's one in all, and BPE merges may differ across the joins:"
            " compare tokens/s, not counts)"
        )

    # -- prepare ----------------------------------------------------------------------------------------------
    rows, folder, meta = [], None, None
    for procs in sorted({1, args.procs}):
        cache = f"cache{procs}"
        cfg = config(procs, cache)
        if tok_cfg.name == "bpe":  # reuse the trained tokenizer so only tokenisation is timed
            target = corpus_root(cfg) / trained.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(trained, target)
        r = prepare_once(cfg, tok_cfg)
        folder, meta = Path(r["folder"]), r["meta"]
        if single:
            print(
                f"prepare, num_proc={procs:<3}     : {r['tokens']:,} tokens vs the bare loop's {bare[procs]['tokens']:,}"
                f" ({r['tokens'] - bare[procs]['tokens']:+,}; not compared)"
            )
        else:
            assert r["tokens"] == bare[procs]["tokens"], (r["tokens"], bare[procs]["tokens"])
        print(
            f"prepare, num_proc={procs:<3}     : {r['tps']:12,.0f} tokens/s  = {r['tps'] / procs / one:.2f} x bare per core"
            + ("  (one process; tokenizers may use threads)" if procs == 1 else "")
        )
        print(
            f"    wall {r['seconds']:.1f} s; CPU: main process {r['main_cpu']:.1f} s (read, split, write), "
            f"workers {r['workers_cpu']:.1f} s; {r['tps'] / bare[procs]['tps']:.2f} x the {procs}-process bare loop"
        )
        workers = r["workers_hwm_kib"]
        worker = max(workers, default=0)
        bound = r["hwm_kib"] + worker * procs
        print(
            f"    peak RSS: main {_mib(r['hwm_kib'])} MiB, "
            + (
                f"largest worker {_mib(worker)} MiB (of {len(workers)}), main + {procs} x worker = {_mib(bound)} MiB"
                if workers
                else ("no worker processes" if procs == 1 else "workers not seen (too short-lived to poll)")
            )
            + f" | ru_maxrss: main {_mib(r['ru_maxrss_kib'])}, largest child {_mib(r['ru_children_kib'])} MiB"
        )
        rows.append(
            {
                "layout": args.layout,
                "MB": f"{mb:.1f}",
                "documents": f"{docs:,}",
                "procs": str(procs),
                "prepare tok/s": f"{r['tps']:,.0f}",
                "bare tok/s": f"{bare[procs]['tps']:,.0f}",
                "ratio": f"{r['tps'] / bare[procs]['tps']:.2f}",
                "prepare RSS MiB main/worker": f"{_mib(r['hwm_kib'])} / {_mib(worker) if workers else '-'}",
                "bound MiB": _mib(bound),
                "bare RSS MiB/proc": _mib(bare[procs]["hwm_kib"]),
            }
        )

    # -- training reads -----------------------------------------------------------------------------------------
    if not args.no_loader:
        training_reads(folder, meta, args.peak_tflops, args.mfu)

    # -- summary ------------------------------------------------------------------------------------------------
    print()
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
    print("  ".join(k.rjust(w) for k, w in widths.items()))
    for r in rows:
        print("  ".join(r[k].rjust(w) for k, w in widths.items()))
    print(
        "(ratio: prepare / bare loop with the same processes; RSS: VmHWM, bound = main + procs x largest worker;"
        + " bare processes stream their documents from a file)"
    )


if __name__ == "__main__":
    main()
