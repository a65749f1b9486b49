"""The Euler sampler of the report: t from 1 to 0 on a shifted grid ``t' = s·t / (1 + (s − 1)·t)``,
``x ← x + (t_{i+1} − t_i)·v(x, t_i)``, with classifier-free guidance ``v = v_u + w·(v_c − v_u)``
(skipped when w = 1). Defaults from the official configs: shift 10 for video, 3 for images; guidance
5.0 for video, 3.5 for images; 50 steps."""

from __future__ import annotations

from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t[B]) -> v

VIDEO_SHIFT, IMAGE_SHIFT = 10.0, 3.0
VIDEO_GUIDANCE, IMAGE_GUIDANCE = 5.0, 3.5
DEFAULT_STEPS = 50


def timesteps(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 values from 1 down to 0."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


def guided(cond: Velocity, uncond: Velocity | None, guidance: float) -> Velocity:
    if uncond is None or abs(guidance - 1.0) < 1e-6:
        return cond

    def v(x, t):
        v_u = uncond(x, t)
        return v_u + guidance * (cond(x, t) - v_u)

    return v


def euler_sample(velocity: Velocity, noise: torch.Tensor, *, steps: int = DEFAULT_STEPS, shift: float = 1.0,
                 fixed: torch.Tensor | None = None, fixed_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate from ``noise`` (t = 1) to t = 0. ``fixed``/``fixed_mask`` re-impose known latents at
    every step (image-to-video keeps the clean first frame)."""
    x = noise.clone()
    grid = timesteps(steps, shift).to(noise.device)

    def impose(z):
        return z if fixed is None else torch.where(fixed_mask.bool(), fixed, z)

    x = impose(x)
    for i in range(steps):
        t = grid[i].expand(x.shape[0])
        x = impose(x + (grid[i + 1] - grid[i]) * velocity(x, t))
    return x
