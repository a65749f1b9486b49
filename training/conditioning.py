"""The conditioning regimes of report §6.3 as model inputs: the channels appended to the noisy latent
x_t [B, T, H, W, C] for models with 2C + 1 input channels.

- text-to-video on a ``visual_cond`` model: ``[x_t, 0, 0]``;
- image-to-video: frame 0 of x_t is the clean first-frame latent (re-imposed at every sampling step),
  the condition channels are zeros and the mask channel is 1 on frame 0 (the official inference);
- instruct editing (``instruct_type='channel'``): ``[x_t, reference, 1]``, or ``[x_t, 0, 0]`` without a
  reference.
Only the first C channels are ever integrated by the sampler.
"""

from __future__ import annotations

import torch


def _zeros_like_channels(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.new_zeros(*x.shape[:-1], n)


def text_to_video_input(x_t: torch.Tensor) -> torch.Tensor:
    return torch.cat([x_t, torch.zeros_like(x_t), _zeros_like_channels(x_t, 1)], dim=-1)


def first_frame_mask(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, W, 1]: 1 on latent frame 0."""
    mask = _zeros_like_channels(x, 1)
    mask[:, :1] = 1
    return mask


def image_to_video_input(x_t: torch.Tensor, first_frame: torch.Tensor) -> torch.Tensor:
    """``first_frame``: [B, 1, H, W, C] clean latent of the conditioning image."""
    x = x_t.clone()
    x[:, :1] = first_frame
    return torch.cat([x, torch.zeros_like(x_t), first_frame_mask(x_t)], dim=-1)


def edit_input(x_t: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
    """``reference``: [B, 1, H, W, C] latent of the image to edit, or None."""
    if reference is None:
        return torch.cat([x_t, torch.zeros_like(x_t), _zeros_like_channels(x_t, 1)], dim=-1)
    return torch.cat([x_t, reference.expand_as(x_t), torch.ones_like(x_t[..., :1])], dim=-1)
