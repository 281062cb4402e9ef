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
