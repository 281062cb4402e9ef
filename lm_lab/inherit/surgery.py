"""Weight surgery: a model's starting weights made from another model's, as pure functions on state dicts.

Each function takes the source's state dict and config and the target's config, and returns the target's state
dict, or part of it: a key left out is a tensor the definition leaves at the target's fresh initialisation (load
with `strict=False`, as `LMModule.start_from` does). Returned tensors may be views of the source's, one source
tensor under several keys (stacking): load them by copying, never with `assign=True`.

- `inherit`: Inheritune (Sanyal et al. 2024, §3, Algorithm 1): the first n blocks of a k-layer reference; the
  §4.2 sub-module ablation (Table 3) by `modules`; with `reference`, the grow step (trained target + next blocks).
- `stack`: stacking (Gong et al. 2019): a trained m-layer model repeated to n = c * m layers.
- `hybrid_stack`: §4's hybrid stacking baseline: the reference's first n/2 blocks, stacked to n.
- `half_width`: §4's half-width baseline: every hidden dimension of the reference halved, the depth kept.
- `every_other`: DistilBERT's student init (Sanh et al. 2019, §3): student block i is teacher block 2i.

Deviation from the reference code (GPT2-experiments/train_iniheritune.py copies the first n blocks and the tied
head/embedding, leaving wpe and ln_f fresh): every function here also copies the position embedding and the
final norm, the layers below and above the blocks that the source was trained with.
DenseFormer's averaging weights after block j come with block j when it is its source's block j (its average then
spans the blocks at the same depths); elsewhere (stacked or skipped layers) they start at their init.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from lm_lab.errors import ConfigError
from lm_lab.models import GPT, ModelConfig
from lm_lab.models.gpt import Block

State = dict[str, torch.Tensor]

# Inheritune §4.2 (Table 3): the sub-modules of an inherited block: (the sublayer kinds, with their norms?).
# `attn`: the paper's "Attention (key, query, value, and projection, as well as layernorm weights)": we take the
# attention's own pre-norm (ln_1), as `mlp_ln` takes the MLP's (ln_2). The summary's "layernorm2" would be the
# MLP's norm in front of a fresh MLP, which we read as a numbering slip, not the intent.
MODULES = {
    "attn_mlp_ln": ("AFE", True),  # Inheritune: attention and MLP with their layer norms
    "attn_mlp": ("AFE", False),  # attention and MLP, the norms left at init
    "attn": ("A", True),  # attention (q, k, v, proj) and its norm
    "mlp_ln": ("FE", True),  # MLP (or MoE) and its norm
}

# ModelConfig fields that decide a tensor's shape or what it means: a surgery keeps them (besides depth, and for
# half_width the widths). Fields that change neither (dropout, init_std, attn_scale_by_layer, ...) are free.
SAME = (
    "d_model",
    "n_head",
    "n_kv_head",
    "d_ff",
    "padded_vocab_size",
    "bias",
    "norm",
    "mlp",
    "positions",
    "block_pattern",
    "denseformer",
    "dwa_dilation",
    "dwa_period",
)


def _problems(src: ModelConfig, tgt: ModelConfig) -> list[str]:
    fields = list(SAME)
    if src.has_moe() or tgt.has_moe():
        fields += ["moe_experts", "moe_expert_mlp"]
    if "learned" in (src.positions, tgt.positions):
        fields.append("block_size")  # the rows of wpe
    problems = [
        f"model.{f}={getattr(tgt, f)!r} vs {getattr(src, f)!r}" for f in fields if getattr(src, f) != getattr(tgt, f)
    ]
    if tgt.tie_embeddings and not src.tie_embeddings:  # one tensor cannot hold the source's two
        problems.append("model.tie_embeddings=True vs False (set model.tie_embeddings=false)")
    return problems


def check_architecture(what: str, src: ModelConfig, tgt: ModelConfig, source: str = "the source") -> None:
    """Refuse, in one line, a target that differs from the source other than in depth."""
    problems = _problems(src, tgt)
    if problems:
        raise ConfigError(
            f"{what}: the target differs from {source} other than in depth ({'; '.join(problems)}, target vs "
            f"source): give the target the source's architecture"
        )


def block_parts(cfg: ModelConfig, modules: str = "attn_mlp_ln") -> set[str]:
    """The sub-module names of a block (`ln_1`, `attn`, `ln_2`, `mlp`, `moe`, ...) that `modules` chooses."""
    if modules not in MODULES:
        raise ConfigError(f"init.modules={modules!r} is unknown; choose one of {list(MODULES)}")
    kinds, with_norms = MODULES[modules]
    with torch.device("meta"):
        sublayers = Block(cfg, 0).sublayers  # (norm, module) names, in block_pattern order
    parts = set()
    for kind, (norm, name) in zip(cfg.layer_kinds(), sublayers, strict=True):
        if kind in kinds:
            parts |= {name, norm} if with_norms else {name}
    return parts


def _target_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):  # no memory, no init
        return {k: v.shape for k, v in GPT(cfg).state_dict().items()}


# where target block j comes from: (state, source block i, its sub-modules or None for all)
BlockSource = tuple[State, int, set[str] | None]


def _assemble(what: str, tgt: ModelConfig, top: State, blocks: list[BlockSource]) -> State:
    """The target's tensors: outside the blocks (embeddings, final norm, head) from `top`; block j's as
    `blocks[j]` says; DenseFormer's weights after block j with block j when it is its source's block j."""
    out = {}
    for key, shape in _target_shapes(tgt).items():
        state, source_key = top, key
        if key.startswith(("blocks.", "dwa.alphas.")):
            j = int(key.split(".")[1 if key.startswith("blocks.") else 2])
            state, i, parts = blocks[j]
            if key.startswith("blocks."):
                rest = key.split(".", 2)[2]  # e.g. attn.qkv.weight
                if parts is not None and rest.split(".")[0] not in parts:
                    continue
                source_key = f"blocks.{i}.{rest}"
            elif i != j:
                continue
        tensor = state.get(source_key)
        if tensor is None or tensor.shape != shape:
            found = "missing" if tensor is None else f"of shape {tuple(tensor.shape)}"
            raise ConfigError(f"{what}: the source's {source_key} is {found}; target {key} needs {tuple(shape)}")
        out[key] = tensor
    return out


def inherit(
    state: State,
    src_cfg: ModelConfig,
    tgt_cfg: ModelConfig,
    modules: str = "attn_mlp_ln",
    reference: tuple[State, ModelConfig] | None = None,
) -> State:
    """Inheritune (§3): target blocks [0, n) from the source's first n (n = tgt_cfg.n_layer), and the
    embeddings, final norm and head; only the sub-modules `modules` chooses of each block (§4.2; the rest fresh).

    `reference=(ref_state, ref_cfg)`: the grow step (Algorithm 1, "grow M_tgt by inheriting additional layers"):
    `state` is the trained smaller target (m < n layers): its blocks [0, m), embeddings, final norm and head, then
    the reference's blocks [m, n) (`modules` applies to these new blocks)."""
    parts = block_parts(tgt_cfg, modules)
    n, m = tgt_cfg.n_layer, src_cfg.n_layer
    if reference is None:
        check_architecture("inheritune", src_cfg, tgt_cfg, "the reference")
        if n > m:
            raise ConfigError(
                f"inheritune: the target's model.n_layer={n} exceeds the reference's {m} layers; inherit at most {m}"
            )
        return _assemble("inheritune", tgt_cfg, state, [(state, j, parts) for j in range(n)])
    ref_state, ref_cfg = reference
    check_architecture("inheritune growth", src_cfg, tgt_cfg, "the trained model (init.path)")
    check_architecture("inheritune growth", ref_cfg, tgt_cfg, "the reference")
    k = ref_cfg.n_layer
    if not m < n <= k:
        raise ConfigError(
            f"inheritune growth: the trained model has {m} layers, the target model.n_layer={n}, the reference {k}: "
            f"growing needs {m} < model.n_layer <= {k}"
        )
    blocks = [(state, j, None) if j < m else (ref_state, j, parts) for j in range(n)]
    return _assemble("inheritune growth", tgt_cfg, state, blocks)


