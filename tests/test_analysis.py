"""Attention degeneration (Inheritune §2, App. A): k* and m* on constructed matrices, lazy layers, q/k gradient norms,
the explicit-attention seam against the fused kernels, the report's table and plots, and the live monitor in a real
run (bit-identical training with and without it, its scalars and images read back from the event file)."""

from __future__ import annotations

import math
from itertools import islice

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from callbacks import AttentionMonitor
from callbacks.attention import AttentionMonitorConfig
from lm_lab.analysis import (
    analyze,
    approximate_rank,
    attention_modules,
    attention_probabilities,
    degeneration,
    format_table,
    head_means,
    heatmap_image,
    lazy_layers,
    mass_columns,
    plot_attention_maps,
    plot_heatmaps,
    qk_grad_norms,
    summarize,
)
from lm_lab.config import RunConfig, TrainConfig, TrainerConfig, check_hydra_sections, compose
from lm_lab.data.config import DataConfig
from lm_lab.data.embedded import embedded_documents
from lm_lab.data.tokenizers import TokenizerConfig
from lm_lab.errors import ConfigError
from lm_lab.models import GPT, ModelConfig
from lm_lab.optim import SchedulerConfig
from lm_lab.train import default_callbacks, fit
from tests.test_architectures import LLAMA_STYLE

V = 97


def tiny(**overrides) -> ModelConfig:
    return ModelConfig(
        **{"name": "test", "n_layer": 2, "n_head": 4, "d_model": 32, "block_size": 16, "vocab_size": V, **overrides}
    )


def uniform(T: int) -> torch.Tensor:
    return torch.full((T, T), 1.0 / T)


def one_column(T: int, j: int) -> torch.Tensor:
    a = torch.zeros(T, T)
    a[:, j] = 1.0
    return a


def known_spectrum() -> torch.Tensor:
    """U diag(s) V^T, 5 x 5, with squared singular values 0.5, 0.3, 0.1, 0.06, 0.04: cumulative shares 0.5, 0.8,
    0.9, 0.96, 1 (the 0.9 comes out as 0.8999999999999999 in float64 for these U, V, and lower in float32)."""
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    s = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04], dtype=torch.float64).sqrt()
    return u @ torch.diag(s) @ v.T


# -- k* and m* on constructed matrices -------------------------------------------------------------------------


@pytest.mark.parametrize(("T", "expected"), [(7, 7), (10, 9), (16, 15)])  # ceil(0.9 T): 6.3 -> 7, 9, 14.4 -> 15
def test_identity_needs_ceil_of_90_percent_of_its_rows_and_columns(T, expected):
    """Every singular value and every column mass of I is 1: 90% of them takes ceil(0.9 T); at 100%, all T."""
    eye = torch.eye(T)
    assert approximate_rank(eye).item() == expected
    assert mass_columns(eye).item() == expected
    assert approximate_rank(eye, threshold=1.0).item() == T == mass_columns(eye, threshold=1.0).item()


def test_uniform_attention_is_rank_one_but_spread_over_the_columns():
    """Every row 1/T: one singular value holds everything (rank collapse), yet each column holds 1/T of the mass."""
    assert approximate_rank(uniform(10)).item() == 1
    assert mass_columns(uniform(10)).item() == 9
    assert mass_columns(uniform(7)).item() == 7


@pytest.mark.parametrize("column", [0, 3])
def test_all_mass_on_one_column_is_one_column_and_rank_one(column):
    """The lazy signature (Fig. 1): a column sum of T, the others 0. Row sums (all 1) would say 9 of 10."""
    a = one_column(10, column)
    assert approximate_rank(a).item() == 1
    assert mass_columns(a).item() == 1


def test_known_spectrum_gives_the_hand_computed_rank_at_and_around_each_boundary():
    a = known_spectrum()
    for threshold, k in [
        (0.5, 1),
        (0.8, 2),
        (0.8 + 1e-4, 3),
        (0.9, 3),
        (0.9 + 1e-4, 4),
        (0.96, 4),
        (0.97, 5),
        (1.0, 5),
    ]:
        assert approximate_rank(a, threshold).item() == k, threshold
    # the exact 0.9 boundary from float32 probabilities: the share computes to 0.89999999825, reached within 1e-6
    assert approximate_rank(a.float(), 0.9).item() == 3


