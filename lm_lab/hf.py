"""Hugging Face models in and out: `GPT2LMHeadModel` and `LlamaForCausalLM` folders as lab models, and lab models
as those folders, so references and starting points can be hub models and lab models can be evaluated with the
tools the field uses (lm-evaluation-harness; Inheritune, Sanyal et al. 2024, §4 reports its zero-shot tasks).

Import reads `config.json` as plain JSON and the tensors directly with `safetensors` (or `torch.load` with
`weights_only=True` for `pytorch_model.bin`): no Hugging Face model is built, no remote code runs, nothing is
downloaded, and each tensor is converted as it is taken, so a 3B model never needs two copies in memory.
Imported models have `pad_vocab_multiple=1`: the lab's padded embedding rows would add logits of 0 to every
softmax and so change the loss of a model trained without them.

Export writes what `from_pretrained` loads with no missing or unexpected weights: config.json, model.safetensors
(sharded above 5 GB), generation_config.json and, when the run's tokenizer has a Hugging Face form, the tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import MutableMapping
from pathlib import Path

import torch

from lm_lab.checkpoint import model_shapes, read_checkpoint, read_model_state, read_source, tensor_problems
from lm_lab.errors import ConfigError, raise_if
from lm_lab.models import GPT, ModelConfig

log = logging.getLogger(__name__)

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
# tensors of a Hugging Face file that are not weights: GPT-2's causal-mask buffers (older files hold them) and
# LLaMA's RoPE frequencies (recomputed from rope_theta, here as there)
NOT_WEIGHTS = re.compile(r"(^h\.\d+\.attn\.(masked_)?bias$)|(rotary_emb\.inv_freq$)")
GPT2_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU's tanh form, which the lab's MLP computes


# -- configs ----------------------------------------------------------------------------------------------------


def config_from_hf(hf: dict, name: str | None = None) -> ModelConfig:
    """The lab config of a Hugging Face `config.json` (as a dict); anything the lab would compute differently is
    refused, every problem in one error."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ConfigError(
            f"Hugging Face model_type={model_type!r} cannot be imported; supported: {sorted(ARCHITECTURES)} "
            f"({', '.join(ARCHITECTURES.values())})"
        )
    name = name or f"hf:{model_type}"
    return (_gpt2_config if model_type == "gpt2" else _llama_config)(hf, name)


def _gpt2_config(hf: dict, name: str) -> ModelConfig:
    problems = []
    act = hf.get("activation_function", "gelu_new")
    if act not in GPT2_TANH_GELU:
        problems.append(f"activation_function={act!r}: the lab's GPT-2 MLP computes GELU's tanh form (gelu_new)")
    for key, bad, why in (
        ("reorder_and_upcast_attn", True, "its float32 upcast of the attention scores is not the lab's"),
        ("scale_attn_weights", False, "the lab always divides attention logits by sqrt(head_dim)"),
        ("add_cross_attention", True, "cross-attention layers have no lab form"),
    ):
        if hf.get(key, not bad) == bad:
            problems.append(f"{key}={bad}: {why}")
    raise_if([f"cannot import this GPT-2: {p}" for p in problems])
    drops = {site: float(hf.get(key, 0.1)) for site, key in _GPT2_DROPOUTS.items()}
    return ModelConfig(
        name=name,
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        d_model=hf["n_embd"],
        d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
        block_size=hf.get("n_positions", 1024),
        vocab_size=hf["vocab_size"],
        pad_vocab_multiple=1,
        bias=True,
        dropout=drops["resid_dropout"],
        **drops,
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        attn_scale_by_layer=bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
    )


_GPT2_DROPOUTS = {"embd_dropout": "embd_pdrop", "attn_dropout": "attn_pdrop", "resid_dropout": "resid_pdrop"}


