"""Attention for the visual self-attention of CrossDiT: dense SDPA, and NABLA (report §5; NABLA paper
arXiv 2507.13546) — block-sparse attention whose mask is chosen per call and per head:

1. tokens are reordered so every run of 64 tokens is one 8x8 spatial tile of one frame
   (``fractal_flatten``);
2. Q and K are averaged over those 64-token blocks, ``softmax(qa·kaᵀ/√D)`` over key blocks, and each
   query block keeps the smallest set of key blocks holding at least mass ``P`` (per-head CDF
   threshold);
3. the result is OR-ed with a sliding-tile (STA) mask of window ``(wT, wH, wW)`` tiles, which always
   keeps the diagonal, so no row is empty.

The attention itself is block-sparse and never builds an S x S tensor: on a GPU compiled FlexAttention
with the official full-block ``BlockMask`` (``flex_block_sparse_attention``); elsewhere
``block_sparse_attention``, our own kernel (each query block's kept key/value blocks gathered, batched
matmuls, an exact softmax over them, and a backward that recomputes the scores chunk by chunk), so its
memory and time grow with the number of kept blocks. ``expand_block_mask`` + SDPA remains only as the
reference the tests compare against.

When NABLA is on follows report §6.3 (``nabla_enabled``): video at the 1024-px tier, and 512-px video
longer than 5 s (the 10 s stages); dense attention otherwise.
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
    """Block mask [..., N, N] -> token mask [..., N*64, N*64]. For reference checks on small shapes only:
    this is the S x S tensor the sparse kernels avoid."""
    return block_mask.repeat_interleave(BLOCK, dim=-2).repeat_interleave(BLOCK, dim=-1)


def dense_attention(q, k, v, attn_mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


# --- when NABLA is on (report §6.3) ---------------------------------------------------------------

NABLA_WHEN = ("report", "always", "never")
HIGH_TIER_LONG_SIDE = 1024  # the 1024-px tier's buckets (1024², 1408x640, 1280x768, 1152x896) have long side >= 1024
FIVE_SECONDS_LATENT_FRAMES = 31  # 5 s at 24 fps: 5·24 // 4 + 1


def nabla_enabled(when: str, latent_frames: int, height_px: int, width_px: int) -> bool:
    """Whether a clip of ``latent_frames`` at ``height_px x width_px`` uses NABLA. ``report`` (§6.3: "for
    1024 resolution or for videos up to 10 seconds long at 512 resolution, CrossDiT incorporates the NABLA
    mechanism; in other cases, full attention"): video (more than one latent frame) at the 1024-px tier,
    or longer than 5 s (more than 31 latent frames). ``always``: every video; ``never``: dense. Images stay
    dense (4,096 tokens at 1024², where attention is a small share of the FLOPs)."""
    if when not in NABLA_WHEN:
        raise ValueError(f"nabla_when must be one of {NABLA_WHEN}, got {when!r}")
    if latent_frames <= 1 or when == "never":
        return False
    if when == "always":
        return True
    return max(height_px, width_px) >= HIGH_TIER_LONG_SIDE or latent_frames > FIVE_SECONDS_LATENT_FRAMES


# --- block-sparse attention -----------------------------------------------------------------------

CHUNK_ELEMENTS = 1 << 20  # score elements per chunk (4 MiB in fp32): bounds the working set, stays in cache


def _row_chunks(counts: torch.Tensor):
    """Rows (query blocks, all batch x heads flattened) in descending order of kept blocks, in chunks
    whose padded score tensor stays under ``CHUNK_ELEMENTS``: (rows, kmax) per chunk."""
    order = torch.argsort(counts, descending=True, stable=True)
    sorted_counts = counts[order].tolist()
    r, total = 0, len(sorted_counts)
    while r < total:
        kmax = max(1, sorted_counts[r])
        n = max(1, CHUNK_ELEMENTS // (BLOCK * BLOCK * kmax))
        yield order[r:r + n], kmax
        r += n


def _gather(rows: torch.Tensor, kmax: int, mask_rows: torch.Tensor, n_blocks: int):
    """For query-block rows (flat index b·heads·N + i): the flat indices [R, kmax] of their kept key
    blocks (padding repeats a kept one) and which slots are real [R, kmax]."""
    m = mask_rows[rows]
    idx = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True)[:, :kmax]
    valid = torch.gather(m, 1, idx)
    base = (rows // n_blocks) * n_blocks
    return base[:, None] + idx, valid


EXP_FLOOR = -80.0  # exp() arguments are clamped here: e^-80 is still a normal float (denormals are ~15x slower)


def _probs(q_rows: torch.Tensor, k_gathered: torch.Tensor, valid: torch.Tensor, scale: float,
           lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised softmax weights [R, 64, kmax·64] of query blocks against their gathered key blocks
    (padding slots 0) and the subtracted row maximum; with ``lse`` given, the normalised weights."""
    s = torch.bmm(q_rows, k_gathered.transpose(1, 2)).mul_(scale)
    pad = None if bool(valid.all()) else ~valid.repeat_interleave(BLOCK, -1)[:, None, :]
    if pad is not None:
        s.masked_fill_(pad, float("-inf"))
    peak = s.amax(-1, keepdim=True) if lse is None else lse[..., None]
    p = s.sub_(peak).clamp_(min=EXP_FLOOR).exp_()
    if pad is not None:
        p.masked_fill_(pad, 0.0)
    return p, peak


class _BlockSparseAttention(torch.autograd.Function):
    """Exact softmax attention over the kept 64x64 blocks, flash-style: forward keeps only the output and
    the log-sum-exp per query; backward recomputes each chunk's scores."""

    @staticmethod
    def forward(ctx, q, k, v, block_mask):
        B, Hh, S, D = q.shape
        n = S // BLOCK
        scale = 1.0 / math.sqrt(D)
        work = torch.promote_types(q.dtype, torch.float32)  # bf16 inputs are computed in fp32
        qb, kb, vb = (t.reshape(B * Hh * n, BLOCK, D).to(work) for t in (q, k, v))
        mask_rows = block_mask.expand(B, Hh, n, n).reshape(B * Hh * n, n)
        counts = mask_rows.sum(-1)
        out = torch.empty_like(qb)
        lse = torch.empty(qb.shape[:2], dtype=work, device=q.device)
        for rows, kmax in _row_chunks(counts):
            idx, valid = _gather(rows, kmax, mask_rows, n)
            kg = kb[idx].reshape(len(rows), kmax * BLOCK, D)
            vg = vb[idx].reshape(len(rows), kmax * BLOCK, D)
            p, peak = _probs(qb[rows], kg, valid, scale)
            total = p.sum(-1, keepdim=True)
            out[rows] = torch.bmm(p, vg).div_(total)
            lse[rows] = (peak + total.log()).squeeze(-1)
        ctx.save_for_backward(q, k, v, block_mask, out, lse)
        return out.reshape(B, Hh, S, D).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, block_mask, out, lse = ctx.saved_tensors
        B, Hh, S, D = q.shape
        n = S // BLOCK
        scale = 1.0 / math.sqrt(D)
        work = out.dtype
        qb, kb, vb = (t.reshape(B * Hh * n, BLOCK, D).to(work) for t in (q, k, v))
        go = grad_out.reshape(B * Hh * n, BLOCK, D).to(work)
        delta = (go * out).sum(-1)  # [rows, 64]
        mask_rows = block_mask.expand(B, Hh, n, n).reshape(B * Hh * n, n)
        dq, dk, dv = torch.zeros_like(qb), torch.zeros_like(kb), torch.zeros_like(vb)
        for rows, kmax in _row_chunks(mask_rows.sum(-1)):
            idx, valid = _gather(rows, kmax, mask_rows, n)
            R = len(rows)
            kg = kb[idx].reshape(R, kmax * BLOCK, D)
            vg = vb[idx].reshape(R, kmax * BLOCK, D)
            qr, gr = qb[rows], go[rows]
            p, _ = _probs(qr, kg, valid, scale, lse[rows])
            dv.index_add_(0, idx.flatten(), torch.bmm(p.transpose(1, 2), gr).reshape(R * kmax, BLOCK, D))
            ds = p * (torch.bmm(gr, vg.transpose(1, 2)) - delta[rows][..., None])
            dq[rows] = torch.bmm(ds, kg) * scale
            dk.index_add_(0, idx.flatten(), (torch.bmm(ds.transpose(1, 2), qr) * scale).reshape(R * kmax, BLOCK, D))
        shape = (B, Hh, S, D)
        return dq.reshape(shape).to(q.dtype), dk.reshape(shape).to(k.dtype), dv.reshape(shape).to(v.dtype), None


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor) -> torch.Tensor:
    """Attention of q, k, v [B, heads, S, D] restricted to the kept 64-token blocks of ``block_mask``
    [B or 1, heads or 1, N, N] (every row must keep at least one block). Any device; the CPU kernel."""
    if q.shape[-2] % BLOCK:
        raise ValueError(f"block-sparse attention needs a multiple of {BLOCK} tokens, got {q.shape[-2]}")
    return _BlockSparseAttention.apply(q, k, v, block_mask)


