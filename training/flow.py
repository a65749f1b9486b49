"""Flow matching with Kandinsky's conventions (report §5/§6): x_t = (1 − t)·x0 + t·ε, t = 1 is pure
noise, and the network predicts the velocity v = ε − x0. Training t is logit-normal (sigmoid of a
normal) or uniform."""

from __future__ import annotations

from collections.abc import Callable

import torch


def sample_t(batch: int, *, schedule: str = "logit_normal", mean: float = 0.0, std: float = 1.0,
             generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    if schedule == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))
    if schedule == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    raise ValueError(f"unknown t schedule {schedule!r} (logit_normal or uniform)")


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
