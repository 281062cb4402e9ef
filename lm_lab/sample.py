"""Text from a trained model: `lm-lab sample CKPT --prompt TEXT`, or `generate` on any model of the family."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lm_lab.checkpoint import load_model, read_checkpoint
from lm_lab.data.config import DataConfig
from lm_lab.data.prepare import corpus_root
from lm_lab.data.tokenizers import Tokenizer, TokenizerConfig, load_tokenizer
from lm_lab.errors import ConfigError, raise_if


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: list[int],
    n_tokens: int,
    *,
    vocab_size: int,
    block_size: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """`n_tokens` ids after `prompt`, one at a time: softmax(logits / temperature) over the `top_k` most likely
    ids (greedy at temperature 0). Padded embedding rows (ids >= vocab_size) are never drawn."""
    ids = torch.tensor([prompt], dtype=torch.long)
    out = []
    for _ in range(n_tokens):
        logits = model(ids[:, -block_size:])[0, -1, :vocab_size].float()  # (V,): the last position's next token
        if temperature == 0:
            token = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None and top_k < vocab_size:
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, -float("inf"))
            token = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def checkpoint_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer a lab checkpoint was trained with (a trained BPE from the lab's cache, where it was made)."""
    path = Path(path)
    ckpt_file = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    hp = read_checkpoint(ckpt_file).get("hyper_parameters", {})
    if not hp.get("tokenizer"):
        raise ConfigError(f"checkpoint {ckpt_file} does not record its tokenizer (made by an older lm_lab)")
    tok_cfg = TokenizerConfig(**hp["tokenizer"])
    trained = None
    if tok_cfg.name == "bpe":
        data_cfg = DataConfig(**hp["data"])
        trained = corpus_root(data_cfg) / f"{tok_cfg.cache_key}.tokenizer.json"
        if not trained.exists():
            raise ConfigError(
                f"the BPE tokenizer this checkpoint was trained with is not at {trained}; set LM_LAB_CACHE (or "
                f"data.cache_dir) to the cache the run used, or prepare it again with `lm-lab prepare-data`"
            )
    return load_tokenizer(tok_cfg, trained_path=trained)


def sample(
    path: str | Path, prompt: str, *, tokens: int = 100, temperature: float = 0.8, top_k: int | None = 50, seed: int = 0
) -> str:
    """The prompt's continuation by the model of a lab checkpoint (file or run directory)."""
    problems = []
    if tokens < 1:
        problems.append(f"--tokens={tokens} must be a positive integer")
    if not temperature >= 0:
        problems.append(f"--temperature={temperature} must be >= 0 (0: greedy)")
    if top_k is not None and top_k < 1:
        problems.append(f"--top-k={top_k} must be a positive integer")
    raise_if(problems)
    cfg, model = load_model(path)
    tokenizer = checkpoint_tokenizer(path)
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    if not ids:
        ids = [tokenizer.eot_id]
    generator = torch.Generator().manual_seed(seed)
    out = generate(
        model,
        ids,
        tokens,
        vocab_size=cfg.vocab_size,
        block_size=cfg.block_size,
        temperature=temperature,
        top_k=top_k,
        generator=generator,
    )
    return tokenizer.decode(out)
