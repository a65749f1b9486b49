"""Sampling an image from a checkpoint: text → CrossDiT (EMA weights) → shifted Euler with CFG →
latent → VAE decode → PNG. Video sampling (MP4) is still to be written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.configs import CONFIGS
from training.model import CrossDiT, ModelInputs
from training.sampler import IMAGE_GUIDANCE, IMAGE_SHIFT, euler_sample, guided
from training.shards import VaeInfo
from training.text import text_encoders


def load_model(checkpoint: str | Path, *, use_ema: bool = True) -> tuple[CrossDiT, dict]:
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        checkpoint = checkpoint / (checkpoint / "latest").read_text().strip()
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = CrossDiT(CONFIGS[state["model_config"]])
    model.load_state_dict(state["ema" if use_ema else "model"])
    return model.eval(), state["config"]


@torch.no_grad()
def sample_image(model: CrossDiT, config: dict, prompt: str, *, vae, vae_info: VaeInfo, height: int = 256,
                 width: int = 256, steps: int = 50, shift: float = IMAGE_SHIFT, guidance: float = IMAGE_GUIDANCE,
                 seed: int = 0) -> tuple[torch.Tensor, Image.Image]:
    text = text_encoders(config["text_encoders"])
    cond, uncond = text.encode([prompt]), text.encode([""])
    c = model.config
    if c.visual_cond or c.instruct_type:
        raise NotImplementedError("image sampling from conditioned (I2V / editing) models is not written yet")

    def velocity(batch):
        return lambda x, t: model(ModelInputs(x, t, batch.hidden, batch.mask, batch.pooled))

    noise = torch.randn(1, 1, height // 8, width // 8, c.in_visual_dim, generator=torch.Generator().manual_seed(seed))
    latent = euler_sample(guided(velocity(cond), velocity(uncond), guidance), noise, steps=steps, shift=shift)
    z = latent[0, 0].permute(2, 0, 1)[None] / vae_info.scaling_factor + vae_info.shift_factor
    pixels = vae.decode(z).sample[0].clamp(-1, 1)
    image = Image.fromarray(((pixels.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))
    return latent, image
