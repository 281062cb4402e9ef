"""Optimizers as their papers define them: Hägele et al.'s AdamW decays no embedding (`decay_embeddings`), Muon
orthogonalises q, k and v as separate matrices, 8-bit AdamW keeps the embeddings' states in 32 bit."""

import io

import pytest
import torch
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

from lm_lab.config import RunConfig, compose
from lm_lab.errors import ConfigError
from lm_lab.models import GPT, ModelConfig
from lm_lab.optim import OptimizerConfig, SplitMuon, build_optimizer, param_groups
from lm_lab.optim.optimizers import embedding_ids, muon_split

TINY = ModelConfig(n_layer=2, n_head=2, d_model=32, block_size=16, vocab_size=97)
NS = ((3.4445, -4.7750, 2.0315), 5, 1e-7)  # torch.optim.Muon's default coefficients, steps and eps


def loss_of(model, seed=0):
    batch = torch.randint(0, 97, (4, 17), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())


def names_of(model, params):
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for p in params]


# -- decay_embeddings -----------------------------------------------------------------------------------------


def test_decay_embeddings_false_exempts_every_embedding_and_the_tied_head_true_keeps_todays_groups():
    model = GPT(TINY)
    assert model.lm_head.weight is model.wte.weight  # tied: the head is the embedding's tensor
    params = list(model.parameters())
    matrices = [n for n, p in model.named_parameters() if p.ndim >= 2 and n not in ("wte.weight", "wpe.weight")]
    decayed, exempt = param_groups(model, 0.1, decay_embeddings=False)
    assert names_of(model, decayed["params"]) == matrices and decayed["weight_decay"] == 0.1
    assert exempt["weight_decay"] == 0.0 and any(p is model.lm_head.weight for p in exempt["params"])
    assert set(names_of(model, exempt["params"])) == {"wte.weight", "wpe.weight"} | {
        n for n, p in model.named_parameters() if p.ndim < 2
    }
    # True (the default) is the rule as it was: every 2-D tensor decayed, in the model's order
    for groups in (param_groups(model, 0.1), param_groups(model, 0.1, decay_embeddings=True)):
        assert [id(p) for p in groups[0]["params"]] == [id(p) for p in params if p.ndim >= 2]
        assert [id(p) for p in groups[1]["params"]] == [id(p) for p in params if p.ndim < 2]
    # Muon's AdamW part (a list of parameters): the embeddings' ids say which of them are embeddings
    _, rest = muon_split(model)
    decayed, exempt = param_groups(rest, 0.1, False, embedding_ids(model))
    assert decayed["params"] == [] and len(exempt["params"]) == len(rest)
    decayed, exempt = param_groups(rest, 0.1)
    assert names_of(model, decayed["params"]) == ["wte.weight", "wpe.weight"]
    with pytest.raises(ValueError, match="needs their embeddings' ids"):
        param_groups(rest, 0.1, decay_embeddings=False)


@pytest.mark.parametrize("name", ["adamw", "muon"])
@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_a_zero_gradient_step_decays_exactly_the_chosen_tensors(name, decay_embeddings):
    """With zero gradients AdamW's and Muon's updates are 0, so one step is the decay alone: theta (1 - lr wd)."""
    model = GPT(TINY)
    cfg = OptimizerConfig(name=name, lr=0.1, weight_decay=0.5, decay_embeddings=decay_embeddings)
    opt = build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    embeddings = ("wte.weight", "wpe.weight")
    for n, p in model.named_parameters():
        decays = p.ndim >= 2 and (decay_embeddings or n not in embeddings)
        torch.testing.assert_close(p, before[n] * (1 - 0.05) if decays else before[n], rtol=0, atol=1e-7, msg=n)


def test_decay_embeddings_must_be_a_bool():
    with pytest.raises(ConfigError, match=r"optimizer.decay_embeddings='no' must be true or false"):
        OptimizerConfig(decay_embeddings="no")


