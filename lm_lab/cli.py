"""`lm-lab`: the lab's tools beside training (training itself is `python run.py`).

lm-lab prepare-data data=NAME tokenizer=NAME [data.num_proc=N ...]   tokenise a corpus once into shards
lm-lab count --model gpt2_medium [--vocab-size 50257] [--seq-len 1024] [KEY=VALUE ...]   params, FLOPs/token
"""

from __future__ import annotations

import argparse
import json
import sys

from hydra.errors import HydraException
from omegaconf import OmegaConf

from lm_lab.config import compose
from lm_lab.errors import ConfigError
from lm_lab.models import ModelConfig, chinchilla_flops_per_token, flops_per_token, non_embedding_params, param_count


def load_model_config(name: str, overrides: list[str], vocab_size: int) -> ModelConfig:
    """The model `python run.py model=NAME model.KEY=VALUE ...` would build, with the given vocabulary."""
    cfg = compose(
        [f"model={name}", f"model.vocab_size={vocab_size}", *(f"model.{o.removeprefix('model.')}" for o in overrides)]
    )
    return ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True))


def count(args: argparse.Namespace) -> dict:
    cfg = load_model_config(args.model, args.overrides, args.vocab_size)
    seq_len = args.seq_len or cfg.block_size
    return {
        "model": cfg.name,
        "params": param_count(cfg),
        "params_non_embedding": non_embedding_params(cfg),
        "vocab_size": cfg.vocab_size,
        "padded_vocab_size": cfg.padded_vocab_size,
        "seq_len": seq_len,
        "flops_per_token": flops_per_token(cfg, seq_len),
        "flops_per_token_chinchilla_appendix_f": chinchilla_flops_per_token(cfg, seq_len),
    }


def prepare_data(args: argparse.Namespace) -> dict:
    import logging

    from lm_lab.data.config import DataConfig
    from lm_lab.data.prepare import prepare
    from lm_lab.data.shards import read_meta
    from lm_lab.data.tokenizers import TokenizerConfig

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = OmegaConf.to_container(compose(args.overrides), resolve=True)
    data, tokenizer = DataConfig(**cfg["data"]), TokenizerConfig(**cfg["tokenizer"])
    folder = prepare(data, tokenizer, val_only=data.mode == "streaming")
    meta = read_meta(folder)
    return {"folder": str(folder), **{k: meta[k] for k in ("name", "tokenizer", "vocab_size", "dtype", "tokens_per_sec")},
            "splits": {k: {"tokens": v["tokens"], "documents": v["documents"], "shards": len(v["shards"])} for k, v in meta["splits"].items()}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lm-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("count", help="parameter counts and training FLOPs per token of a model config")
    p.add_argument("--model", default="gpt2_small", help="a conf/model name (default gpt2_small)")
    p.add_argument("--vocab-size", type=int, default=50257, help="vocabulary size (default 50257, GPT-2's)")
    p.add_argument("--seq-len", type=int, default=None, help="training sequence length (default block_size)")
    p.add_argument("overrides", nargs="*", help="model field overrides, e.g. n_layer=16")
    p.set_defaults(func=count)
    p = sub.add_parser("prepare-data", help="tokenise a corpus once into sharded token files (cached)")
    p.add_argument(
        "overrides", nargs="*", help="config overrides as for run.py, e.g. data=slimpajama_6b tokenizer=gpt2"
    )
    p.set_defaults(func=prepare_data)
    args = parser.parse_args(argv)
    try:
        print(json.dumps(args.func(args), indent=2))
    except ConfigError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except HydraException as e:  # unknown model name or field: Hydra's message lists the choices
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
