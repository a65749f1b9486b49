"""Pre-encoding (report §6.1.1): images → nearest resolution bucket of a tier → VAE latents → tar
shards. The FLUX.1 VAE is loaded with diffusers from a local folder or hub id; ``tiny_image_vae()``
builds the same class (``AutoencoderKL``, FLUX layout: 16 latent channels, no quant convs) with random
weights for tests — never used silently: its VaeInfo name says ``tiny-random``."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from curation import storage
from training.buckets import nearest_bucket, resize_to_bucket
from training.shards import Sample, ShardInfo, ShardWriter, VaeInfo

FLUX_SCALING, FLUX_SHIFT = 0.3611, 0.1159


@dataclass
class ImageRecord:
    key: str  # dot-free
    uri: str
    meta: dict


def safe_key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def load_image_vae(path: str, subfolder: str | None = "vae"):
    """The real FLUX.1 VAE from a local folder (or a hub id where the hub is reachable)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(path, subfolder=subfolder).eval()
    cfg = vae.config
    return vae, VaeInfo("flux1-vae", cfg.latent_channels, cfg.scaling_factor, cfg.shift_factor or 0.0)


def tiny_image_vae(seed: int = 0):
    """Random-init AutoencoderKL with the FLUX layout, a few thousand parameters (tests only)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=FLUX_SCALING, shift_factor=FLUX_SHIFT,
    ).eval()
    return vae, VaeInfo("tiny-random", 16, FLUX_SCALING, FLUX_SHIFT)


@torch.no_grad()
def encode_image(vae, info: VaeInfo, image: Image.Image) -> np.ndarray:
    """[1, h, w, C] scaled latent (the distribution's mode) of an RGB image already at its bucket size."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
    x = x.permute(2, 0, 1)[None]
    z = vae.encode(x).latent_dist.mode()
    z = (z - info.shift_factor) * info.scaling_factor
    return z[0].permute(1, 2, 0)[None].numpy()


def encode_images(records: Iterable[ImageRecord], vae, info: VaeInfo, *, tier: str, output: str,
                  samples_per_tar: dict[str, int] | None = None) -> list[ShardInfo]:
    writer = ShardWriter(output, modality="image", vae=info, samples_per_tar=samples_per_tar)
    for rec in records:
        image = Image.open(io.BytesIO(storage.read_bytes(rec.uri)))
        bucket = nearest_bucket(image.height, image.width, tier)
        latent = encode_image(vae, info, resize_to_bucket(image, bucket))
        writer.add(Sample(rec.key, latent, {**rec.meta, "uri": rec.uri, "vae": info.name}), tier=tier, bucket=bucket)
    return writer.close()
