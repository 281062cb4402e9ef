"""Weight surgery (lm_lab.inherit.surgery) on tiny state dicts, and the inits that use it (start_weights, fit)."""

import logging
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import pytest
import torch

from lm_lab.checkpoint import load_model, start_weights
from lm_lab.config import InitConfig, RunConfig, TrainConfig
from lm_lab.data.config import DataConfig
from lm_lab.data.tokenizers import TokenizerConfig
from lm_lab.errors import ConfigError
from lm_lab.inherit.surgery import (
    MODULES,
    block_parts,
    every_other,
    half_width,
    half_width_config,
    hybrid_stack,
    inherit,
    stack,
)
from lm_lab.models import GPT, ModelConfig
from lm_lab.module import LMModule
from lm_lab.optim import OptimizerConfig, SchedulerConfig
from lm_lab.results import Results
from lm_lab.train import default_callbacks, fit
from tests.test_fit import QUIET

GPT2 = ModelConfig(name="gpt2", n_layer=4, n_head=4, d_model=32, block_size=16, vocab_size=97)
# LLaMA-style: RMSNorm, SwiGLU, RoPE, no biases, grouped-query attention (4 query heads, 2 key/value heads), untied
LLAMA = ModelConfig(
    name="llama",
    n_layer=4,
    n_head=4,
    n_kv_head=2,
    d_model=32,
    d_ff=48,
    block_size=16,
    vocab_size=97,
    norm="rmsnorm",
    mlp="swiglu",
    positions="rope",
    bias=False,
    tie_embeddings=False,
)
ARCHS = {"gpt2": GPT2, "llama": LLAMA}
# the sub-modules of an `A,F` block each `modules` choice inherits, by hand (Inheritune §4.2, Table 3)
CHOSEN = {
    "attn_mlp_ln": {"ln_1", "attn", "ln_2", "mlp"},
    "attn_mlp": {"attn", "mlp"},
    "attn": {"ln_1", "attn"},
    "mlp_ln": {"ln_2", "mlp"},
}


