"""Flow matching with Kandinsky's conventions (report §5/§6): x_t = (1 − t)·x0 + t·ε, t = 1 is pure
noise, and the network predicts the velocity v = ε − x0. Training t is logit-normal (sigmoid of a
normal) or uniform, then shifted towards noise by ``shift_t`` (SD3's resolution-dependent shift)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def sample_t(batch: int, *, schedule: str = "logit_normal", mean: float = 0.0, std: float = 1.0,
             generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    if schedule == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))
    if schedule == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    raise ValueError(f"unknown t schedule {schedule!r} (logit_normal or uniform)")


T_SHIFT_TOKENS = 4096  # a 1024² image: 64 x 64 tokens after the 8x VAE and the 2x2 patch
T_SHIFT_AT_BASE = 3.0  # the official image sampling shift at that size (training.sampler.IMAGE_SHIFT)


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = s·t / (1 + (s − 1)·t): the sampler's shift applied to training times (s > 1: more noise)."""
    return shift * t / (1 + (shift - 1) * t)


def auto_t_shift(tokens: int) -> float:
    """SD3's resolution-dependent shift, s ∝ √(tokens) (Esser et al. 2024, §5.3.2: a signal of n tokens
    seen at noise σ looks like one of m tokens at σ·√(m/n)), anchored to the official sampling shifts:
    3 at a 1024² image (4,096 tokens), hence ≈ 10 for a 5 s 512×768 clip (47,616 tokens; the official video
    sampling shift is 10); never below 1 (small images train unshifted)."""
    return max(1.0, T_SHIFT_AT_BASE * math.sqrt(tokens / T_SHIFT_TOKENS))


def resolve_t_shift(setting: float | str, tokens: int) -> float:
    """``t_shift``: a number, or ``"auto"`` (``auto_t_shift`` of the sample's visual tokens)."""
    if setting == "auto":
        return auto_t_shift(tokens)
    if isinstance(setting, str) or setting <= 0:
        raise ValueError(f"t_shift must be 'auto' or a number > 0, got {setting!r}")
    return float(setting)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    tt = t.reshape(-1, *([1] * (x0.dim() - 1)))
    return (1 - tt) * x0 + tt * noise


def flow_loss(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor, *,
              t: torch.Tensor, noise: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between ``predict(x_t, t)`` and ε − x0. ``loss_mask`` (broadcastable to x0,
    1 = counted) leaves out e.g. the clean first frame of image-to-video."""
    target = noise - x0
    err = (predict(interpolate(x0, noise, t), t) - target) ** 2
    if loss_mask is None:
        return err.mean()
    mask = loss_mask.expand_as(err).to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp_min(1)
