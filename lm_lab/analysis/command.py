"""`lm-lab analyze CKPT_OR_HF_DIR`: a model's attention degeneration on validation windows, as a table and plots.

The windows are the first ones of the validation split of the run's own corpus and tokenizer (a lab checkpoint
records both); a Hugging Face folder is read with its own tokenizer on the embedded corpus. Hydra-style overrides
(`data=openwebtext tokenizer=gpt2 ...`) choose another corpus or tokenizer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lm_lab.errors import ConfigError, raise_if


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a lab checkpoint, a run directory or a Hugging Face model folder")
    p.add_argument("--batch", type=int, default=4, help="validation sequences averaged over (default 4)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the model's block_size)")
    p.add_argument("--threshold", type=float, default=0.9, help="explained variance / mass share of k*, m* (0.9)")
    p.add_argument("--layers", default=None, help="layers of the attention-map figure (default: 1 and the last)")
    p.add_argument("--out", default=None, help="folder for analysis.json and the PNGs (default: beside the model)")
    p.add_argument("overrides", nargs="*", help="data/tokenizer overrides as for run.py, e.g. data=openwebtext")


def _windows(path: str, cfg, batch: int, seq_len: int, overrides: list[str]) -> torch.Tensor:
    """The first `batch` validation windows (B, T + 1) of the model's corpus, or of the one `overrides` compose."""
    from omegaconf import OmegaConf

    from lm_lab.config import compose
    from lm_lab.data.config import DataConfig
    from lm_lab.data.datamodule import LMDataModule
    from lm_lab.data.tokenizers import TokenizerConfig
    from lm_lab.hf import checkpoint_file, is_hf_folder

    if overrides:
        composed = OmegaConf.to_container(compose(overrides).copy(), resolve=True)
        data, tok = composed["data"], composed["tokenizer"]
    elif is_hf_folder(path):
        data, tok = {}, {"name": "hf", "path": str(Path(path).expanduser()), "vocab_size": cfg.vocab_size}
    else:
        from lm_lab.checkpoint import read_checkpoint

        hp = read_checkpoint(checkpoint_file(path)).get("hyper_parameters", {})
        if not hp.get("data") or not hp.get("tokenizer"):
            raise ConfigError(
                f"{path} does not record its corpus and tokenizer; name them, e.g. data=embedded tokenizer=bpe"
            )
        data, tok = hp["data"], hp["tokenizer"]
    dm = LMDataModule(
        DataConfig(**data),
        TokenizerConfig(**tok),
        seq_len=seq_len,
        micro_batch_size=batch,
        batch_size=batch,
        val_tokens=batch * seq_len,
        seed=0,
    )
    dm.prepare_data()
    dm.setup("validate")
    windows = next(iter(dm.val_dataloader()))
    if windows.shape[0] < batch:
        raise ConfigError(f"the validation split holds {windows.shape[0]} windows of {seq_len} tokens; lower --batch")
    return windows


def command(args: argparse.Namespace) -> str:
    from lm_lab.analysis.report import analyze, format_table, plot_attention_maps, plot_heatmaps
    from lm_lab.hf import checkpoint_file, is_hf_folder, load_any

    problems = []
    if args.batch < 1:
        problems.append(f"--batch={args.batch} must be a positive integer")
    if args.seq_len is not None and args.seq_len < 2:
        problems.append(f"--seq-len={args.seq_len} must be at least 2")
    raise_if(problems)
    cfg, model = load_any(args.checkpoint)
    model = model.float()
    seq_len = args.seq_len or cfg.block_size
    if seq_len > cfg.block_size:
        raise ConfigError(f"--seq-len={seq_len} exceeds the model's block_size {cfg.block_size}")
    layers = (
        [int(x) for x in args.layers.split(",")] if args.layers else sorted({min(1, cfg.n_layer - 1), cfg.n_layer - 1})
    )
    windows = _windows(args.checkpoint, cfg, args.batch, seq_len, list(args.overrides))
    result = analyze(model, windows[:, :-1], args.threshold, keep_probs=True)
    source = Path(args.checkpoint).expanduser()
    if args.out:
        out = Path(args.out).expanduser()
    elif is_hf_folder(source) or source.is_dir():
        out = source / "analysis"
    else:
        out = checkpoint_file(source).parent.parent / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    heatmap = plot_heatmaps(result, out / "heatmap.png")
    maps = plot_attention_maps(result["probs"], layers, out / "attention_maps.png")
    record = {
        "model": str(args.checkpoint),
        "name": cfg.name,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        **{k: result[k] for k in ("threshold", "seq_len", "batch_size", "max_rank", "max_columns", "fraction")},
        "lazy_layers": result["lazy_layers"],
        "rows": result["rows"],
        "k_star": result["k_star"].tolist(),
        "m_star": result["m_star"].tolist(),
    }
    (out / "analysis.json").write_text(json.dumps(record, indent=2) + "\n")
    return f"{format_table(result)}\nwrote {out / 'analysis.json'}, {heatmap}, {maps}"
