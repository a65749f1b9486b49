"""Sampling from a checkpoint: text → CrossDiT (EMA weights) → shifted Euler with CFG → latent → VAE
decode → PNG (``sample_image``, FLUX VAE; text-to-image, or instruct editing of a given image) or H.264 MP4
at 24 fps (``sample_video``, HunyuanVideo VAE; text-to-video with the 33-channel input ``[x_t, 0, 0]``, or
image-to-video from a first frame kept clean at every step)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.attention import NablaParams, nabla_enabled
from training.configs import CONFIGS
from training.model import CrossDiT, ModelInputs
from training.buckets import resize_to_bucket
from training.conditioning import edit_input, first_frame_mask, image_to_video_input, text_to_video_input
from training.encode import TEMPORAL_COMPRESSION, VIDEO_FPS, encode_image, encode_video
from training.sampler import IMAGE_GUIDANCE, IMAGE_SHIFT, VIDEO_GUIDANCE, VIDEO_SHIFT, euler_sample, guided
from training.shards import VaeInfo
from training.distributed import read_rank_progress
from training.text import text_encoders
from training.train import resolve_checkpoint


def load_model(checkpoint: str | Path, *, use_ema: bool = True) -> tuple[CrossDiT, dict]:
    """The model of a checkpoint file, a sharded (FSDP) checkpoint folder, or a run folder (its latest)."""
    state = load_checkpoint(checkpoint)
    model = CrossDiT(CONFIGS[state["model_config"]])
    model.load_state_dict(state["ema" if use_ema else "model"])
    return model.eval(), state["config"]


def load_checkpoint(checkpoint: str | Path) -> dict:
    """A checkpoint as one dict (model, ema, opt, config, model_config, step, ...), from a file, a sharded
    (FSDP) checkpoint folder gathered in this process, or a run folder (its latest)."""
    checkpoint = resolve_checkpoint(checkpoint)
    if checkpoint.is_dir():  # DCP shards: gather them into one state dict in this process
        import tempfile

        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(checkpoint, Path(tmp) / "full.pt")
            state = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=False)
        return {**read_rank_progress(checkpoint, 0), **state}
    return torch.load(checkpoint, map_location="cpu", weights_only=False)


@torch.no_grad()
def sample_image(model: CrossDiT, config: dict, prompt: str, *, vae, vae_info: VaeInfo, height: int = 256,
                 width: int = 256, steps: int = 50, shift: float = IMAGE_SHIFT, guidance: float = IMAGE_GUIDANCE,
                 seed: int = 0, edit_image: Image.Image | None = None) -> tuple[torch.Tensor, Image.Image]:
    """Text-to-image; with ``edit_image``, instruct editing on an editing model (``prompt`` is the
    instruction): the image, resized/cropped to the output size, is the reference latent, and the text
    encoder sees it at half size in the ``image_edit`` template (unconditional branch: "" with the image)."""
    text = text_encoders(config["text_encoders"])
    c = model.config
    if c.visual_cond:
        raise ValueError("this is a video model: sample it to an .mp4")
    if edit_image is not None and c.instruct_type != "channel":
        raise ValueError("an image to edit needs an editing model (instruct_type 'channel')")
    if edit_image is not None:
        source = resize_to_bucket(edit_image.convert("RGB"), (height, width))
        half = [source.resize((width // 2, height // 2), Image.Resampling.BICUBIC)]
        cond, uncond = text.encode([prompt], "image_edit", half), text.encode([""], "image_edit", half)
        reference = torch.from_numpy(encode_image(vae, vae_info, source))[None]  # 1, 1, h, w, C
        build = lambda x: edit_input(x, reference)  # noqa: E731
    else:
        cond, uncond = text.encode([prompt]), text.encode([""])
        build = (lambda x: edit_input(x, None)) if c.instruct_type == "channel" else (lambda x: x)

    def velocity(batch):
        return lambda x, t: model(ModelInputs(build(x), t, batch.hidden, batch.mask, batch.pooled))

    noise = torch.randn(1, 1, height // 8, width // 8, c.out_visual_dim, generator=torch.Generator().manual_seed(seed))
    latent = euler_sample(guided(velocity(cond), velocity(uncond), guidance), noise, steps=steps, shift=shift)
    z = latent[0, 0].permute(2, 0, 1)[None] / vae_info.scaling_factor + vae_info.shift_factor
    pixels = vae.decode(z).sample[0].clamp(-1, 1)
    image = Image.fromarray(((pixels.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))
    return latent, image


def nabla_for(config: dict, latent_frames: int, height: int, width: int) -> NablaParams | None:
    """NABLA settings for sampling a clip, by the run's ``nabla_when`` / ``nabla`` (as in training)."""
    if nabla_enabled(config.get("nabla_when", "report"), latent_frames, height, width):
        return NablaParams(**(config.get("nabla") or {}))
    return None