def stack(state: State, src_cfg: ModelConfig, tgt_cfg: ModelConfig) -> State:
    """Stacking (Gong et al. 2019, §3.2): target block j is the trained source's block j mod m, the source's
    layers repeated on top of themselves (Gong et al. double them: n = 2m; any multiple c * m repeats c times);
    embeddings, final norm and head copied."""
    check_architecture("stacking", src_cfg, tgt_cfg)
    m, n = src_cfg.n_layer, tgt_cfg.n_layer
    if n % m:
        raise ConfigError(
            f"stacking: model.n_layer={n} is not a multiple of the source's {m} layers; use {2 * m} (Gong et al.: "
            f"double it) or another multiple"
        )
    return _assemble("stacking", tgt_cfg, state, [(state, j % m, None) for j in range(n)])


def hybrid_stack(ref_state: State, ref_cfg: ModelConfig, tgt_cfg: ModelConfig) -> State:
    """Hybrid stacking (Inheritune §4 baselines): the large pretrained reference's first n/2 blocks, stacked to
    n (block j is the reference's block j mod n/2); the reference's embeddings, final norm and head."""
    check_architecture("hybrid_stacking", ref_cfg, tgt_cfg, "the reference")
    n, k = tgt_cfg.n_layer, ref_cfg.n_layer
    if n % 2 or n // 2 > k:
        raise ConfigError(
            f"hybrid_stacking: model.n_layer={n} must be even and at most twice the reference's {k} layers "
            f"(its first n/2 blocks are stacked to n)"
        )
    return _assemble("hybrid_stacking", tgt_cfg, ref_state, [(ref_state, j % (n // 2), None) for j in range(n)])


def every_other(state: State, src_cfg: ModelConfig, tgt_cfg: ModelConfig) -> State:
    """DistilBERT's student init (Sanh et al. 2019, §3: "taking one layer out of two"): student block i is the
    teacher's block 2i; embeddings, final norm and head copied."""
    check_architecture("every_other", src_cfg, tgt_cfg, "the teacher")
    k, n = src_cfg.n_layer, tgt_cfg.n_layer
    if 2 * (n - 1) >= k:
        raise ConfigError(
            f"every_other: model.n_layer={n} needs the teacher's block {2 * (n - 1)}, but it has {k} layers; "
            f"use model.n_layer <= {(k + 1) // 2}"
        )
    return _assemble("every_other", tgt_cfg, state, [(state, 2 * j, None) for j in range(n)])


def half_width_config(cfg: ModelConfig) -> ModelConfig:
    """The half-width model of `cfg` (§4's half-width baseline): the depth kept, d_model, heads (head_dim kept),
    key/value heads and d_ff halved. A single key/value head (multi-query attention) stays single."""
    problems = [
        f"model.{f}={getattr(cfg, f)} is odd" for f in ("n_head", "d_ff") if getattr(cfg, f) % 2
    ]  # d_model = n_head * head_dim is even with n_head
    if cfg.n_kv_head % 2 and cfg.n_kv_head != 1:
        problems.append(f"model.n_kv_head={cfg.n_kv_head} is odd (and not 1)")
    if problems:
        raise ConfigError(
            f"half_width: {', '.join(problems)}: halving keeps head_dim and takes the first half of the heads and "
            f"of the MLP neurons, so these must be even"
        )
    return replace(
        cfg,
        name=f"{cfg.name}_half_width",
        d_model=cfg.d_model // 2,
        n_head=cfg.n_head // 2,
        n_kv_head=max(1, cfg.n_kv_head // 2),
        d_ff=cfg.d_ff // 2,
    )


def half_width(state: State, src_cfg: ModelConfig, tgt_cfg: ModelConfig) -> State:
    """The half-width baseline (§4): every tensor keeps the first half of each hidden dimension: embedding,
    position and head columns, norm gains and biases, the first H/2 query heads and KV/2 key/value heads (rows
    of the fused qkv, columns of proj), the first d_ff/2 MLP neurons; the vocabulary and the depth are kept."""
    half = half_width_config(src_cfg)
    widths = ("n_layer", "d_model", "n_head", "n_kv_head", "d_ff")
    if any(getattr(tgt_cfg, f) != getattr(half, f) for f in widths):
        raise ConfigError(
            "half_width: the run's model must be the reference's half-width one: set "
            + " ".join(f"model.{f}={getattr(half, f)}" for f in widths)
            + " (this model: "
            + " ".join(f"{f}={getattr(tgt_cfg, f)}" for f in widths)
            + ")"
        )
    check_architecture("half_width", half, tgt_cfg, "the reference")
    D = src_cfg.head_dim
    sizes = [src_cfg.n_head * D, src_cfg.n_kv_head * D, src_cfg.n_kv_head * D]  # q | k | v rows, head-major
    kept = [tgt_cfg.n_head * D, tgt_cfg.n_kv_head * D, tgt_cfg.n_kv_head * D]  # the first heads of each
    out = {}
    for key, shape in _target_shapes(tgt_cfg).items():
        tensor = state.get(key)
        if tensor is None:
            raise ConfigError(f"half_width: the reference has no {key}")
        if ".qkv." in key:
            tensor = torch.cat([t[:r] for t, r in zip(tensor.split(sizes), kept, strict=True)])
        out[key] = tensor[tuple(slice(0, s) for s in shape)]  # the first entries of every dimension
    return out