def test_the_hagele_recipe_decays_no_embedding_and_the_default_config_does():
    for overrides, expected in (
        ([], True),
        (["experiment=smoke"], True),
        (["+recipe=hagele"], False),
        (["experiment=cosine_baseline"], False),
        (["experiment=llama", "optimizer=muon"], False),
    ):
        cfg = compose(overrides)
        assert cfg.optimizer.decay_embeddings is expected, overrides
    assert RunConfig.from_dict({"optimizer": {"decay_embeddings": False}}).optimizer.decay_embeddings is False


# -- Muon: q, k and v apart -----------------------------------------------------------------------------------


def muon_kwargs(adjust_lr_fn="match_rms_adamw"):
    return {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.95, "adjust_lr_fn": adjust_lr_fn}


def test_split_muon_without_splits_is_torch_muon_bit_for_bit():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(48, 32)), torch.nn.Parameter(torch.randn(32, 16))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours, torchs = SplitMuon(a, **muon_kwargs()), torch.optim.Muon(b, **muon_kwargs())
    for _ in range(3):
        for p, q in zip(a, b, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ours.step()
        torchs.step()
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("adjust_lr_fn", ["match_rms_adamw", "original"])
def test_split_muon_is_torch_muon_on_each_row_block_as_its_own_matrix(adjust_lr_fn):
    """Blocks of 40, 8 and 16 rows of a 64 x 32 weight: each block gets its own Newton-Schulz and its own shape's
    LR adjustment (40 x 32 and 8 x 32 differ under both rules), momentum carried over 3 steps."""
    torch.manual_seed(0)
    sizes = (40, 8, 16)
    fused = torch.nn.Parameter(torch.randn(64, 32))
    blocks = [torch.nn.Parameter(b.detach().clone()) for b in fused.split(sizes)]
    plain = torch.nn.Parameter(fused.detach().clone())
    ours = SplitMuon([fused], splits={fused: sizes}, **muon_kwargs(adjust_lr_fn))
    reference = torch.optim.Muon(blocks, **muon_kwargs(adjust_lr_fn))  # q, k, v as separate matrices
    unsplit = torch.optim.Muon([plain], **muon_kwargs(adjust_lr_fn))
    for _ in range(3):
        fused.grad = torch.randn_like(fused)
        plain.grad = fused.grad.clone()
        for b, g in zip(blocks, fused.grad.split(sizes), strict=True):
            b.grad = g.clone()
        for opt in (ours, reference, unsplit):
            opt.step()
    torch.testing.assert_close(fused.detach(), torch.cat([b.detach() for b in blocks]), rtol=0, atol=1e-7)
    assert (fused - plain).abs().max() > 1e-3  # the fused orthogonalisation is another update
    with pytest.raises(ValueError, match="do not add up"):
        SplitMuon([fused], splits={fused: (40, 8)})


@pytest.mark.parametrize("n_kv_head", [2, 1])  # 1: grouped-query attention, k and v narrower than q
def test_muon_orthogonalises_the_models_q_k_and_v_apart(n_kv_head):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_kv_head=n_kv_head, d_model=32, block_size=16, vocab_size=97))
    opt = build_optimizer(model, OptimizerConfig(name="muon", lr=0.02, weight_decay=0.1, momentum=0.95))
    attentions = [m for m in model.modules() if hasattr(m, "qkv_sizes")]
    assert len(attentions) == 2 and all(m.qkv_sizes == (32, 16 * n_kv_head, 16 * n_kv_head) for m in attentions)
    assert {id(m.qkv.weight): m.qkv_sizes for m in attentions} == opt.muon.splits
    loss_of(model).backward()
    weight = attentions[0].qkv.weight
    before, grad = weight.detach().clone(), weight.grad.clone()
    opt.step()
    update = before * (1 - 0.02 * 0.1) - weight.detach()  # the decay undone: adjusted lr x O
    nesterov = grad.lerp(torch.zeros_like(grad).lerp(grad, 0.05), 0.95)  # from zero momentum, torch's form
    fused = _zeropower_via_newtonschulz(nesterov, *NS).float()
    sizes = attentions[0].qkv_sizes
    for u, g, f in zip(update.split(sizes), nesterov.split(sizes), fused.split(sizes), strict=True):  # q, k, v
        lr = _adjust_lr(0.02, "match_rms_adamw", u.shape)  # the block's shape: 0.2 sqrt(32), not sqrt(96)'s
        assert lr != _adjust_lr(0.02, "match_rms_adamw", weight.shape)
        own = _zeropower_via_newtonschulz(g, *NS).float()
        torch.testing.assert_close(u / lr, own, rtol=1e-4, atol=1e-5)
        assert (u / lr - f).abs().max() > 1e-2  # not the block of the fused matrix's orthogonalisation
        assert 0.5 < torch.linalg.matrix_norm(u / lr, ord=2) < 1.5  # Newton-Schulz's top singular value