def test_mass_columns_boundary_from_float32_rounding():
    """Rows [0.9, 0.1/9 x 9] in float32: column 0 holds 0.8999999954 of the mass, 0.9 on paper, so m* = 1."""
    row = torch.full((10,), 0.1 / 9)
    row[0] = 0.9
    a = row.repeat(10, 1).float()
    assert mass_columns(a).item() == 1
    assert mass_columns(a, 0.9 + 1e-4).item() == 2
    # a second heavy column: masses 5, 3, 1, 1 (x 1/10 per row) -> 50%, 80%, 90%, 100%
    b = torch.zeros(10, 10)
    b[:, 2], b[:, 5], b[:, 7], b[:, 9] = 0.5, 0.3, 0.1, 0.1
    assert [mass_columns(b, t).item() for t in (0.5, 0.51, 0.8, 0.81, 0.9, 0.91)] == [1, 2, 2, 3, 3, 4]


def test_batched_shapes_and_the_all_zero_matrix():
    stack = torch.stack([torch.eye(10), uniform(10), one_column(10, 4), torch.zeros(10, 10)]).view(2, 2, 10, 10)
    assert approximate_rank(stack).tolist() == [[9, 1], [1, 0]]
    assert mass_columns(stack).tolist() == [[9, 9], [1, 0]]
    assert approximate_rank(stack).dtype == torch.long


@pytest.mark.parametrize("threshold", [0, 1.5, -0.1, True, "0.9"])
def test_a_bad_threshold_is_refused_naming_it(threshold):
    with pytest.raises(ConfigError, match=r"threshold=.* must be a share in \(0, 1\]"):
        approximate_rank(torch.eye(3), threshold)
    with pytest.raises(ConfigError, match=r"threshold="):
        mass_columns(torch.eye(3), threshold)


def test_non_square_input_is_refused():
    with pytest.raises(ValueError, match=r"\(\.\.\., T, T\); got shape \(3, 4\)"):
        approximate_rank(torch.ones(3, 4))


def test_degeneration_averages_each_head_over_the_batch():
    """Layer 0: head 0 sees I (k* 9, m* 9) and uniform (1, 9); head 1 one column twice (1, 1). Layer 1: head 0
    uniform twice, head 1 I twice."""
    T = 10
    eye, uni, col = torch.eye(T), uniform(T), one_column(T, 0)
    layer0 = torch.stack([torch.stack([eye, col]), torch.stack([uni, col])])  # (B=2, H=2, T, T)
    layer1 = torch.stack([torch.stack([uni, eye]), torch.stack([uni, eye])])
    d = degeneration([layer0, layer1])
    torch.testing.assert_close(d["k_star"], torch.tensor([[5.0, 1.0], [1.0, 9.0]], dtype=torch.float64))
    torch.testing.assert_close(d["m_star"], torch.tensor([[9.0, 1.0], [9.0, 9.0]], dtype=torch.float64))
    torch.testing.assert_close(d["k_star_layer"], torch.tensor([3.0, 5.0], dtype=torch.float64))
    assert (d["seq_len"], d["batch_size"]) == (T, 2)
    with pytest.raises(ValueError, match="share the batch size and length"):
        degeneration([layer0, layer1[:1]])


# -- lazy layers ---------------------------------------------------------------------------------------------------


def test_lazy_layers_by_rank_or_columns_and_the_share_of_heads():
    k = torch.tensor([[1.0, 1.5], [1.0, 1.75], [1.0, 3.0]])
    m = torch.tensor([[5.0, 5.0], [5.0, 1.5], [5.0, 5.0]])
    assert lazy_layers(k, m) == [0, 1]  # 1.5 is lazy (<=); layer 1's second head by its m* alone
    assert lazy_layers(k, m, max_columns=None) == [0]
    assert lazy_layers(k, m, max_rank=1.4, max_columns=None) == []
    assert lazy_layers(k, m, fraction=0.5) == [0, 1, 2]
    # 7 lazy heads of GPT-2 XL's 25 at fraction 0.28: 0.28 * 25 is 7.000000000000001 in floats
    seven = torch.tensor([[1.0] * 7 + [4.0] * 18])
    assert lazy_layers(seven, seven, fraction=0.28) == [0]
    assert lazy_layers(seven, seven, fraction=0.29) == []
    with pytest.raises(ConfigError, match=r"fraction=0 must be a share of a layer's heads in \(0, 1\]"):
        lazy_layers(k, m, fraction=0)
    with pytest.raises(ConfigError, match=r"max_rank=0.5 must be a number >= 1"):
        lazy_layers(k, m, max_rank=0.5)


