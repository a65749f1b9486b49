"""Attention for the visual self-attention of CrossDiT: dense SDPA, and NABLA (report §5; NABLA paper
arXiv 2507.13546) — block-sparse attention whose mask is chosen per call and per head:

1. tokens are reordered so every run of 64 tokens is one 8x8 spatial tile of one frame
   (``fractal_flatten``);
2. Q and K are averaged over those 64-token blocks, ``softmax(qa·kaᵀ/√D)`` over key blocks, and each
   query block keeps the smallest set of key blocks holding at least mass ``P`` (per-head CDF
   threshold);
3. the result is OR-ed with a sliding-tile (STA) mask of window ``(wT, wH, wW)`` tiles, which always
   keeps the diagonal, so no row is empty.

On CPU the block mask is expanded to tokens and given to SDPA (FlexAttention has no CPU backward); on a
GPU the same block mask can drive FlexAttention (``flex_nabla_attention``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TILE = 8  # 8x8 spatial tile
BLOCK = TILE * TILE  # 64 tokens per attention block


@dataclass(frozen=True)
class NablaParams:
    """NABLA settings. The report's Video Lite 10 s config: P=0.9, windows (11, 3, 3)."""

    P: float = 0.9
    wT: int = 11
    wH: int = 3
    wW: int = 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.P <= 1.0:
            raise ValueError(f"NABLA P must be in [0, 1], got {self.P}")


def check_nabla_geometry(T: int, H: int, W: int) -> None:
    """``H`` and ``W`` are token-grid sizes (latent size / 2)."""
    if H % TILE or W % TILE:
        raise ValueError(f"NABLA needs a token grid divisible by {TILE}; got {H}x{W} (pixels divisible by 128)")


def fractal_flatten(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, W, *rest] -> [B, T*H*W, *rest], ordered frame -> tile row -> tile col -> in-tile row-major."""
    B, T, H, W = x.shape[:4]
    rest = x.shape[4:]
    x = x.reshape(B, T, H // TILE, TILE, W // TILE, TILE, *rest)
    x = x.permute(0, 1, 2, 4, 3, 5, *range(6, 6 + len(rest)))
    return x.reshape(B, T * H * W, *rest)


def fractal_unflatten(x: torch.Tensor, T: int, H: int, W: int) -> torch.Tensor:
    """Inverse of ``fractal_flatten``."""
    B = x.shape[0]
    rest = x.shape[2:]
    x = x.reshape(B, T, H // TILE, W // TILE, TILE, TILE, *rest)
    x = x.permute(0, 1, 2, 4, 3, 5, *range(6, 6 + len(rest)))
    return x.reshape(B, T, H, W, *rest)


def sta_mask(T: int, Ht: int, Wt: int, wT: int, wH: int, wW: int, device=None) -> torch.Tensor:
    """Tile-level sliding-window mask [N, N], N = T*Ht*Wt: |Δt| <= wT//2, |Δh| <= wH//2, |Δw| <= wW//2."""
    t = torch.arange(T, device=device).repeat_interleave(Ht * Wt)
    h = torch.arange(Ht, device=device).repeat_interleave(Wt).repeat(T)
    w = torch.arange(Wt, device=device).repeat(T * Ht)
    return (
        ((t[:, None] - t[None, :]).abs() <= wT // 2)
        & ((h[:, None] - h[None, :]).abs() <= wH // 2)
        & ((w[:, None] - w[None, :]).abs() <= wW // 2)
    )


def nabla_block_mask(q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int, int], params: NablaParams) -> torch.Tensor:
    """Block mask [B, heads, N, N] (N = tokens / 64) for q, k [B, heads, S, D] in fractal order, after
    QK-norm and RoPE."""
    B, Hh, S, D = q.shape
    T, H, W = grid
    n = S // BLOCK
    qa = q.float().reshape(B, Hh, n, BLOCK, D).mean(-2)
    ka = k.float().reshape(B, Hh, n, BLOCK, D).mean(-2)
    attn_map = torch.softmax(qa @ ka.transpose(-1, -2) / math.sqrt(D), dim=-1)
    vals, order = torch.sort(attn_map, dim=-1)  # ascending
    keep_sorted = torch.cumsum(vals, dim=-1) >= 1.0 - params.P
    mask = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    if params.P >= 1.0:
        mask = torch.ones_like(mask)
    sta = sta_mask(T, H // TILE, W // TILE, params.wT, params.wH, params.wW, device=q.device)
    return mask | sta


def expand_block_mask(block_mask: torch.Tensor) -> torch.Tensor:
    """Block mask [..., N, N] -> token mask [..., N*64, N*64]."""
    return block_mask.repeat_interleave(BLOCK, dim=-2).repeat_interleave(BLOCK, dim=-1)


def dense_attention(q, k, v, attn_mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def nabla_attention(q, k, v, grid: tuple[int, int, int], params: NablaParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU/training path: SDPA with the NABLA block mask expanded to tokens. Returns (out, block mask)."""
    block_mask = nabla_block_mask(q, k, grid, params)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=expand_block_mask(block_mask)), block_mask


def flex_nabla_attention(q, k, v, block_mask: torch.Tensor):
    """FlexAttention with the NABLA block mask (GPU path; on CPU forward only, and only compiled).
    Partial blocks with a lookup ``mask_mod`` so that the sparsity is honoured even when un-compiled."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    B, Hh, N, _ = block_mask.shape
    kv_num = block_mask.sum(-1).to(torch.int32)
    kv_idx = torch.argsort(block_mask.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    blocks = block_mask

    def mask_mod(b, h, q_idx, kv_idx_):
        return blocks[b, h, q_idx // BLOCK, kv_idx_ // BLOCK]

    bm = BlockMask.from_kv_blocks(kv_num, kv_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod, seq_lengths=(N * BLOCK, N * BLOCK))
    return flex_attention(q, k, v, block_mask=bm)