def trained(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """A state dict where every tensor (norm gains and biases too) is random, unlike any fresh init."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():  # a tied head is the embedding's parameter: still tied
            p.normal_()
    return model.state_dict()


def fresh(cfg: ModelConfig, seed: int = 123) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return GPT(cfg).state_dict()


def loaded(cfg: ModelConfig, state: dict[str, torch.Tensor], seed: int = 123) -> GPT:
    """`state` loaded the way fit loads it: LMModule.start_from into a model freshly built from `seed`."""
    module = LMModule(cfg, OptimizerConfig(), SchedulerConfig(warmup_steps=0), max_steps=1)
    module.start_from(state)
    torch.manual_seed(seed)
    module.configure_model()
    return module.model


def block(key: str) -> tuple[int, str] | None:
    """`blocks.3.attn.qkv.weight` -> (3, 'attn'); None outside the blocks."""
    parts = key.split(".")
    return (int(parts[1]), parts[2]) if parts[0] == "blocks" else None


def tokens(cfg: ModelConfig) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (2, cfg.block_size), generator=torch.Generator().manual_seed(1))


# -- inherit ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_inheriting_every_layer_reproduces_the_reference_exactly(arch):
    cfg = ARCHS[arch]
    ref = trained(cfg, 0)
    out = inherit(ref, cfg, cfg)
    assert out.keys() == ref.keys()  # embeddings, positions, final norm and head too (the documented deviation)
    reference = GPT(cfg).eval()
    reference.load_state_dict(ref)
    x = tokens(cfg)
    assert torch.equal(loaded(cfg, out).eval()(x), reference(x))


@pytest.mark.parametrize("modules", MODULES)
@pytest.mark.parametrize("arch", ARCHS)
def test_inheriting_n_layers_copies_exactly_the_chosen_sub_modules(arch, modules):
    ref_cfg = ARCHS[arch]
    cfg = replace(ref_cfg, n_layer=2)
    ref = trained(ref_cfg, 0)
    out = inherit(ref, ref_cfg, cfg, modules=modules)
    model, init = loaded(cfg, out).state_dict(), fresh(cfg)
    copied = {k for k in init if block(k) is None or block(k)[1] in CHOSEN[modules]}
    assert out.keys() == copied
    for key in init:
        if key in copied:
            assert torch.equal(model[key], ref[key]), key
        else:  # left at the fresh init of this seed (and the reference's differs)
            assert torch.equal(model[key], init[key]) and not torch.equal(model[key], ref[key]), key
    if cfg.tie_embeddings:
        m = loaded(cfg, out)
        assert m.lm_head.weight is m.wte.weight


def test_growth_takes_the_first_blocks_from_the_trained_target_and_the_next_from_the_reference():
    ref_cfg, small_cfg, cfg = LLAMA, replace(LLAMA, n_layer=2), replace(LLAMA, n_layer=3)
    ref, small = trained(ref_cfg, 0), trained(small_cfg, 1)
    out = inherit(small, small_cfg, cfg, reference=(ref, ref_cfg))
    assert out.keys() == fresh(cfg).keys()
    for key, value in out.items():
        source = ref if block(key) is not None and block(key)[0] == 2 else small  # embeddings, head: the target's
        assert torch.equal(value, source[key]), key
    # `modules` applies to the new blocks only: the trained ones continue whole
    attn = inherit(small, small_cfg, cfg, modules="attn", reference=(ref, ref_cfg))
    assert {k for k in attn if block(k) and block(k)[0] == 2} == {
        k for k in ref if k.startswith(("blocks.2.attn", "blocks.2.ln_1"))
    }
    assert {k for k in attn if not block(k) or block(k)[0] < 2} == {k for k in small}
    with pytest.raises(ConfigError, match=r"growing needs 2 < model.n_layer <= 4"):
        inherit(small, small_cfg, replace(LLAMA, n_layer=5), reference=(ref, ref_cfg))
    with pytest.raises(ConfigError, match=r"growing needs 2 < model.n_layer <= 4"):
        inherit(small, small_cfg, small_cfg, reference=(ref, ref_cfg))


def test_inherit_refuses_other_shapes_than_depth_in_one_line():
    ref = trained(GPT2, 0)
    for target, expected in [
        (replace(GPT2, n_layer=5), "model.n_layer=5 exceeds the reference's 4 layers"),
        (replace(GPT2, n_layer=2, d_model=64), "model.d_model=64 vs 32, target vs source"),
        (replace(GPT2, n_layer=2, n_head=2, n_kv_head=2), "model.n_head=2 vs 4; model.n_kv_head=2 vs 4"),
        (replace(GPT2, n_layer=2, vocab_size=200), "model.padded_vocab_size=256 vs 128"),
        (replace(GPT2, n_layer=2, norm="rmsnorm"), "model.norm='rmsnorm' vs 'layernorm'"),
    ]:
        with pytest.raises(ConfigError, match=expected) as e:
            inherit(ref, GPT2, target)
        assert "\n" not in str(e.value)
    untied = replace(GPT2, tie_embeddings=False)
    with pytest.raises(ConfigError, match="model.tie_embeddings=True vs False"):
        inherit(trained(untied, 0), untied, replace(GPT2, n_layer=2))
    # a tied source into an untied target is fine: head and embedding start equal
    out = inherit(ref, GPT2, replace(untied, n_layer=2))
    assert torch.equal(out["lm_head.weight"], out["wte.weight"])


# -- stacking, hybrid stacking, every other -----------------------------------------------------------------------


def test_stacking_repeats_the_trained_blocks_and_hybrid_stacking_the_references_first_half():
    small_cfg, cfg = replace(GPT2, n_layer=2), GPT2
    small = trained(small_cfg, 1)
    out = stack(small, small_cfg, cfg)
    assert out.keys() == fresh(cfg).keys()
    for key, value in out.items():
        j = block(key)
        source = key if j is None else key.replace(f"blocks.{j[0]}.", f"blocks.{j[0] % 2}.", 1)
        assert torch.equal(value, small[source]), key
    assert torch.equal(out["blocks.3.mlp.fc.weight"], small["blocks.1.mlp.fc.weight"])
    with pytest.raises(ConfigError, match="model.n_layer=3 is not a multiple of the source's 2 layers; use 4"):
        stack(small, small_cfg, replace(GPT2, n_layer=3))
    ref = trained(GPT2, 0)  # hybrid: the reference's first n/2 = 2 blocks, stacked to 4
    hybrid = hybrid_stack(ref, GPT2, cfg)
    assert hybrid.keys() == ref.keys()
    for key, value in hybrid.items():
        j = block(key)
        source = key if j is None else key.replace(f"blocks.{j[0]}.", f"blocks.{j[0] % 2}.", 1)
        assert torch.equal(value, ref[source]), key
    with pytest.raises(ConfigError, match="model.n_layer=3 must be even"):
        hybrid_stack(ref, GPT2, replace(GPT2, n_layer=3))


def test_every_other_takes_the_teachers_even_blocks():
    teacher_cfg = replace(LLAMA, n_layer=5)
    teacher = trained(teacher_cfg, 0)
    out = every_other(teacher, teacher_cfg, replace(LLAMA, n_layer=3))
    assert torch.equal(out["blocks.1.attn.qkv.weight"], teacher["blocks.2.attn.qkv.weight"])
    assert torch.equal(out["blocks.2.mlp.gate.weight"], teacher["blocks.4.mlp.gate.weight"])
    for key, value in out.items():
        j = block(key)
        source = key if j is None else key.replace(f"blocks.{j[0]}.", f"blocks.{2 * j[0]}.", 1)
        assert torch.equal(value, teacher[source]), key
    with pytest.raises(ConfigError, match=r"needs the teacher's block 4, but it has 4 layers; use model.n_layer <= 2"):
        every_other(trained(LLAMA, 0), LLAMA, replace(LLAMA, n_layer=3))


def test_denseformer_weights_come_with_a_block_only_at_its_own_depth():
    cfg = ModelConfig(name="dense", n_layer=2, n_head=2, d_model=16, block_size=8, vocab_size=97, denseformer=True)
    small = trained(cfg, 1)
    stacked = stack(small, cfg, replace(cfg, n_layer=4))
    assert torch.equal(stacked["dwa.alphas.1"], small["dwa.alphas.1"])  # block 1 is the source's block 1
    assert "dwa.alphas.2" not in stacked and "dwa.alphas.3" not in stacked  # a repeated block: the identity init
    ref = trained(replace(cfg, n_layer=4), 0)
    assert torch.equal(inherit(ref, replace(cfg, n_layer=4), cfg)["dwa.alphas.1"], ref["dwa.alphas.1"])


def test_mixture_of_experts_blocks_count_as_mlp_and_halve_their_experts():
    cfg = ModelConfig(
        n_layer=2, n_head=2, d_model=16, block_size=8, vocab_size=97, block_pattern="A,E,F", moe_experts=2
    )
    # the sublayers: ln_1 attn, ln_2 moe, ln_3 mlp
    assert block_parts(cfg, "mlp_ln") == {"ln_2", "moe", "ln_3", "mlp"}
    assert block_parts(cfg, "attn") == {"ln_1", "attn"} and block_parts(cfg, "attn_mlp") == {"attn", "moe", "mlp"}
    ref = trained(cfg, 0)
    out = inherit(ref, cfg, replace(cfg, n_layer=1), modules="mlp_ln")
    assert "blocks.0.moe.experts.1.proj.weight" in out and "blocks.0.ln_1.weight" not in out
    half = half_width(ref, cfg, half_width_config(cfg))
    assert torch.equal(half["blocks.1.moe.router.weight"], ref["blocks.1.moe.router.weight"][:, :8])  # 2 experts
    assert torch.equal(half["blocks.1.moe.experts.1.fc.weight"], ref["blocks.1.moe.experts.1.fc.weight"][:32, :8])


# -- half width ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_half_width_keeps_the_first_half_of_every_hidden_dimension(arch):
    ref_cfg = ARCHS[arch]
    cfg = half_width_config(ref_cfg)
    # by hand: d 32 -> 16, 4 heads of 8 -> 2 (head_dim kept), d_ff halved; GQA: 2 key/value heads -> 1
    kv = 1 if arch == "llama" else 2
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_dim) == (4, 16, 2, kv, 8)
    assert cfg.d_ff == {"gpt2": 64, "llama": 24}[arch]
    ref = trained(ref_cfg, 0)
    out = half_width(ref, ref_cfg, cfg)
    assert out.keys() == ref.keys()
    qkv, w = out["blocks.1.attn.qkv.weight"], ref["blocks.1.attn.qkv.weight"]
    assert qkv.shape == (16 + 2 * 8 * kv, 16)
    assert torch.equal(qkv[0:8], w[0:8, :16]) and torch.equal(qkv[8:16], w[8:16, :16])  # query heads 0 and 1
    k_rows, v_rows = (32, 48) if arch == "llama" else (32, 64)  # where the reference's k and v rows start
    assert torch.equal(qkv[16 : 16 + 8 * kv], w[k_rows : k_rows + 8 * kv, :16])  # key heads 0 .. kv-1
    assert torch.equal(qkv[16 + 8 * kv :], w[v_rows : v_rows + 8 * kv, :16])  # value heads 0 .. kv-1
    assert torch.equal(out["blocks.1.attn.proj.weight"], ref["blocks.1.attn.proj.weight"][:16, :16])
    up = "mlp.fc" if arch == "gpt2" else "mlp.up"
    assert torch.equal(out[f"blocks.0.{up}.weight"], ref[f"blocks.0.{up}.weight"][: cfg.d_ff, :16])
    assert torch.equal(out["blocks.0.mlp.proj.weight"], ref["blocks.0.mlp.proj.weight"][:16, : cfg.d_ff])
    assert torch.equal(out["blocks.3.ln_2.weight"], ref["blocks.3.ln_2.weight"][:16])
    assert torch.equal(out["lm_head.weight"], ref["lm_head.weight"][:, :16])  # every vocabulary row
    if arch == "gpt2":
        assert torch.equal(out["wpe.weight"], ref["wpe.weight"][:, :16])
        assert torch.equal(out["blocks.2.attn.qkv.bias"][16:24], ref["blocks.2.attn.qkv.bias"][32:40])
    # a half-width model built from the state runs
    model = loaded(cfg, out).eval()
    x = tokens(cfg)
    assert model(x).shape == (2, 16, 128) and torch.isfinite(model(x)).all()


def test_half_width_refuses_odd_sizes_and_a_model_that_is_not_the_half_width_one():
    with pytest.raises(ConfigError, match="model.n_head=3 is odd"):
        half_width_config(ModelConfig(n_layer=2, n_head=3, d_model=24, block_size=8, vocab_size=97))
    with pytest.raises(ConfigError, match=r"model.n_kv_head=3 is odd \(and not 1\)"):
        half_width_config(ModelConfig(n_layer=2, n_head=6, n_kv_head=3, d_model=48, block_size=8, vocab_size=97))
    mqa = half_width_config(replace(LLAMA, n_kv_head=1))  # a single key/value head stays single
    assert (mqa.n_head, mqa.n_kv_head) == (2, 1)
    with pytest.raises(
        ConfigError,
        match=r"set model.n_layer=4 model.d_model=16 model.n_head=2 model.n_kv_head=2 model.d_ff=64 \(this model: .*d_ff=128\)",
    ):
        half_width(trained(GPT2, 0), GPT2, replace(GPT2, d_model=16, n_head=2, n_kv_head=2))  # d_ff not halved


# -- the inits: InitConfig, start_weights, LMModule ---------------------------------------------------------------


def save(path: Path, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> str:
    """The parts of a lab checkpoint `read_source` reads."""
    hyper = {"model": asdict(cfg)}
    ckpt = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "global_step": 1, "loops": {}}
    torch.save({**ckpt, "optimizer_states": [], "hyper_parameters": hyper}, path)
    return str(path)


def test_init_config_names_the_missing_field_and_the_fix():
    for kwargs, message in [
        ({"name": "inheritune"}, "init=inheritune needs init.reference=MODEL"),
        ({"name": "half_width"}, "init=half_width needs init.reference=MODEL"),
        ({"name": "stacking"}, "init=stacking needs init.path=CHECKPOINT"),
        ({"name": "stacking", "path": "a", "reference": "b"}, "give the model to stack as init.path"),
        ({"name": "every_other", "reference": "a", "path": "b"}, "init.path is not read by init=every_other"),
        ({"name": "inheritune", "reference": "a", "modules": "mlp"}, r"init.modules='mlp' is unknown; choose one"),
        ({"name": "hybrid_stacking", "reference": "a", "modules": "attn"}, "init.modules is for init=inheritune"),
    ]:
        with pytest.raises(ConfigError, match=message) as e:
            InitConfig(**kwargs)
        assert len(e.value.problems) == 1
    grow = InitConfig(name="inheritune", reference="ref", path="small", modules="attn")
    assert (grow.reference, grow.path, grow.modules) == ("ref", "small", "attn")


def test_start_weights_dispatches_each_surgery_and_logs_what_is_fresh(tmp_path, caplog):
    ref, small = trained(GPT2, 0), trained(replace(GPT2, n_layer=2), 1)
    ref_path, small_path = (
        save(tmp_path / "ref.ckpt", GPT2, ref),
        save(tmp_path / "s.ckpt", replace(GPT2, n_layer=2), small),
    )
    two, three, half = replace(GPT2, n_layer=2), replace(GPT2, n_layer=3), half_width_config(GPT2)
    cases = [
        (InitConfig(name="inheritune", reference=ref_path, modules="attn"), two, inherit(ref, GPT2, two, "attn")),
        (InitConfig(name="inheritune", reference=ref_path, path=small_path), three, inherit(small, two, three, reference=(ref, GPT2))),
        (InitConfig(name="stacking", path=small_path), GPT2, stack(small, two, GPT2)),
        (InitConfig(name="hybrid_stacking", reference=ref_path), GPT2, hybrid_stack(ref, GPT2, GPT2)),
        (InitConfig(name="half_width", reference=ref_path), half, half_width(ref, GPT2, half)),
        (InitConfig(name="every_other", reference=ref_path), two, every_other(ref, GPT2, two)),
    ]  # fmt: skip
    for init, cfg, expected in cases:
        got = start_weights(init, cfg)
        assert got.keys() == expected.keys() and all(torch.equal(got[k], v) for k, v in expected.items()), init.name
    # the count: per block of 12 tensors, ln_1's 2 and the attention's 4 inherited, ln_2's 2 and the MLP's 4 fresh;
    # the 5 outside the blocks (wte, wpe, ln_f's 2, the tied head) inherited: 2 * 6 + 5 = 17 and 2 * 6 = 12
    with caplog.at_level(logging.INFO, logger="lm_lab.checkpoint"):
        start_weights(cases[0][0], two)
    assert f"init=inheritune: starting from 17 tensors of {ref_path} and 12 fresh ones" in caplog.text
    with pytest.raises(
        ConfigError, match="must be the reference's half-width one: set model.n_layer=4 model.d_model=16"
    ):
        start_weights(InitConfig(name="half_width", reference=ref_path), two)
    with pytest.raises(ConfigError, match="not found; give a lab checkpoint"):
        start_weights(InitConfig(name="inheritune", reference=str(tmp_path / "nothing")), two)
    # init=weights without a map still needs every tensor; a map may now leave some out
    with pytest.raises(ConfigError, match=r"missing tensors: blocks\.2\.ln_1\.weight"):
        start_weights(InitConfig(name="weights", path=small_path), three)
    mapped = start_weights(
        InitConfig(name="weights", path=small_path, map=lambda s, a, b: {"wte.weight": s["wte.weight"]}), two
    )
    assert mapped.keys() == {"wte.weight"}
    with pytest.raises(ConfigError, match=r"unexpected tensors: blocks\.1\.ln_1\.weight"):
        start_weights(InitConfig(name="weights", path=small_path, map=lambda s, a, b: s), replace(GPT2, n_layer=1))


def test_start_from_refuses_unknown_tensors_and_mismatched_shapes():
    cfg = replace(GPT2, n_layer=1)
    with pytest.raises(ConfigError, match=r"tensors this model does not: blocks\.1\.ln_1\.weight"):
        loaded(cfg, {"blocks.1.ln_1.weight": torch.ones(32)})
    with pytest.raises(RuntimeError, match="size mismatch for wte.weight"):
        loaded(cfg, {"wte.weight": torch.ones(128, 16)})


# -- fit --------------------------------------------------------------------------------------------------------


class StartWeights(L.Callback):
    """The model's weights when the first training batch starts (step 0, before any update)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not hasattr(self, "weights"):
            self.step = trainer.global_step
            self.weights = {k: v.clone() for k, v in pl_module.model.state_dict().items()}


def test_fit_starts_a_two_layer_target_from_a_four_layer_runs_first_layers(tmp_path):
    corpus = tmp_path / "corpus"  # a few documents of bytes: nothing to learn or scan, the test stays fast
    corpus.mkdir()
    for i in range(12):
        (corpus / f"{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 8)
    train = TrainConfig(max_steps=2, batch_size=2, val_every=2, val_tokens=512, seq_len=16, log_every=1)
    ref_run = RunConfig(
        model=replace(GPT2, vocab_size=None),
        tokenizer=TokenizerConfig(name="bytes", vocab_size=257),
        data=DataConfig(
            name="tiny", source="local", path=str(corpus), val_fraction=0.3, cache_dir=str(tmp_path), num_proc=1
        ),
        scheduler=SchedulerConfig(warmup_steps=0),
        train=train,
        trainer=QUIET,
    )
    fit(ref_run, tmp_path / "ref")
    _, reference = load_model(tmp_path / "ref")
    probe = StartWeights()
    target = replace(ref_run, model=replace(ref_run.model, n_layer=2))
    init = InitConfig(name="inheritune", reference=str(tmp_path / "ref"), modules="mlp_ln")
    results = fit(target, tmp_path / "target", init=init, callbacks=[probe, *default_callbacks(tmp_path / "target")])
    ref, init = reference.state_dict(), fresh(results.module.model_config, seed=train.seed)  # the run's own init
    assert probe.step == 0 and probe.weights.keys() == init.keys()
    for key, value in probe.weights.items():
        inherited = block(key) is None or block(key)[1] in ("ln_2", "mlp")  # attention and ln_1: fresh
        assert torch.equal(value, ref[key] if inherited else init[key]), key
        assert not torch.equal(value, init[key] if inherited else ref[key]), key
    assert (results.init, results.init_path, results.steps) == ("inheritune", None, 2)
    assert Results.load(tmp_path / "target").init == "inheritune"