# -- the model side ---------------------------------------------------------------------------------------------


def test_qk_grad_norms_split_the_fused_gradient_by_rows_per_attention_module():
    """GQA (4 query heads, 2 kv heads of 8): q rows 32, k rows 16, v rows 16 of a 32-wide input. With gradient rows
    of q = a, k = b, v = 100: |q| = a * sqrt(32 * 32) = 32a, |k| = b * sqrt(16 * 32) = b * sqrt(512)."""
    model = GPT(tiny(n_kv_head=2, block_pattern="A,F,A,F"))
    names = [name for name, _ in attention_modules(model)]
    assert names == ["blocks.0.attn", "blocks.0.attn_2", "blocks.1.attn", "blocks.1.attn_2"]
    for i, (_, m) in enumerate(attention_modules(model)):
        rows = torch.cat([torch.full((32,), i + 1.0), torch.full((16,), -2.0 * (i + 1)), torch.full((16,), 100.0)])
        m.qkv.weight.grad = rows[:, None].expand(64, 32).clone()
    attention_modules(model)[3][1].qkv.weight.grad = None
    q, k = qk_grad_norms(model)
    torch.testing.assert_close(q[:3], torch.tensor([32.0, 64.0, 96.0]))
    torch.testing.assert_close(k[:3], torch.tensor([2.0, 4.0, 6.0]) * math.sqrt(512))
    assert math.isnan(q[3]) and math.isnan(k[3])


ATTENTION_VARIANTS = {
    "gpt2": {},
    "llama_gqa_rope": LLAMA_STYLE,
    "attn_scale_by_layer": {"attn_scale_by_layer": True, "n_layer": 3},
}


@pytest.mark.parametrize("variant", sorted(ATTENTION_VARIANTS))
def test_explicit_attention_equals_the_fused_kernel_and_keeps_causal_probabilities(variant):
    cfg = tiny(**ATTENTION_VARIANTS[variant])
    model = GPT(cfg).eval()
    idx = torch.randint(0, V, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fused = model(idx)
        with attention_probabilities(model) as probs:
            explicit = model(idx)
    torch.testing.assert_close(explicit, fused)
    assert len(probs) == cfg.n_layer
    for p in probs:
        assert p.shape == (3, 4, 16, 16) and p.dtype == torch.float32 and not p.requires_grad
        torch.testing.assert_close(p.sum(-1), torch.ones(3, 4, 16))
        assert torch.equal(p.triu(1), torch.zeros_like(p))  # no query attends to a later key
        assert not torch.equal(p[:, 0], p[:, 1])  # heads differ
    for _, m in attention_modules(model):  # flags restored, nothing kept
        assert m.keep_probs is False and m.probs is None


def test_the_grouped_kv_heads_serve_consecutive_query_heads():
    """Key/value head j serves query heads 2j and 2j + 1 (SDPA's enable_gqa): making kv head 0's keys constant
    makes query heads 0 and 1 (and only they) attend uniformly in layer 0."""
    cfg = tiny(**ATTENTION_VARIANTS["llama_gqa_rope"], n_layer=1)
    model = GPT(cfg).eval()
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.qkv.weight[32:40] = 0.0  # rows of k head 0
    with torch.no_grad(), attention_probabilities(model) as probs:
        model(torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0)))
    causal_uniform = torch.ones(16, 16).tril() / torch.arange(1, 17)[:, None]
    for h in range(4):
        assert torch.allclose(probs[0][:, h], causal_uniform.expand(2, 16, 16), atol=1e-6) == (h < 2), h