def latent_frames(seconds: float, fps: int = VIDEO_FPS) -> int:
    """``seconds · 24 // 4 + 1`` latent frames (the official pipelines: 31 for 5 s, 61 for 10 s)."""
    return int(seconds * fps) // TEMPORAL_COMPRESSION + 1


@torch.no_grad()
def sample_video(model: CrossDiT, config: dict, prompt: str, *, vae, vae_info: VaeInfo, height: int = 256,
                 width: int = 256, seconds: float = 5.0, steps: int = 50, shift: float = VIDEO_SHIFT,
                 guidance: float = VIDEO_GUIDANCE, seed: int = 0,
                 first_image: Image.Image | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Latent [1, T, h, w, C] and uint8 RGB frames [4(T − 1) + 1, H, W, 3] of a text-to-video sample; with
    ``first_image`` (an I2V-capable model), image-to-video: the image's latent is latent frame 0, kept
    clean at every step, with the ``image2video`` template."""
    text = text_encoders(config["text_encoders"])
    c = model.config
    if c.instruct_type:
        raise ValueError("video sampling needs a video model, not an editing one")
    fixed = fixed_mask = None
    T = latent_frames(seconds)
    if first_image is not None:
        if not c.visual_cond:
            raise ValueError("a first frame needs an image-to-video model (visual_cond)")
        frame = np.asarray(resize_to_bucket(first_image.convert("RGB"), (height, width)))[None]
        first = torch.from_numpy(encode_video(vae, vae_info, frame))[None]  # 1, 1, h, w, C
        cond, uncond = text.encode([prompt], "image2video"), text.encode([""], "image2video")
        build = lambda x: image_to_video_input(x, first)  # noqa: E731
        fixed = torch.cat([first, torch.zeros(1, T - 1, *first.shape[2:])], dim=1)
        fixed_mask = first_frame_mask(fixed).expand_as(fixed)
    else:
        cond, uncond = text.encode([prompt], "video"), text.encode([""], "video")
        build = text_to_video_input if c.visual_cond else (lambda x: x)

    nabla = nabla_for(config, T, height, width)

    def velocity(batch):
        return lambda x, t: model(ModelInputs(build(x), t, batch.hidden, batch.mask, batch.pooled), nabla=nabla)

    noise = torch.randn(1, T, height // 8, width // 8, c.out_visual_dim, generator=torch.Generator().manual_seed(seed))
    latent = euler_sample(guided(velocity(cond), velocity(uncond), guidance), noise, steps=steps, shift=shift,
                          fixed=fixed, fixed_mask=fixed_mask)
    z = latent[0].permute(3, 0, 1, 2)[None] / vae_info.scaling_factor + vae_info.shift_factor  # 1, C, T, h, w
    pixels = vae.decode(z).sample[0].clamp(-1, 1)  # 3, T', H, W
    frames = ((pixels.permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    return latent, frames


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = VIDEO_FPS, crf: int = 18) -> None:
    """H.264 (yuv420p) with PyAV; odd sizes are padded by one pixel (the encoder needs even sizes)."""
    import av

    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(crf)}
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