_compiled_flex = None


def flex_block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                block_mask: torch.Tensor) -> torch.Tensor:
    """The GPU kernel: compiled FlexAttention with the official full-block ``BlockMask`` (every kept block a
    *full* block, no ``mask_mod``), as ``nablaT_v2``. CUDA only: on CPU the inductor cannot compile a
    full-blocks-only mask, eager flex ignores the blocks, and flex has no CPU backward."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    if q.device.type != "cuda":
        raise RuntimeError("flex_block_sparse_attention runs on CUDA only; use block_sparse_attention")
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=True, mode="max-autotune-no-cudagraphs")
    B, Hh, S, _ = q.shape
    mask = block_mask.expand(B, Hh, -1, -1)
    n = mask.shape[-1]
    full_num = mask.sum(-1).to(torch.int32)
    full_idx = torch.argsort(mask.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    bm = BlockMask.from_kv_blocks(torch.zeros_like(full_num), torch.zeros_like(full_idx), full_num, full_idx,
                                  BLOCK_SIZE=BLOCK, mask_mod=None, seq_lengths=(n * BLOCK, n * BLOCK))
    return _compiled_flex(q, k, v, block_mask=bm)


def sparse_attention(q, k, v, block_mask: torch.Tensor) -> torch.Tensor:
    """Block-sparse attention on the best kernel for the device: compiled FlexAttention on CUDA, our
    gathered-block kernel elsewhere."""
    if q.device.type == "cuda":
        return flex_block_sparse_attention(q, k, v, block_mask)
    return block_sparse_attention(q, k, v, block_mask)


def nabla_attention(q, k, v, grid: tuple[int, int, int], params: NablaParams) -> tuple[torch.Tensor, torch.Tensor]:
    """NABLA: the block mask of this call, then block-sparse attention over it. Returns (out, block mask)."""
    block_mask = nabla_block_mask(q.detach(), k.detach(), grid, params)
    return sparse_attention(q, k, v, block_mask), block_mask


def flex_nabla_attention(q, k, v, block_mask: torch.Tensor):
    """FlexAttention with partial blocks and a lookup ``mask_mod``: compiles on CPU (forward only), so the
    slow test can hold it to the CPU kernel; the model uses ``sparse_attention``."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    B, Hh, N, _ = block_mask.shape
    kv_num = block_mask.sum(-1).to(torch.int32)
    kv_idx = torch.argsort(block_mask.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    blocks = block_mask

    def mask_mod(b, h, q_idx, kv_idx_):
        return blocks[b, h, q_idx // BLOCK, kv_idx_ // BLOCK]

    bm = BlockMask.from_kv_blocks(kv_num, kv_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod, seq_lengths=(N * BLOCK, N * BLOCK))
    return flex_attention(q, k, v, block_mask=bm)
