"""Pre-encoding (report §6.1.1): images and scenes → nearest resolution bucket of a tier → VAE latents →
tar shards.

- Images: the FLUX.1 VAE (diffusers ``AutoencoderKL``), ``latent = (z − shift) · scale``.
- Video: the HunyuanVideo 3D VAE (diffusers ``AutoencoderKLHunyuanVideo``: 16 channels, 4× temporal and
  8× spatial compression), ``latent = z · 0.476986`` (no shift, as the Kandinsky code's ``encode_video``).
  A scene is sampled at ``fps`` (24, the models' rate) for ``4k + 1`` frames — at most ``max_seconds``
  (5 s → 121 frames → 31 latent frames; 10 s → 241 → 61), each frame resized/cropped to the bucket.
Both VAEs load from a local folder (or a hub id where the hub is reachable); ``tiny_image_vae()`` /
``tiny_video_vae()`` build the same classes with random weights for tests — never used silently: their
VaeInfo name says ``tiny-random``."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from curation import storage
from training.buckets import nearest_bucket, resize_to_bucket
from training.shards import Sample, ShardInfo, ShardWriter, VaeInfo

FLUX_SCALING, FLUX_SHIFT = 0.3611, 0.1159
HUNYUAN_SCALING = 0.476986
VIDEO_FPS = 24
TEMPORAL_COMPRESSION = 4
SPATIAL_COMPRESSION = 8  # both VAEs (FLUX.1, HunyuanVideo): latent pixels per side


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
    x = x.permute(2, 0, 1)[None].to(vae.device)
    z = vae.encode(x).latent_dist.mode()
    z = (z - info.shift_factor) * info.scaling_factor
    return z[0].permute(1, 2, 0)[None].float().cpu().numpy()


def encode_images(records: Iterable[ImageRecord], vae, info: VaeInfo, *, tier: str, output: str,
                  samples_per_tar: dict[str, int] | None = None) -> list[ShardInfo]:
    writer = ShardWriter(output, modality="image", vae=info, samples_per_tar=samples_per_tar)
    for rec in records:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(storage.read_bytes(rec.uri))))  # upright
        bucket = nearest_bucket(image.height, image.width, tier)
        latent = encode_image(vae, info, resize_to_bucket(image, bucket))
        writer.add(Sample(rec.key, latent, {**rec.meta, "uri": rec.uri, "vae": info.name}), tier=tier, bucket=bucket)
    return writer.close()


@dataclass
class EditPair:
    key: str  # dot-free
    source_uri: str  # the image to edit
    target_uri: str  # the edited image
    instruction: str
    meta: dict


def encode_edit_pairs(pairs: Iterable[EditPair], vae, info: VaeInfo, *, tier: str, output: str,
                      samples_per_tar: dict[str, int] | None = None) -> list[ShardInfo]:
    """Instruct-editing pairs (report §6.3): both images resized/cropped to the target's nearest bucket;
    the sample's latent is the target, its ``reference`` the source's latent, its caption the instruction,
    and the source itself at half size (JPEG) goes along for the text encoder."""
    writer = ShardWriter(output, modality="image", vae=info, samples_per_tar=samples_per_tar)
    for pair in pairs:
        target = ImageOps.exif_transpose(Image.open(io.BytesIO(storage.read_bytes(pair.target_uri))))
        source = ImageOps.exif_transpose(Image.open(io.BytesIO(storage.read_bytes(pair.source_uri))))
        bucket = nearest_bucket(target.height, target.width, tier)
        source = resize_to_bucket(source, bucket)
        half = io.BytesIO()
        source.convert("RGB").resize((bucket[1] // 2, bucket[0] // 2), Image.Resampling.BICUBIC).save(half, "JPEG",
                                                                                                     quality=95)
        writer.add(Sample(pair.key, encode_image(vae, info, resize_to_bucket(target, bucket)),
                          {**pair.meta, "caption": pair.instruction, "uri": pair.target_uri,
                           "source_uri": pair.source_uri, "vae": info.name},
                          reference=encode_image(vae, info, source), source_image=half.getvalue()),
                   tier=tier, bucket=bucket)
    return writer.close()


# --- video -------------------------------------------------------------------------------------------


@dataclass
class SceneRecord:
    key: str  # dot-free
    uri: str  # the video
    start_s: float
    end_s: float
    meta: dict


def load_video_vae(path: str, subfolder: str | None = "vae"):
    """The real HunyuanVideo VAE from a local folder (or a hub id where the hub is reachable)."""
    from diffusers import AutoencoderKLHunyuanVideo

    vae = AutoencoderKLHunyuanVideo.from_pretrained(path, subfolder=subfolder).eval()
    return vae, VaeInfo("hunyuanvideo-vae", vae.config.latent_channels, vae.config.scaling_factor, 0.0)


def tiny_video_vae(seed: int = 0):
    """Random-init AutoencoderKLHunyuanVideo (16 channels, 4× temporal, 8× spatial), tiny widths (tests only)."""
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(latent_channels=16, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                    norm_num_groups=4, mid_block_add_attention=False).eval()
    return vae, VaeInfo("tiny-random-video", 16, HUNYUAN_SCALING, 0.0)


def video_frame_count(seconds: float, fps: int = VIDEO_FPS) -> int:
    """Frames of a ``seconds`` clip as the models count them: ``seconds·fps // 4 · 4 + 1`` (5 s → 121,
    10 s → 241; the latent has ``seconds·fps // 4 + 1`` frames)."""
    return int(round(seconds * fps, 6)) // TEMPORAL_COMPRESSION * TEMPORAL_COMPRESSION + 1


