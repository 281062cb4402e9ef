"""Named model sizes: the one source of truth for `ModelConfig.preset(name)` and `conf/model/*.yaml`.

Each YAML file in `conf/model/` holds exactly the fields of its preset here (a test checks they agree), so a
size is the same whether it is chosen with `python run.py model=gpt2_medium` or from Python.
"""

from __future__ import annotations

# GPT-2 sizes (Radford et al. 2019, Table 2), context 1024; `gpt2_tiny` is the CPU-sized main-job model.
PRESETS: dict[str, dict] = {
    "gpt2_tiny": {"n_layer": 4, "n_head": 4, "d_model": 128, "block_size": 256},
    "gpt2_small": {"n_layer": 12, "n_head": 12, "d_model": 768, "block_size": 1024},
    "gpt2_medium": {"n_layer": 24, "n_head": 16, "d_model": 1024, "block_size": 1024},
    "gpt2_large": {"n_layer": 36, "n_head": 20, "d_model": 1280, "block_size": 1024},
    "gpt2_xl": {"n_layer": 48, "n_head": 25, "d_model": 1600, "block_size": 1024},
    # `lm-lab plan --gpu-hours 3 --gpu a100 --batch-size 66`: seed 000's compute-optimal size (171M with GPT-2's
    # vocabulary; the Chinchilla rule gives N_opt 168M), used by experiment=budget_3h (a test keeps them equal)
    "gpt2_a100_3h": {"n_layer": 13, "n_head": 14, "d_model": 896, "block_size": 1024},
}

# LLaMA-style (Touvron et al. 2023): RMSNorm, SwiGLU, rotary positions, no biases.
LLAMA = {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False}

# Hägele et al. 2024, Table 1 (shapes from epfml/schedules-and-scaling's flops.ipynb): head size 64, SwiGLU width
# 8/3 d rounded up to 256, context 512, tied embeddings as in their code (src/models/llama.py).
HAGELE = {
    "hagele_33m": (8, 384),
    "hagele_53m": (8, 512),
    "hagele_60m": (10, 512),
    "hagele_93m": (12, 640),
    "hagele_124m": (12, 768),
    "hagele_151m": (16, 768),
    "hagele_166m": (12, 896),
    "hagele_210m": (24, 768),
    "hagele_360m": (24, 1024),
}
for _name, (_layers, _d) in HAGELE.items():
    PRESETS[_name] = {
        "n_layer": _layers,
        "n_head": _d // 64,
        "d_model": _d,
        "block_size": 512,
        **LLAMA,
        "d_ff_multiple": 256,
    }

PRESETS |= {
    # a CPU-sized LLaMA with grouped-query attention (2 key/value heads for 4 query heads) and an untied head
    "llama_tiny": {
        "n_layer": 4,
        "n_head": 4,
        "n_kv_head": 2,
        "d_model": 128,
        "block_size": 256,
        **LLAMA,
        "d_ff_multiple": 64,
        "tie_embeddings": False,
    },
    # OpenLLaMA-3B (openlm-research/open_llama_3b's config.json): Inheritune's appendix inherits its first 13 layers
    # (3,426,473,600 parameters with its 32000-token tokenizer: tokenizer=hf tokenizer.name=openlm-research/open_llama_3b)
    "openllama_3b": {
        "n_layer": 26,
        "n_head": 32,
        "d_model": 3200,
        "d_ff": 8640,
        "block_size": 2048,
        **LLAMA,
        "tie_embeddings": False,
        "layer_norm_eps": 1e-6,
    },
}