def test_probabilities_can_be_reduced_layer_by_layer_and_flags_restore_after_an_error():
    model = GPT(tiny()).eval()
    idx = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), attention_probabilities(model) as full:
        model(idx)
    with torch.no_grad(), attention_probabilities(model, reduce=head_means) as reduced:
        model(idx)
    for p, (k, m) in zip(full, reduced, strict=True):
        assert torch.equal(k, approximate_rank(p).double().mean(0)) and torch.equal(m, mass_columns(p).double().mean(0))
    with pytest.raises(RuntimeError, match="boom"), attention_probabilities(model):
        raise RuntimeError("boom")
    assert all(m.keep_probs is False for _, m in attention_modules(model))


def test_the_default_path_compiles_without_a_graph_break():
    """keep_probs off is the fused path as it was: dynamo traces the whole model in one graph."""
    model = GPT(tiny()).eval()
    idx = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx), model(idx))
    assert all(m.probs is None for _, m in attention_modules(model))


# -- the report ---------------------------------------------------------------------------------------------------


def test_analyze_measures_a_known_layer_exactly_and_restores_every_mode():
    """Zeroing layer 1's query rows (weights and biases) makes every head attend uniformly over the past: row i is
    1/(i + 1) on keys 0..i, whatever the tokens, so its k* and m* are those of that matrix, computed here apart."""
    model = GPT(tiny(n_layer=2))
    with torch.no_grad():
        model.blocks[1].attn.qkv.weight[:32] = 0.0
        model.blocks[1].attn.qkv.bias[:32] = 0.0
    model.train()
    model.blocks[0].mlp.eval()  # a module someone left in eval mode stays so
    T = 16
    causal_uniform = (torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]).double()
    energy = torch.linalg.svdvals(causal_uniform).square()
    k_hand = int((energy.cumsum(0) / energy.sum() < 0.9 - 1e-6).sum()) + 1
    # column j holds sum_{i >= j} 1/(i + 1) = H_16 - H_j: 3.38, 2.38, 1.88, ...; 10 of them reach 14.4 of 16
    masses = (1.0 / torch.arange(1, T + 1, dtype=torch.float64)).flip(0).cumsum(0).flip(0)
    m_hand = int((masses.cumsum(0) / masses.sum() < 0.9 - 1e-6).sum()) + 1
    assert (k_hand, m_hand) == (3, 10)  # not a trivial value (1 or T) that a broken metric could also give
    idx = torch.randint(0, V, (4, T), generator=torch.Generator().manual_seed(0))
    result = analyze(model, idx, keep_probs=True)
    assert torch.equal(result["k_star"][1], torch.full((4,), float(k_hand), dtype=torch.float64))
    assert torch.equal(result["m_star"][1], torch.full((4,), float(m_hand), dtype=torch.float64))
    d = degeneration(result["probs"])
    assert torch.equal(result["k_star"], d["k_star"]) and torch.equal(result["m_star"], d["m_star"])
    assert model.training and model.blocks[1].attn.training and not model.blocks[0].mlp.training
    row = result["rows"][1]
    assert (row["layer"], row["name"], row["k_star_min"], row["k_star_max"]) == (1, "blocks.1.attn", 3.0, 3.0)
    assert result["lazy_layers"] == [] and not row["lazy"]
    # the bound is inclusive (layer 0, near uniform at init, may be lazy too at these bounds)
    assert 1 in analyze(model, idx, max_rank=3, max_columns=None)["lazy_layers"]
    assert 1 not in analyze(model, idx, max_rank=2.99, max_columns=None)["lazy_layers"]


def constructed_result() -> dict:
    k = torch.tensor([[12.5, 10.25, 14.0, 13.0], [1.0, 1.0, 1.5, 1.0], [1.0, 2.0, 1.0, 1.0]])
    m = torch.tensor([[100.0, 90.0, 110.0, 101.0], [3.0, 2.0, 2.5, 1.0], [4.0, 1.25, 3.0, 1.0]])
    names = ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]
    return summarize(k, m, threshold=0.9, seq_len=128, batch_size=8, names=names)


