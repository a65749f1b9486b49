"""Supported resolutions of the report (Table 2 for generation, Table 4 for training stages), grouped
into the three tiers the latent shards are sized by, and the resize/crop to the nearest bucket."""

from __future__ import annotations

import math

from PIL import Image

# (height, width)
TIERS: dict[str, tuple[tuple[int, int], ...]] = {
    "low": ((256, 256), (192, 320), (320, 192), (160, 352), (352, 160), (224, 288), (288, 224), (256, 384),
            (384, 256)),
    "medium": ((512, 512), (384, 640), (640, 384), (512, 768), (768, 512)),
    "high": ((1024, 1024), (640, 1408), (1408, 640), (768, 1280), (1280, 768), (896, 1152), (1152, 896)),
}

# samples per tar (report §6.1.1), chosen so that archives come out roughly equal in size
SAMPLES_PER_TAR = {
    "image": {"low": 1024, "medium": 256, "high": 64},
    "video": {"low": 16, "medium": 4, "high": 1},
}


def nearest_bucket(height: int, width: int, tier: str) -> tuple[int, int]:
    """The bucket of ``tier`` whose aspect ratio is closest (in log space) to height/width."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {list(TIERS)}, got {tier!r}")
    aspect = math.log(height / width)
    return min(TIERS[tier], key=lambda hw: (abs(math.log(hw[0] / hw[1]) - aspect), -hw[0] * hw[1]))


def aspect_key(bucket: tuple[int, int]) -> str:
    """A dot-free name of a bucket, e.g. '512x768'."""
    return f"{bucket[0]}x{bucket[1]}"


def resize_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """Scale to cover the bucket, then centre-crop to it exactly."""
    bh, bw = bucket
    scale = max(bh / image.height, bw / image.width)
    w, h = max(bw, round(image.width * scale)), max(bh, round(image.height * scale))
    image = image.convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - bw) // 2, (h - bh) // 2
    return image.crop((left, top, left + bw, top + bh))
