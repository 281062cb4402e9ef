"""The CUDA paths: bf16 autocast, fused AdamW and flash-attn. Skipped on machines without a GPU."""

import pytest
import torch
import torch.nn.functional as F

from lm_lab.models import GPT, ModelConfig, next_token_loss
from lm_lab.models.layers import ATTENTION, causal_attention, flash_attn_func
from lm_lab.optim import OptimizerConfig, build_optimizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def assert_learns_in_bf16(model, idx) -> None:
    """20 fused-AdamW steps in bf16 autocast on one batch halve its loss."""
    opt = build_optimizer(model, OptimizerConfig(lr=3e-3), fused=True)
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = next_token_loss(model, idx).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bf16_autocast_matches_fp32_and_trains_with_fused_adamw():
    cfg = ModelConfig(n_layer=2, n_head=4, d_model=128, block_size=64, vocab_size=512)
    model = GPT(cfg).cuda()
    idx = torch.randint(0, 512, (4, 65), device="cuda")
    with torch.no_grad():
        ref = next_token_loss(model, idx).total
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = next_token_loss(model, idx).total
    assert abs(low.item() - ref.item()) < 0.02
    assert_learns_in_bf16(model, idx)


@pytest.mark.skipif(flash_attn_func is None, reason="flash-attn not installed")
def test_flash_attn_matches_sdpa():
    q, k, v = (torch.randn(2, 4, 64, 32, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flash = causal_attention(q, k, v, dropout_p=0.0)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(flash, sdpa, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "variant",
    [
        dict(norm="rmsnorm", mlp="swiglu", positions="rope", bias=False, n_kv_head=2, tie_embeddings=False),
        dict(block_pattern="A,E,F,E", moe_experts=4, moe_expert_mlp="swiglu", denseformer=True),
    ],
    ids=["llama_gqa", "moe_denseformer"],
)
def test_variants_train_in_bf16_with_every_attention_kernel(variant):
    """GQA and RoPE through flash-attn (when installed) and SDPA agree in bf16, and the variants learn."""
    cfg = ModelConfig(n_layer=2, n_head=4, d_model=128, block_size=64, vocab_size=512, **variant)
    torch.manual_seed(0)
    model = GPT(cfg).cuda()
    idx = torch.randint(0, 512, (4, 65), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = next_token_loss(model, idx).lm
        for impl in ("auto", "sdpa"):
            for m in model.modules():
                if hasattr(m, "attend"):
                    m.attend = ATTENTION[impl]
            assert abs(next_token_loss(model, idx).lm.item() - ref.item()) < 0.02, impl
    assert_learns_in_bf16(model, idx)