def test_format_table_is_aligned_and_marks_the_lazy_layers():
    """Layer 1: k* <= 1.5 on every head. Layer 2: head 1 has k* 2 but m* 1.25, so it is lazy by its columns."""
    expected = "\n".join(
        [
            "attention degeneration (Inheritune §2): 8 sequences x 128 tokens, threshold 0.9",
            "lazy head: mean k* <= 1.5 or mean m* <= 1.5; lazy layer: at least 100% of its heads lazy",
            "layer  module         k* mean  k* min  k* max  m* mean  m* min  m* max  lazy heads",
            "    0  blocks.0.attn    12.44   10.25   14.00   100.25   90.00  110.00         0/4",
            "    1  blocks.1.attn     1.12    1.00    1.50     2.12    1.00    3.00         4/4  lazy",
            "    2  blocks.2.attn     1.25    1.00    2.00     2.31    1.00    4.00         4/4  lazy",
            "lazy layers: 1, 2 (2 of 3)",
        ]
    )
    assert format_table(constructed_result()) == expected
    strict = summarize(
        torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 1.0]]), threshold=0.9, seq_len=4, batch_size=1, max_columns=None
    )
    assert (
        format_table(strict).splitlines()[1] == "lazy head: mean k* <= 1.5; lazy layer: at least 100% of its heads lazy"
    )
    assert format_table(strict).splitlines()[-1] == "lazy layers: none (0 of 1)"


