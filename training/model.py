"""CrossDiT, the Kandinsky 5.0 diffusion transformer (report §5), with a real batch dimension.

Visual latents [B, T, H, W, C] are patchified (1, 2, 2) into tokens; the Qwen2.5-VL text hidden states
are refined once per forward by the LTF (text refiner) blocks, conditioned on the time + pooled-CLIP
embedding; each CrossDiT block is self-attention (3D RoPE, dense or NABLA) → cross-attention to the
refined text → MLP, each sub-block modulated adaLN-Zero style by ``(shift, scale, gate)`` from the
time embedding (9 vectors per block, 6 per LTF block). Q and K are RMS-normalised before RoPE.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from training.attention import (
    BLOCK,
    NablaParams,
    check_nabla_geometry,
    fractal_flatten,
    fractal_unflatten,
    nabla_attention,
    nabla_block_mask,
    sparse_attention,
)
from training.configs import CrossDiTConfig


def get_freqs(n: int, theta: float = 10000.0) -> torch.Tensor:
    return torch.exp(-math.log(theta) * torch.arange(n, dtype=torch.float32) / n)


def rope_angles(positions: torch.Tensor, dim: int, scale: float = 1.0) -> torch.Tensor:
    """Angles [*positions.shape, dim/2] for rotary embedding of ``dim`` channels; ``scale`` divides
    the angles (position interpolation)."""
    return positions.float()[..., None] * get_freqs(dim // 2).to(positions.device) / scale


def rope_3d(T: int, H: int, W: int, axes_dims: tuple[int, int, int],
            scale: tuple[float, float, float] = (1.0, 1.0, 1.0), device=None) -> torch.Tensor:
    """Angles [T, H, W, head_dim/2]: the t, h and w rotations concatenated along the head dim."""
    t = rope_angles(torch.arange(T, device=device), axes_dims[0], scale[0])[:, None, None, :].expand(T, H, W, -1)
    h = rope_angles(torch.arange(H, device=device), axes_dims[1], scale[1])[None, :, None, :].expand(T, H, W, -1)
    w = rope_angles(torch.arange(W, device=device), axes_dims[2], scale[2])[None, None, :, :].expand(T, H, W, -1)
    return torch.cat([t, h, w], dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [B, S, heads, D] by angles [S, D/2] (fp32)."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    out = torch.stack([xf[..., 0] * cos - xf[..., 1] * sin, xf[..., 0] * sin + xf[..., 1] * cos], dim=-1)
    return out.flatten(-2).type_as(x)


ROPE_SCALE_512 = (1.0, 2.0, 2.0)  # the official 512-px video configs (sides within 480–854 px)
ROPE_SCALE_1024 = (1.0, 3.16, 3.16)  # the official Pro 1024-px configs
ROPE_SCALE_NONE = (1.0, 1.0, 1.0)


def rope_scale(config: CrossDiTConfig, height_px: int, width_px: int) -> tuple[float, float, float]:
    """RoPE position scaling (angles divided per axis) as the official video models use it: (1, 2, 2) at the
    512-px tier (both sides within 480–854 px, diffusers' ``_get_scale_factor`` rule), (1, 3.16, 3.16) at the
    1024-px tier; none for image models, and none below 480 px (the official code has no low-res config:
    the low-res stages train unscaled)."""
    if not config.visual_cond:
        return ROPE_SCALE_NONE
    if 480 <= height_px <= 854 and 480 <= width_px <= 854:
        return ROPE_SCALE_512
    if max(height_px, width_px) >= 1024:
        return ROPE_SCALE_1024
    return ROPE_SCALE_NONE


def patchify(x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """[B, T, H, W, C] -> [B, T/pt, H/ph, W/pw, pt*ph*pw*C] with C fastest (the official order)."""
    B, T, H, W, C = x.shape
    pt, ph, pw = patch
    x = x.reshape(B, T // pt, pt, H // ph, ph, W // pw, pw, C).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(B, T // pt, H // ph, W // pw, pt * ph * pw * C)


def unpatchify(x: torch.Tensor, patch: tuple[int, int, int], channels: int) -> torch.Tensor:
    """Inverse of the output layer's view: [B, T', H', W', C*pt*ph*pw] with C slowest -> [B, T, H, W, C]."""
    B, T, H, W, _ = x.shape
    pt, ph, pw = patch
    x = x.reshape(B, T, H, W, channels, pt, ph, pw).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(B, T * pt, H * ph, W * pw, channels)


class Modulation(nn.Module):
    """SiLU → Linear(time_dim, n·model_dim), zero-initialised (adaLN-Zero); computed in fp32."""

    def __init__(self, time_dim: int, model_dim: int, n: int):
        super().__init__()
        self.n = n
        self.linear = nn.Linear(time_dim, n * model_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, temb: torch.Tensor) -> list[torch.Tensor]:
        return self.linear(F.silu(temb.float())).unsqueeze(1).chunk(self.n, dim=-1)  # each [B, 1, d]


def modulate(norm_x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (norm_x.float() * (1 + scale) + shift).type_as(norm_x)


def gated(x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return (x.float() + gate * out.float()).type_as(x)


class Attention(nn.Module):
    """Multi-head attention with q/k/v/out projections (bias) and RMSNorm on q and k before RoPE."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.to_query, self.to_key, self.to_value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_layer = nn.Linear(dim, dim)
        self.query_norm, self.key_norm = nn.RMSNorm(head_dim), nn.RMSNorm(head_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:2], self.heads, self.head_dim)

    def forward(self, x, context=None, rope_q=None, rope_k=None, key_mask=None, nabla=None, grid=None, packing=None):
        if packing is not None:
            return self._packed(x, context, rope_q, key_mask, nabla, packing)
        context = x if context is None else context
        q = self.query_norm(self._split(self.to_query(x)).float()).type_as(x)
        k = self.key_norm(self._split(self.to_key(context)).float()).type_as(x)
        v = self._split(self.to_value(context))
        if rope_q is not None:
            q, k = apply_rope(q, rope_q), apply_rope(k, rope_k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, S, D]
        if nabla is not None:
            out, self.last_block_mask = nabla_attention(q, k, v, grid, nabla)
        else:
            attn_mask = None if key_mask is None else key_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_layer(out.transpose(1, 2).flatten(2))


    def _packed(self, x, context, rope, key_mask, nabla, packing: "Packing"):
        """Attention of a packed sequence x [1, S, d] of several samples (``packing.lengths`` tokens each,
        contiguous). Self-attention (``context`` None) is block-diagonal — a token sees only its own sample:
        with NABLA, each sample's NABLA block mask placed on the diagonal of one block mask (the document
        mask composed with NABLA's) and one block-sparse call; dense, one SDPA per sample's span (what a
        varlen kernel does). Cross-attention: each sample's tokens attend to its own text row of
        ``context`` [n, L, d] under ``key_mask`` [n, L]."""
        spans = packing.spans()
        q = self.query_norm(self._split(self.to_query(x)).float()).type_as(x)
        if context is not None:
            k = self.key_norm(self._split(self.to_key(context)).float()).type_as(x)  # [n, L, heads, D]
            v = self._split(self.to_value(context))
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            outs = [F.scaled_dot_product_attention(q[:, :, a:b], k[i:i + 1], v[i:i + 1],
                                                   attn_mask=key_mask[i:i + 1, None, None, :])
                    for i, (a, b) in enumerate(spans)]
        else:
            k = self.key_norm(self._split(self.to_key(x)).float()).type_as(x)
            v = self._split(self.to_value(x))
            q, k = apply_rope(q, rope), apply_rope(k, rope)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [1, heads, S, D]
            if nabla is not None:
                blocks = [nabla_block_mask(q[:, :, a:b].detach(), k[:, :, a:b].detach(), grid, nabla)
                          for (a, b), grid in zip(spans, packing.grids)]
                self.last_block_mask = _block_diagonal(blocks)
                outs = [sparse_attention(q, k, v, self.last_block_mask)]
            else:
                outs = [F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b]) for a, b in spans]
        out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        return self.out_layer(out.transpose(1, 2).flatten(2))