def scene_frame_count(duration_s: float, max_seconds: float, fps: int = VIDEO_FPS) -> int:
    """Frames (4k + 1) taken from a scene: ``video_frame_count(max_seconds)`` when the scene is long
    enough, else the most of that form among the frames it holds."""
    held = int(round(duration_s * fps, 6))
    return max(1, min(video_frame_count(max_seconds, fps), (held - 1) // TEMPORAL_COMPRESSION * TEMPORAL_COMPRESSION + 1))


@torch.no_grad()
def encode_video(vae, info: VaeInfo, frames: np.ndarray) -> np.ndarray:
    """[T', h, w, C] scaled latent (mode) of uint8 RGB frames [T, H, W, 3], T = 4k + 1, already at the bucket size."""
    if (frames.shape[0] - 1) % TEMPORAL_COMPRESSION:
        raise ValueError(f"a video latent needs 4k + 1 frames, got {frames.shape[0]}")
    x = torch.from_numpy(frames.astype(np.float32) / 127.5 - 1.0).permute(3, 0, 1, 2)[None]  # 1, 3, T, H, W
    z = vae.encode(x.to(vae.device)).latent_dist.mode() * info.scaling_factor  # 1, C, T', h, w
    return z[0].permute(1, 2, 3, 0).float().cpu().numpy()


def scene_frames_at_fps(path, rec: SceneRecord, *, fps: int, max_seconds: float) -> np.ndarray:
    from curation.video import frames_at

    times = [rec.start_s + k / fps for k in range(scene_frame_count(rec.end_s - rec.start_s, max_seconds, fps))]
    frames = frames_at(path, times, end_s=rec.end_s, what=f"{rec.key} ({rec.uri})")
    return np.stack([f.pixels for f in frames])


def encode_scenes(records: Iterable[SceneRecord], vae, info: VaeInfo, *, tier: str, output: str,
                  fps: int = VIDEO_FPS, max_seconds: float = 5.0, scratch=None,
                  samples_per_tar: dict[str, int] | None = None) -> list[ShardInfo]:
    import tempfile
    from pathlib import Path

    writer = ShardWriter(output, modality="video", vae=info, samples_per_tar=samples_per_tar)
    with tempfile.TemporaryDirectory() as tmp:
        for rec in records:
            path = storage.local_file(rec.uri, Path(scratch or tmp))
            frames = scene_frames_at_fps(path, rec, fps=fps, max_seconds=max_seconds)
            bucket = nearest_bucket(frames.shape[1], frames.shape[2], tier)
            sized = np.stack([np.asarray(resize_to_bucket(Image.fromarray(f), bucket)) for f in frames])
            latent = encode_video(vae, info, sized)
            writer.add(Sample(rec.key, latent, {**rec.meta, "uri": rec.uri, "start_s": rec.start_s, "fps": fps,
                                                "frames": len(frames), "vae": info.name}), tier=tier, bucket=bucket)
    return writer.close()