def test_plots_write_pngs_of_the_right_layout(tmp_path):
    from matplotlib.image import imread

    result = constructed_result()
    heat = imread(plot_heatmaps(result, tmp_path / "heat.png"))
    assert heat.shape[1] > heat.shape[0] > 100 and heat.std() > 0.05  # two panels side by side, not blank
    probs = [torch.softmax(torch.randn(2, 4, 16, 16), -1).tril() for _ in range(3)]
    one = imread(plot_attention_maps(probs, [0], tmp_path / "one.png", heads=0))
    two = imread(plot_attention_maps(probs, [0, 2], tmp_path / "maps.png", heads=2))
    # rows: one per layer; columns: the head mean plus each head shown
    assert two.shape[0] == 2 * one.shape[0] and two.shape[1] == 3 * one.shape[1]
    image = heatmap_image(result["k_star"], "k*", [1])
    assert image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3 and image.std() > 10
    with pytest.raises(ConfigError, match=r"layers: 3 is not an attention layer index in \[0, 3\)"):
        plot_attention_maps(probs, [0, 3], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


# -- the monitor ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> DataConfig:
    """60 standard-library documents as .txt files, read byte by byte: prepared in a moment."""
    root = tmp_path_factory.mktemp("corpus")
    for i, doc in enumerate(islice(embedded_documents(), 60)):
        (root / f"doc{i:03d}.txt").write_text(doc.text[:1500], encoding="utf-8")
    return DataConfig(
        name="analysis",
        source="local",
        path=str(root),
        val_fraction=0.2,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        num_proc=1,
    )


def run_config(data: DataConfig) -> RunConfig:
    """6 steps of 2 micro-batches (4 x 64 tokens each); dropout on, so any random number the monitor drew, or any
    dropout it left on or off, would change the losses. Weights drawn at std 0.2, so that attention (and k*, m*)
    depends on the tokens: measured on other windows, the values would differ."""
    model = ModelConfig.preset("gpt2_tiny", n_layer=2, n_head=2, d_model=32, block_size=64, dropout=0.1, init_std=0.2)
    return RunConfig(
        model=model,
        data=data,
        tokenizer=TokenizerConfig(name="bytes", vocab_size=257),
        scheduler=SchedulerConfig(warmup_steps=2),
        train=TrainConfig(max_steps=6, batch_size=8, micro_batch_size=4, val_every=6, val_tokens=1024, log_every=3),
        trainer=TrainerConfig(
            accelerator="cpu",
            precision="32-true",
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        ),
    )


class Losses(L.Callback):
    """Every micro-batch's loss, the first validation windows at the end, and the layer-0 q/k gradient rows'
    norms before each update (computed here by slicing, apart from `qk_grad_norms`)."""

    def __init__(self):
        self.losses, self.grads = [], {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        g = pl_module.model.blocks[0].attn.qkv.weight.grad
        self.grads[trainer.global_step] = (g[:32].norm().item(), g[32:64].norm().item())

    def on_train_end(self, trainer, pl_module):
        self.windows = next(iter(trainer.datamodule.val_dataloader()))[:2]


def test_monitor_leaves_training_bit_identical_and_logs_scalars_and_images(tmp_path, corpus):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = run_config(corpus)
    plain, watched = Losses(), Losses()
    a = fit(run, tmp_path / "plain", callbacks=[*default_callbacks(tmp_path / "plain"), plain])
    monitor = AttentionMonitor(every_n_steps=2, batch_size=2)
    b = fit(run, tmp_path / "watched", callbacks=[watched, monitor, *default_callbacks(tmp_path / "watched")])
    assert len(plain.losses) == 12 and torch.equal(torch.stack(plain.losses), torch.stack(watched.losses))
    assert all(torch.equal(v, b.module.model.state_dict()[k]) for k, v in a.module.model.state_dict().items())
    assert a.val_loss == b.val_loss

    acc = EventAccumulator(str(tmp_path / "watched" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    for key in ("attn/k_star/layer_0", "attn/k_star/layer_1", "attn/m_star/layer_1", "attn/lazy_layers"):
        assert [e.step for e in acc.Scalars(key)] == [0, 2, 4, 6], key  # at start, then after steps 2, 4, 6: once each
    for key in ("attn/q_grad_norm/layer_0", "attn/k_grad_norm/layer_1"):
        assert [e.step for e in acc.Scalars(key)] == [0, 2, 4], key  # the gradients at those weights
    for key in ("attn/k_star", "attn/m_star"):
        images = acc.Images(key)
        assert [e.step for e in images] == [0, 2, 4, 6] and images[0].width > images[0].height > 50
    # the last measurement is the final model's on the first two validation windows' inputs
    final = analyze(b.module.model, watched.windows[:, :-1])
    for i, row in enumerate(final["rows"]):
        assert acc.Scalars(f"attn/k_star/layer_{i}")[-1].value == pytest.approx(row["k_star_mean"], abs=1e-6)
        assert acc.Scalars(f"attn/m_star/layer_{i}")[-1].value == pytest.approx(row["m_star_mean"], abs=1e-6)
    assert torch.equal(monitor.last["k_star"], final["k_star"]) and monitor.last["batch_size"] == 2
    for step in (0, 2, 4):
        q, k = watched.grads[step]
        assert acc.Scalars("attn/q_grad_norm/layer_0")[step // 2].value == pytest.approx(q, rel=1e-6)
        assert acc.Scalars("attn/k_grad_norm/layer_0")[step // 2].value == pytest.approx(k, rel=1e-6)


def test_monitor_config_composes_and_bad_settings_name_the_field():
    cfg = compose(["callbacks=with_attention_monitor"])
    assert set(OmegaConf.to_container(compose([]).callbacks)) < set(cfg.callbacks)  # the defaults, plus the monitor
    items = OmegaConf.to_container(cfg.callbacks, resolve=True)
    assert check_hydra_sections({"callbacks": items}) == []
    monitor = instantiate(cfg.callbacks.attention)
    assert isinstance(monitor, AttentionMonitor) and monitor.config == AttentionMonitorConfig()
    bad = {"every_n_steps": 0, "threshold": 2, "max_columns": 0.5}
    assert AttentionMonitorConfig.problems("callbacks.attention", bad) == [
        "callbacks.attention.every_n_steps=0 must be an integer >= 1",
        "callbacks.attention.threshold=2 must be a share in (0, 1], e.g. 0.9 (the paper's 90%)",
        "callbacks.attention.max_columns=0.5 must be a number >= 1 (k* and m* are at least 1), e.g. 1.5",
    ]
    assert AttentionMonitorConfig.problems("callbacks.attention", {"every": 5}) == [
        "callbacks.attention.every is not a setting; use every_n_steps, batch_size, threshold, max_rank, max_columns, "
        "fraction, images"
    ]
    with pytest.raises(ConfigError, match=r"AttentionMonitor\.batch_size=0 must be an integer >= 1"):
        AttentionMonitor(batch_size=0)