def _block_diagonal(masks: list[torch.Tensor]) -> torch.Tensor:
    """Block masks [1, heads, n_i, n_i] of the samples of a pack → [1, heads, N, N], N = Σ n_i, False off
    the diagonal blocks (the document mask)."""
    sizes = [m.shape[-1] for m in masks]
    out = masks[0].new_zeros(1, masks[0].shape[1], sum(sizes), sum(sizes))
    a = 0
    for m, n in zip(masks, sizes):
        out[..., a:a + n, a:a + n] = m
        a += n
    return out


@dataclass
class Packing:
    """Where each sample of a packed sequence lies: ``lengths`` visual tokens per sample (in order), their
    token grids (T', H', W'), and ``segment`` [S] the sample index of every token."""

    lengths: list[int]
    grids: list[tuple[int, int, int]]
    segment: torch.Tensor = field(repr=False)

    def spans(self) -> list[tuple[int, int]]:
        ends = list(itertools.accumulate(self.lengths))
        return [(e - n, e) for n, e in zip(self.lengths, ends)]

    def per_token(self, mod: torch.Tensor) -> torch.Tensor:
        """A per-sample modulation vector [n, 1, d] → per token [1, S, d]."""
        return mod[:, 0].index_select(0, self.segment)[None]


class FeedForward(nn.Module):
    def __init__(self, dim: int, ff_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(dim, ff_dim, bias=False)
        self.out_layer = nn.Linear(ff_dim, dim, bias=False)

    def forward(self, x):
        return self.out_layer(F.gelu(self.in_layer(x)))


class TextRefinerBlock(nn.Module):
    """LTF block: self-attention (1D RoPE, key padding mask) and MLP; 6 modulation vectors."""

    def __init__(self, c: CrossDiTConfig):
        super().__init__()
        self.modulation = Modulation(c.time_dim, c.model_dim, 6)
        self.norm = nn.LayerNorm(c.model_dim, elementwise_affine=False)
        self.self_attention = Attention(c.model_dim, c.head_dim)
        self.feed_forward = FeedForward(c.model_dim, c.ff_dim)

    def forward(self, text, temb, rope, key_mask):
        sa_shift, sa_scale, sa_gate, ff_shift, ff_scale, ff_gate = self.modulation(temb)
        out = self.self_attention(modulate(self.norm(text), sa_shift, sa_scale), rope_q=rope, rope_k=rope,
                                  key_mask=key_mask)
        text = gated(text, sa_gate, out)
        out = self.feed_forward(modulate(self.norm(text), ff_shift, ff_scale))
        return gated(text, ff_gate, out)


class CrossDiTBlock(nn.Module):
    """Self-attention (3D RoPE; dense or NABLA) → cross-attention to the text → MLP; 9 modulation vectors."""

    def __init__(self, c: CrossDiTConfig):
        super().__init__()
        self.modulation = Modulation(c.time_dim, c.model_dim, 9)
        self.norm = nn.LayerNorm(c.model_dim, elementwise_affine=False)
        self.self_attention = Attention(c.model_dim, c.head_dim)
        self.cross_attention = Attention(c.model_dim, c.head_dim)
        self.feed_forward = FeedForward(c.model_dim, c.ff_dim)

    def forward(self, x, text, temb, rope, text_mask, nabla=None, grid=None, packing=None):
        mods = self.modulation(temb)
        if packing is not None:  # one sample's time embedding per token
            mods = [packing.per_token(m) for m in mods]
        sa_shift, sa_scale, sa_gate, ca_shift, ca_scale, ca_gate, ff_shift, ff_scale, ff_gate = mods
        out = self.self_attention(modulate(self.norm(x), sa_shift, sa_scale), rope_q=rope, rope_k=rope,
                                  nabla=nabla, grid=grid, packing=packing)
        x = gated(x, sa_gate, out)
        out = self.cross_attention(modulate(self.norm(x), ca_shift, ca_scale), context=text, key_mask=text_mask,
                                   packing=packing)
        x = gated(x, ca_gate, out)
        out = self.feed_forward(modulate(self.norm(x), ff_shift, ff_scale))
        return gated(x, ff_gate, out)


class TimeEmbedding(nn.Module):
    """Sinusoid of width model_dim of τ = 1000·t ([cos, sin]), then Linear → SiLU → Linear to time_dim."""

    def __init__(self, model_dim: int, time_dim: int):
        super().__init__()
        self.model_dim = model_dim
        self.in_layer = nn.Linear(model_dim, time_dim)
        self.out_layer = nn.Linear(time_dim, time_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = (t.float() * 1000.0)[:, None] * get_freqs(self.model_dim // 2).to(t.device)
        emb = torch.cat([angles.cos(), angles.sin()], dim=-1)
        return self.out_layer(F.silu(self.in_layer(emb)))


@dataclass
class ModelInputs:
    """One batch. ``x``: [B, T, H, W, Cin] latents (with the condition channels already appended for
    I2V / editing); ``t``: [B] in [0, 1] (1 = noise); ``text``: [B, L, in_text_dim]; ``text_mask``: [B, L]
    bool (True = a real token); ``pooled``: [B, in_text_dim2]."""

    x: torch.Tensor
    t: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor
    pooled: torch.Tensor


@dataclass
class PackedInputs:
    """Several samples of one bucket, any lengths, for ``CrossDiT.forward_packed``: ``xs`` [T_i, H, W, Cin]
    each; ``t`` [n]; ``text`` [n, L, in_text_dim] with ``text_mask`` [n, L]; ``pooled`` [n, in_text_dim2]."""

    xs: list[torch.Tensor]
    t: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor
    pooled: torch.Tensor


class CrossDiT(nn.Module):
    def __init__(self, config: CrossDiTConfig):
        super().__init__()
        c = self.config = config
        self.time_embedding = TimeEmbedding(c.model_dim, c.time_dim)
        self.text_embedding = nn.Sequential(nn.Linear(c.in_text_dim, c.model_dim), nn.LayerNorm(c.model_dim))
        self.pooled_text_embedding = nn.Sequential(nn.Linear(c.in_text_dim2, c.time_dim), nn.LayerNorm(c.time_dim))
        self.visual_embedding = nn.Linear(c.patch_volume * c.in_channels, c.model_dim)
        self.text_blocks = nn.ModuleList(TextRefinerBlock(c) for _ in range(c.num_text_blocks))
        self.visual_blocks = nn.ModuleList(CrossDiTBlock(c) for _ in range(c.num_visual_blocks))
        self.out_modulation = Modulation(c.time_dim, c.model_dim, 2)
        self.out_norm = nn.LayerNorm(c.model_dim, elementwise_affine=False)
        self.out_layer = nn.Linear(c.model_dim, c.patch_volume * c.out_visual_dim)
        self.gradient_checkpointing = False
        self.offload_activations = False  # with checkpointing: keep the saved block inputs in host memory
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform linears with zero bias (DiT), then zero the modulation layers (adaLN-Zero,
        as the official code) and the final projection (DiT): the model starts as the identity on
        its residual stream and predicts zero velocity."""
        if next(self.parameters()).device.type == "meta":
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, Modulation):
                nn.init.zeros_(module.linear.weight)
                nn.init.zeros_(module.linear.bias)
        nn.init.zeros_(self.out_layer.weight)
        nn.init.zeros_(self.out_layer.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, inputs: ModelInputs | PackedInputs, *, nabla: NablaParams | None = None,
                rope_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor | list[torch.Tensor]:
        """Predicted velocity [B, T, H, W, out_visual_dim]; for ``PackedInputs``, ``forward_packed``'s list
        (called through here so that module hooks — FSDP's unsharding of the root parameters — run)."""
        if isinstance(inputs, PackedInputs):
            return self.forward_packed(inputs, nabla=nabla, rope_scale=rope_scale)
        c = self.config
        x = inputs.x
        B, T, H, W, _ = x.shape
        temb = self.time_embedding(inputs.t) + self.pooled_text_embedding(inputs.pooled)
        text = self.text_embedding(inputs.text)
        text_rope = rope_angles(torch.arange(text.shape[1], device=x.device), c.head_dim)
        for block in self.text_blocks:
            text = self._run(block, text, temb, text_rope, inputs.text_mask)

        pt, ph, pw = c.patch_size
        grid = (T // pt, H // ph, W // pw)
        vis = self.visual_embedding(patchify(x, c.patch_size))  # [B, T', H', W', d]
        rope = rope_3d(*grid, c.axes_dims, rope_scale, device=x.device)
        if nabla is not None:
            check_nabla_geometry(*grid)
            vis = fractal_flatten(vis)
            rope = fractal_flatten(rope[None])[0]
        else:
            vis = vis.flatten(1, 3)
            rope = rope.flatten(0, 2)
        for block in self.visual_blocks:
            vis = self._run(block, vis, text, temb, rope, inputs.text_mask, nabla, grid)

        shift, scale = self.out_modulation(temb)
        out = self.out_layer(modulate(self.out_norm(vis), shift, scale))
        out = fractal_unflatten(out, *grid) if nabla is not None else out.reshape(B, *grid, -1)
        return unpatchify(out, c.patch_size, c.out_visual_dim)

    def forward_packed(self, inputs: "PackedInputs", *, nabla: NablaParams | None = None,
                       rope_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> list[torch.Tensor]:
        """One forward over several samples of different lengths packed into one sequence (issue 11 §4);
        call it as ``model(packed_inputs)``.
        Returns each sample's velocity [T_i, H, W, out_visual_dim]; equal to ``forward`` on each sample
        alone: RoPE positions restart per sample, every token is modulated by its own sample's time
        embedding, self-attention is block-diagonal (composed with NABLA's block mask when on), and
        cross-attention reads the sample's own text."""
        c = self.config
        n = len(inputs.xs)
        temb = self.time_embedding(inputs.t) + self.pooled_text_embedding(inputs.pooled)  # [n, time_dim]
        text = self.text_embedding(inputs.text)
        device = inputs.xs[0].device
        text_rope = rope_angles(torch.arange(text.shape[1], device=device), c.head_dim)
        for block in self.text_blocks:
            text = self._run(block, text, temb, text_rope, inputs.text_mask)

        pt, ph, pw = c.patch_size
        tokens, ropes, grids = [], [], []
        for x in inputs.xs:
            T, H, W, _ = x.shape
            grid = (T // pt, H // ph, W // pw)
            vis = self.visual_embedding(patchify(x[None], c.patch_size))  # [1, T', H', W', d]
            rope = rope_3d(*grid, c.axes_dims, rope_scale, device=device)
            if nabla is not None:
                check_nabla_geometry(*grid)
                tokens.append(fractal_flatten(vis))
                ropes.append(fractal_flatten(rope[None])[0])
            else:
                tokens.append(vis.flatten(1, 3))
                ropes.append(rope.flatten(0, 2))
            grids.append(grid)
        lengths = [v.shape[1] for v in tokens]
        if nabla is not None and any(L % BLOCK for L in lengths):
            raise ValueError(f"NABLA packs need samples of whole {BLOCK}-token blocks, got {lengths}")
        packing = Packing(lengths, grids, torch.repeat_interleave(torch.arange(n, device=device),
                                                                  torch.tensor(lengths, device=device),
                                                                  output_size=sum(lengths)))
        vis, rope = torch.cat(tokens, dim=1), torch.cat(ropes, dim=0)
        for block in self.visual_blocks:
            vis = self._run(block, vis, text, temb, rope, inputs.text_mask, nabla, None, packing)

        shift, scale = (packing.per_token(m) for m in self.out_modulation(temb))
        out = self.out_layer(modulate(self.out_norm(vis), shift, scale))
        results = []
        for (a, b), grid in zip(packing.spans(), grids):
            seg = out[:, a:b]
            seg = fractal_unflatten(seg, *grid) if nabla is not None else seg.reshape(1, *grid, -1)
            results.append(unpatchify(seg, c.patch_size, c.out_visual_dim)[0])
        return results

    def _run(self, block, *args):
        """A block, with per-block activation checkpointing when enabled: only the block's inputs are
        saved for backward, and with ``offload_activations`` they are moved to (pinned) host memory
        until backward needs them (report §6.1.3)."""
        if self.gradient_checkpointing and self.training:
            if self.offload_activations:
                with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
                    return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)