def _llama_config(hf: dict, name: str) -> ModelConfig:
    problems = []
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r}: the lab's SwiGLU gates with silu")
    if hf.get("head_dim") not in (None, d // heads):
        problems.append(
            f"head_dim={hf['head_dim']}: the lab's heads are hidden_size/num_attention_heads = {d // heads}"
        )
    # transformers >= 5 writes rope_parameters; older files rope_theta and rope_scaling
    rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
    if hf.get("rope_scaling") is not None or rope.get("rope_type", "default") != "default":
        scaling = hf.get("rope_scaling") or rope
        problems.append(f"rope scaling {scaling}: the lab's RoPE is the plain one (Su et al. 2021)")
    attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    if attention_bias != mlp_bias:
        problems.append(
            f"attention_bias={attention_bias} but mlp_bias={mlp_bias}: the lab has one `bias` flag for every layer"
        )
    raise_if([f"cannot import this LLaMA: {p}" for p in problems])
    return ModelConfig(
        name=name,
        n_layer=hf["num_hidden_layers"],
        n_head=heads,
        n_kv_head=hf.get("num_key_value_heads") or heads,
        d_model=d,
        d_ff=hf["intermediate_size"],
        block_size=hf.get("max_position_embeddings", 2048),
        vocab_size=hf["vocab_size"],
        pad_vocab_multiple=1,
        bias=bool(attention_bias),
        dropout=0.0,
        attn_dropout=float(hf.get("attention_dropout", 0.0)),
        layer_norm_eps=hf.get("rms_norm_eps", 1e-6),
        norm="rmsnorm",
        mlp="swiglu",
        positions="rope",
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        tie_embeddings=hf.get("tie_word_embeddings", False),
    )


GPT2_FORM = {"norm": "layernorm", "mlp": "gelu", "positions": "learned"}
LLAMA_FORM = {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope"}


def export_kind(cfg: ModelConfig) -> str:
    """`gpt2` or `llama`: the Hugging Face architecture that computes exactly what this lab model computes, or a
    one-line ConfigError naming what cannot be exported."""
    why = None
    if cfg.has_moe():
        why = "its mixture-of-experts layers (model.mlp=moe or E in model.block_pattern)"
    elif cfg.denseformer:
        why = "DenseFormer's depth-weighted averages (model.denseformer=true)"
    elif cfg.layer_kinds() != ["A", "F"]:
        why = f"model.block_pattern={cfg.block_pattern!r} (GPT-2 and LLaMA blocks are A,F)"
    else:
        gpt2 = [f"model.{k}={getattr(cfg, k)!r}" for k, v in GPT2_FORM.items() if getattr(cfg, k) != v]
        if cfg.n_kv_head != cfg.n_head:
            gpt2.append(f"model.n_kv_head={cfg.n_kv_head} (GPT-2 has no grouped-query attention)")
        llama = [f"model.{k}={getattr(cfg, k)!r}" for k, v in LLAMA_FORM.items() if getattr(cfg, k) != v]
        if cfg.attn_scale_by_layer:
            llama.append("model.attn_scale_by_layer=true (LLaMA has no inverse-layer attention scale)")
        if not gpt2:
            return "gpt2"
        if not llama:
            return "llama"
        kind, differ = ("GPT-2", gpt2) if len(gpt2) <= len(llama) else ("LLaMA", llama)
        want = GPT2_FORM if kind == "GPT-2" else LLAMA_FORM
        why = f"{', '.join(differ)}: Hugging Face {kind} needs " + ", ".join(f"{k}={v}" for k, v in want.items())
    raise ConfigError(f"model {cfg.name!r} cannot be exported to Hugging Face: {why}")


def hf_config(cfg: ModelConfig, eot_id: int | None = None) -> dict:
    """The `config.json` fields (transformers config kwargs) of the Hugging Face model equal to this lab model."""
    kind = export_kind(cfg)
    common = {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": cfg.vocab_size,  # the padded rows are dropped
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
    }
    if kind == "gpt2":
        return common | {
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_embd": cfg.d_model,
            "n_inner": None if cfg.d_ff == 4 * cfg.d_model else cfg.d_ff,  # GPT2Config's None means 4 * n_embd
            "n_positions": cfg.block_size,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.layer_norm_eps,
            "scale_attn_by_inverse_layer_idx": cfg.attn_scale_by_layer,
            **{key: getattr(cfg, site) for site, key in _GPT2_DROPOUTS.items()},
        }
    return common | {
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "hidden_size": cfg.d_model,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.block_size,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.layer_norm_eps,
        "rope_theta": cfg.rope_theta,
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.attn_dropout,
    }


# -- weights ----------------------------------------------------------------------------------------------------


def weight_names(kind: str, cfg: ModelConfig, bias: bool | None = None) -> dict[str, list[str]]:
    """Lab tensor name -> the Hugging Face tensors it is made of (q, k, v for LLaMA's fused qkv; one otherwise).

    GPT-2 names are those inside `transformer.`; the lm_head of a tied model is the embedding, in no file.
    `bias` (default `cfg.bias`) lists the bias tensors too.
    """
    bias = cfg.bias if bias is None else bias
    names: dict[str, list[str]] = {}

    def add(ours: str, theirs: list[str], has_bias: bool) -> None:
        names[f"{ours}.weight"] = [f"{t}.weight" for t in theirs]
        if has_bias:
            names[f"{ours}.bias"] = [f"{t}.bias" for t in theirs]

    if kind == "gpt2":
        add("wte", ["wte"], False)
        add("wpe", ["wpe"], False)
        for i in range(cfg.n_layer):
            for ours, theirs in (
                ("ln_1", "ln_1"),
                ("attn.qkv", "attn.c_attn"),
                ("attn.proj", "attn.c_proj"),
                ("ln_2", "ln_2"),
                ("mlp.fc", "mlp.c_fc"),
                ("mlp.proj", "mlp.c_proj"),
            ):
                add(f"blocks.{i}.{ours}", [f"h.{i}.{theirs}"], bias)
        add("ln_f", ["ln_f"], bias)
    else:
        add("wte", ["model.embed_tokens"], False)
        for i in range(cfg.n_layer):
            hf = f"model.layers.{i}"
            add(f"blocks.{i}.ln_1", [f"{hf}.input_layernorm"], False)  # RMSNorm: a gain only
            add(f"blocks.{i}.attn.qkv", [f"{hf}.self_attn.{p}_proj" for p in "qkv"], bias)
            add(f"blocks.{i}.attn.proj", [f"{hf}.self_attn.o_proj"], bias)
            add(f"blocks.{i}.ln_2", [f"{hf}.post_attention_layernorm"], False)
            for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("proj", "down_proj")):
                add(f"blocks.{i}.mlp.{ours}", [f"{hf}.mlp.{theirs}"], bias)
        add("ln_f", ["model.norm"], False)
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = ["lm_head.weight"]
    return names


def _conv1d(kind: str, hf_name: str, t: torch.Tensor) -> bool:
    """GPT-2's Conv1D layers store their weight as (in, out), nn.Linear as (out, in)."""
    return kind == "gpt2" and t.ndim == 2 and ".c_" in hf_name


def hf_to_lab(kind: str, tensors: MutableMapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict as the lab's, for the config `config_from_hf` made. Tensors are popped from
    `tensors` as they are converted (memory is freed as it goes); any left over that is not a known buffer, and
    any missing, are refused by name.

    LLaMA's q and k rows map directly: the lab's RoPE rotates the pair (i, i + D/2), the half-split
    (rotate_half) layout of Hugging Face LLaMA, not the interleaved pairs of Meta's original weights.
    """
    if kind == "gpt2":  # GPT2LMHeadModel's files say `transformer.h.0...`, the original GPT-2 files `h.0...`
        for key in [k for k in tensors if k.startswith("transformer.")]:
            tensors[key.removeprefix("transformer.")] = tensors.pop(key)
    names = weight_names(kind, cfg)
    missing = [n for parts in names.values() for n in parts if n not in tensors]
    if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        raise ConfigError(f"the Hugging Face weights lack {', '.join(missing[:6])}{more}")
    state = {}
    for ours, parts in names.items():
        pieces = [tensors.pop(n) for n in parts]
        pieces = [p.t().contiguous() if _conv1d(kind, n, p) else p for n, p in zip(parts, pieces, strict=True)]
        state[ours] = pieces[0] if len(pieces) == 1 else torch.cat(pieces)  # LLaMA: q, k, v rows stacked
        del pieces
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["wte.weight"]
        tensors.pop("lm_head.weight", None)  # a tied model's head is its embedding, as Hugging Face loads it
    left = [k for k in tensors if not NOT_WEIGHTS.search(k)]
    if left:
        raise ConfigError(
            f"the Hugging Face weights hold tensors this {ARCHITECTURES[kind]} has no place for: {left[:6]}"
        )
    return state


def lab_to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The lab's state dict as the Hugging Face model's (`export_kind(cfg)`): padded vocabulary rows dropped, q/k/v
    split for LLaMA, Conv1D weights transposed and, for a GPT-2 without biases, zero biases (Hugging Face's GPT-2
    always has them; zeros compute the same logits)."""
    kind = export_kind(cfg)
    out = {}
    for ours, parts in weight_names(kind, cfg, bias=True if kind == "gpt2" else cfg.bias).items():
        if ours in state:
            t = state[ours]
        else:  # a bias the lab model does not have: zeros as long as its weight's output dimension
            weight = state[ours.removesuffix(".bias") + ".weight"]
            t = torch.zeros(weight.shape[0], dtype=weight.dtype)
        if ours in ("wte.weight", "lm_head.weight"):
            t = t[: cfg.vocab_size].clone()  # vocab_size rows only: the padded ones are never a token
        sizes = _qkv_rows(cfg) if len(parts) == 3 else [t.shape[0]]  # LLaMA's q, k, v from the fused qkv
        prefix = "transformer." if kind == "gpt2" and ours != "lm_head.weight" else ""
        for name, piece in zip(parts, t.split(sizes), strict=True):
            if _conv1d(kind, name, piece):
                piece = piece.t().contiguous()
            elif len(parts) > 1:
                piece = piece.clone()  # its own storage: safetensors refuses views into a larger tensor
            out[prefix + name] = piece
    return out


def _qkv_rows(cfg: ModelConfig) -> tuple[int, int, int]:
    """Rows of q, k and v in the lab's fused qkv weight (n_head and n_kv_head heads of head_dim)."""
    return cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim


# -- folders ----------------------------------------------------------------------------------------------------


def _weight_files(folder: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            return [folder / s for s in shards]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    raise ConfigError(f"{folder} holds no model.safetensors or pytorch_model.bin (nor a sharded index of them)")


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face folder's weight files, on the CPU; `.bin` files only as plain tensors."""
    from safetensors.torch import load_file

    tensors = {}
    for file in _weight_files(folder):
        if file.suffix == ".safetensors":
            tensors |= load_file(file, device="cpu")
        else:
            tensors |= torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    return tensors


def read_hf(folder: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The lab config and state dict of a local Hugging Face `GPT2LMHeadModel` or `LlamaForCausalLM` folder."""
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{folder} has no config.json: not a Hugging Face model folder (give a local save_pretrained one)"
        )
    hf = json.loads((folder / "config.json").read_text())
    cfg = config_from_hf(hf, name=f"hf:{hf.get('model_type')}:{folder.name}")
    state = hf_to_lab(hf["model_type"], read_tensors(folder), cfg)
    raise_if([f"{folder}: {p}" for p in tensor_problems(model_shapes(cfg), state)])
    return cfg, state


def is_hf_folder(path: str | Path) -> bool:
    return Path(path).expanduser().is_dir() and (Path(path).expanduser() / "config.json").is_file()


def load_any(path: str | Path) -> tuple[ModelConfig, GPT]:
    """`read_source`'s model built with its weights (their dtype as stored), in eval mode."""
    cfg, state = read_source(path)
    with torch.device("meta"):
        model = GPT(cfg)
    model.load_state_dict(state, assign=True)  # the read tensors become the parameters: no second copy
    model.tie_weights()
    return cfg, model.eval()


# -- export -----------------------------------------------------------------------------------------------------


def checkpoint_file(path: str | Path) -> Path:
    """A lab checkpoint file, or the last.ckpt of a run directory (as `read_model_state` finds it)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt" if (path / "checkpoints").is_dir() else path / "last.ckpt"
    return path


def export_tokenizer(ckpt_path: str | Path):
    """(the Hugging Face tokenizer to save beside an export or None, the end-of-text id or None, a note on it)
    for the tokenizer a lab checkpoint records. A `bpe` tokenizer must be in the cache the run used."""
    from lm_lab.data.tokenizers import ByteTokenizer, TokenizerConfig
    from lm_lab.sample import checkpoint_tokenizer

    file = checkpoint_file(ckpt_path)
    recorded = read_checkpoint(file).get("hyper_parameters", {}).get("tokenizer")
    if not recorded:
        return None, None, f"no tokenizer saved: checkpoint {file} does not record its tokenizer"
    tok_cfg = TokenizerConfig(**recorded)
    if tok_cfg.name == "bytes":
        return None, ByteTokenizer.eot_id, "no tokenizer saved: the lab's bytes tokenizer has no Hugging Face form"
    if tok_cfg.name == "tiktoken":
        hub = " (ids equal to the Hugging Face `gpt2` tokenizer's: pair it with that one)" * (tok_cfg.path == "gpt2")
        eot = 50256 if tok_cfg.path == "gpt2" else None  # GPT-2's <|endoftext|>, without loading tiktoken's files
        return None, eot, f"no tokenizer saved: tiktoken encoding {tok_cfg.path!r}{hub}"
    import transformers

    lab_tok = checkpoint_tokenizer(file)  # bpe: the run's trained tokenizer.json; hf: the local or cached one
    local = Path(tok_cfg.path or "").expanduser()
    if tok_cfg.name == "hf" and (local / "tokenizer_config.json").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(local))  # its own files, special tokens and all
    else:
        from tokenizers import Tokenizer

        _, json_file, eot = lab_tok.spec
        # no bos_token: lm-eval then uses end-of-text as the prefix of an empty context, the token every lab
        # document follows in training
        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(json_file), eos_token=eot)
    return tokenizer, lab_tok.eot_id, f"tokenizer saved ({tok_cfg.name}, {lab_tok.vocab_size} ids)"


def export(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """A lab checkpoint (file or run directory) as a Hugging Face folder `out_dir` (new or empty): GPT-2-like
    models as `GPT2LMHeadModel`, LLaMA-style ones as `LlamaForCausalLM`, loadable with
    `AutoModelForCausalLM.from_pretrained(out_dir)`, with the tokenizer when it has a Hugging Face form (else the
    log says so). Written into a temporary sibling folder and renamed: a crash leaves no half export."""
    import transformers
    from huggingface_hub import save_torch_state_dict

    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; give a new folder to export into")
    cfg, state = read_model_state(ckpt_path)
    kind = export_kind(cfg)
    tokenizer, eot_id, note = export_tokenizer(ckpt_path)
    hf_state = lab_to_hf(state, cfg)
    dtype = state["wte.weight"].dtype
    config = transformers.AutoConfig.for_model(**hf_config(cfg, eot_id), dtype=dtype)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed export of this pid
    tmp.mkdir(parents=True)
    try:
        config.save_pretrained(tmp)
        save_torch_state_dict(hf_state, tmp, max_shard_size="5GB")
        if eot_id is not None:
            transformers.GenerationConfig(bos_token_id=eot_id, eos_token_id=eot_id).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.model_max_length = cfg.block_size
            tokenizer.save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (log.info if tokenizer is not None else log.warning)(
        "exported %s (%s) to %s as %s; %s", ckpt_path, cfg.name, out, ARCHITECTURES[kind], note
    )
    return out