def test_muon_restores_from_a_weights_only_checkpoint_and_continues_exactly():
    torch.manual_seed(0)
    a, c = GPT(TINY), GPT(TINY)
    cfg = OptimizerConfig(name="muon", lr=0.02)
    opt = build_optimizer(a, cfg)
    for seed in range(2):
        loss_of(a, seed).backward()
        opt.step()
        opt.zero_grad()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    c.load_state_dict(a.state_dict())
    restored = build_optimizer(c, cfg)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert sorted(restored.muon.splits.values()) == sorted(opt.muon.splits.values()) == [(32, 32, 32)] * 2
    for model, o in ((a, opt), (c, restored)):
        loss_of(model, 2).backward()
        o.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


# -- 8-bit AdamW ----------------------------------------------------------------------------------------------


@pytest.fixture
def bnb_manager():
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install -e .[gpu])")
    manager = bnb.optim.GlobalOptimManager.get_instance()
    manager.initialize()  # a process-wide singleton: start and leave it empty
    yield manager
    manager.initialize()


def test_adamw8bit_keeps_the_embeddings_states_in_32bit(bnb_manager):
    model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=64, block_size=16, vocab_size=97))  # wte: 128 x 64
    cfg = OptimizerConfig(name="adamw8bit")
    build_optimizer(model, cfg)
    opt = build_optimizer(model, cfg)  # a second build (a resume's fresh copy) registers nothing twice
    assert bnb_manager.module_weight_config_triple == [
        (model.wte, "weight", {"optim_bits": 32}),
        (model.wpe, "weight", {"optim_bits": 32}),
    ]
    loss_of(model).backward()
    try:
        opt.step()
    except (RuntimeError, NotImplementedError) as e:  # bitsandbytes builds without a CPU backend
        if torch.cuda.is_available():
            raise
        pytest.skip(f"this bitsandbytes cannot step on CPU ({type(e).__name__}); the override is registered")
    # matrices of at least bitsandbytes' min_8bit_size (4096) elements: 8-bit, but the (tied) embedding's 32-bit
    assert opt.state[model.wte.weight]["state1"].dtype == torch.float32 and model.lm_head.weight is model.wte.weight
    big = [n for n, p in model.named_parameters() if p.ndim == 2 and p.numel() >= 4096 and n != "wte.weight"]
    assert big and all(opt.state[model.get_parameter(n)]["state1"].dtype == torch.uint8 for n in big)


def test_muon_leaves_an_untied_head_to_adamw():
    """Jordan et al.'s Muon is for hidden matrices: the output head goes to AdamW whether tied or not."""
    model = GPT(ModelConfig(n_layer=2, n_head=2, d_model=32, block_size=16, vocab_size=97, tie_embeddings=False))
    hidden, rest = muon_split(model)
    assert model.lm_head.weight is not model.wte.weight
    assert any(p is model.lm_head.weight for p in rest) and not any(p is model.lm_head.weight for p in hidden)
    assert {id(p) for p in hidden} == {id(p) for n, p in model.named_parameters() if p.ndim == 2 and "blocks." in n}
