"""NABLA inside the model (issue 11 §1): the block-sparse kernel equals dense attention restricted to the
same mask, forward and backward, at P = 1 and at real sparsity; a Video Lite 10 s-shaped call fits in
2 GiB on CPU; when NABLA is on follows report §6.3."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.attention import (BLOCK, NablaParams, block_sparse_attention, expand_block_mask, nabla_block_mask,
                                nabla_enabled, sparse_attention)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


def qkv(B=2, H=2, T=3, side=16, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = T * side * side
    return [torch.randn(B, H, S, D, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)], (T, side, side)


@pytest.mark.parametrize("P, window", [(1.0, (11, 3, 3)), (0.3, (1, 1, 1)), (0.0, (3, 1, 1))])
def test_block_sparse_equals_dense_attention_on_the_same_mask(P, window):
    (q, k, v), grid = qkv()
    mask = nabla_block_mask(q.detach(), k.detach(), grid, NablaParams(P, *window))
    if P == 1.0:
        assert mask.all()
    else:
        assert 0.05 < mask.float().mean() < 0.7  # real sparsity, rows of different lengths
        assert len(set(mask.sum(-1).flatten().tolist())) > 1
    out = block_sparse_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=expand_block_mask(mask))
    assert (out - ref).abs().max() <= 1e-5
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        assert (a - b).abs().max() <= 1e-5


def test_block_sparse_in_fp32_and_with_a_mask_shared_over_the_batch():
    (q, k, v), grid = qkv(B=3, H=2, T=2, D=8)
    q, k, v = (t.detach().float().requires_grad_() for t in (q, k, v))
    mask = torch.rand(1, 2, q.shape[2] // BLOCK, q.shape[2] // BLOCK, generator=torch.Generator().manual_seed(1)) < 0.3
    mask |= torch.eye(mask.shape[-1], dtype=torch.bool)
    out = sparse_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=expand_block_mask(mask))
    assert out.dtype == torch.float32 and (out - ref).abs().max() <= 1e-5
    out.sum().backward()
    dq = q.grad.clone()
    q.grad = None
    ref.sum().backward()
    assert (dq - q.grad).abs().max() <= 1e-5


def test_the_model_routes_nabla_to_the_sparse_kernel(monkeypatch):
    """No S x S mask inside the model: the token-mask expansion is never called on the NABLA path."""
    import training.attention as attention
    from training.configs import TINY
    from training.model import CrossDiT, ModelInputs

    def forbidden(*_):
        raise AssertionError("the model expanded the block mask to tokens")

    monkeypatch.setattr(attention, "expand_block_mask", forbidden)
    model = CrossDiT(TINY)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    g = torch.Generator().manual_seed(0)
    inp = ModelInputs(torch.randn(1, 2, 32, 32, 16, generator=g), torch.tensor([0.4]),
                      torch.randn(1, 5, 48, generator=g), torch.ones(1, 5, dtype=torch.bool), torch.randn(1, 24, generator=g))
    dense = model(inp)
    assert torch.allclose(model(inp, nabla=NablaParams(P=1.0)), dense, atol=1e-5)
    sparse = model(inp, nabla=NablaParams(P=0.3, wT=1, wH=1, wW=1))
    assert not model.visual_blocks[0].self_attention.last_block_mask.all()
    sparse.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


MEMORY_PROBE = textwrap.dedent("""
    import resource, torch
    torch.set_num_threads(1)
    from training.attention import NablaParams, nabla_attention
    T, Ht, Wt, D = 61, 32, 48, 8   # Video Lite 10 s at 512x768: 61 latent frames of 32x48 tokens; 1 head
    S = T * Ht * Wt
    g = torch.Generator().manual_seed(0)
    tiles = torch.randn(1, 1, T, Ht // 8, Wt // 8, D, generator=g) * 4  # block structure, as real maps have
    def field():
        x = tiles.repeat_interleave(8, 3).repeat_interleave(8, 4)
        x = x.reshape(1, 1, T, Ht // 8, 8, Wt // 8, 8, D).permute(0, 1, 2, 3, 5, 4, 6, 7).reshape(1, 1, S, D)
        return (x + torch.randn(x.shape, generator=g)).requires_grad_()
    q, k, v = field(), field(), torch.randn(1, 1, S, D, generator=g, requires_grad=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out, mask = nabla_attention(q, k, v, (T, Ht, Wt), NablaParams(P=0.9, wT=11, wH=3, wW=3))
    out.sum().backward()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB
    print(S, mask.float().mean().item(), grown * 1024)
""")


def test_video_lite_10s_shaped_call_fits_in_2_gib():
    """S = 93,696 tokens: the dense token mask alone would be 8.2 GiB (bool), the fp32 scores 33 GiB.
    Measured in a fresh process (peak RSS growth over the forward and backward)."""
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    S, density, grown = done.stdout.split()
    assert int(S) == 93_696 and 0 < float(density) < 0.2
    assert int(grown) < 2 * 2**30, f"peak RSS grew by {int(grown) / 2**30:.2f} GiB"


def test_nabla_is_on_where_the_report_uses_it():
    # Video Lite: 512 px up to 5 s dense, 10 s sparse; 1024 px video (Pro HR) sparse at 5 s; images dense
    assert not nabla_enabled("report", 31, 512, 768)
    assert nabla_enabled("report", 61, 512, 768)
    assert nabla_enabled("report", 31, 768, 1280) and nabla_enabled("report", 31, 1408, 640)
    assert not nabla_enabled("report", 1, 1024, 1024)
    assert nabla_enabled("always", 2, 128, 128) and not nabla_enabled("never", 61, 1024, 1024)
    with pytest.raises(ValueError):
        nabla_enabled("sometimes", 61, 512, 512)
    assert NablaParams() == NablaParams(P=0.9, wT=11, wH=3, wW=3)  # the Lite 10 s config
