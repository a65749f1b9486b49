"""Text conditioning: a pair of encoders computed online (report §6.1.1) — token hidden states for
cross-attention (Qwen2.5-VL-7B in the report) and a pooled vector added to the time embedding (CLIP
ViT-L/14) — behind one small interface, so the trainer does not care which pair it gets.

Only the tiny pair exists yet: ``TinyTextEncoders``, a deterministic random byte-level encoder with the
tiny model's widths, for tests and CPU smoke runs. The Qwen2.5-VL + CLIP pair (transformers, with the
report's prompt templates) is still to be written; a run that asks for it fails with that message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


@dataclass
class TextBatch:
    hidden: torch.Tensor  # [B, L, in_text_dim]
    mask: torch.Tensor  # [B, L] bool, True = real token
    pooled: torch.Tensor  # [B, in_text_dim2]


class TextEncoders(Protocol):
    name: str

    def encode(self, prompts: list[str]) -> TextBatch: ...


class TinyTextEncoders(nn.Module):
    """Bytes → embedding → one transformer layer (hidden states); mean of the states → linear (pooled).
    Random and frozen. The empty prompt encodes to one padding-free token, like a template would."""

    name = "tiny-random"

    def __init__(self, hidden_dim: int = 48, pooled_dim: int = 24, max_length: int = 32, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.max_length = max_length
        self.embed = nn.Embedding(257, hidden_dim)
        self.layer = nn.TransformerEncoderLayer(hidden_dim, nhead=2, dim_feedforward=2 * hidden_dim, batch_first=True,
                                                dropout=0.0)
        self.pool = nn.Linear(hidden_dim, pooled_dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextBatch:
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for i, p in enumerate(prompts):
            data = list(p.encode("utf-8")[: self.max_length - 1])
            row = [256] + [b for b in data]  # a start token, so even "" has one real token
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        hidden = self.layer(self.embed(ids), src_key_padding_mask=~mask)
        pooled = self.pool((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
        return TextBatch(hidden, mask, pooled)


def text_encoders(name: str, **kwargs) -> TextEncoders:
    if name == "tiny":
        return TinyTextEncoders(**kwargs)
    raise NotImplementedError(
        f"text encoder pair {name!r} is not available yet: only 'tiny' (tests and CPU smoke runs) is built; "
        "the Qwen2.5-VL + CLIP pair is still to be written"
    )
