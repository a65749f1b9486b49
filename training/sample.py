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
from training.model import CrossDiT, ModelInputs, rope_scale
from training.buckets import resize_to_bucket
from training.conditioning import edit_input, first_frame_mask, image_to_video_input, text_to_video_input
from training.encode import TEMPORAL_COMPRESSION, VIDEO_FPS, encode_image, encode_video
from training.sampler import IMAGE_GUIDANCE, IMAGE_SHIFT, VIDEO_GUIDANCE, VIDEO_SHIFT, euler_sample, guided
from training.shards import VaeInfo
from training.distributed import read_rank_progress
from training.text import text_encoders
from training.train import autocast_context, place_text_encoders, resolve_checkpoint


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(checkpoint: str | Path, *, use_ema: bool = True, device=None,
               model_config: str | None = None) -> tuple[CrossDiT, dict]:
    """The model of a checkpoint file, a sharded (FSDP) checkpoint folder, or a run folder (its latest): the
    EMA weights (``use_ema``, the default) or the raw ones, on ``device`` (default: the GPU if any). A released
    Kandinsky 5.0 ``.safetensors`` file (``training.official``) loads strictly into ``model_config``, with the
    default training settings (the report's text encoders, NABLA as the report)."""
    if str(checkpoint).endswith(".safetensors"):
        import dataclasses

        from training.official import load_official
        from training.train import TrainConfig

        if model_config not in CONFIGS:
            raise ValueError(f"an official checkpoint needs its model config, one of {sorted(CONFIGS)}")
        model = load_official(CrossDiT(CONFIGS[model_config]), checkpoint)
        return model.to(device or default_device()).eval(), dataclasses.asdict(TrainConfig(model=model_config))
    state = load_checkpoint(checkpoint)
    model = CrossDiT(CONFIGS[state["model_config"]])
    model.load_state_dict(state["ema" if use_ema else "model"])
    return model.to(device or default_device()).eval(), state["config"]


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


class _Sampling:
    """What every sampling call needs on the model's device: the text encoders, autocast, the velocity of
    one text batch (NABLA and RoPE scaling as in training)."""

    def __init__(self, model: CrossDiT, config: dict, latent_frames: int, height: int, width: int):
        self.model, self.device = model, next(model.parameters()).device
        self.text = place_text_encoders(text_encoders(config["text_encoders"]), self.device)
        self.autocast = autocast_context(self.device, config.get("precision", "auto"), config.get("tf32", True))
        self.nabla = nabla_for(config, latent_frames, height, width)
        self.rope_scale = rope_scale(model.config, height, width)

    def encode(self, prompt: str, content: str, images=None):
        return self.text.encode([prompt], content, images).to(self.device)

    def velocity(self, batch, build):
        def v(x, t):
            with self.autocast():
                inputs = ModelInputs(build(x), t, batch.hidden, batch.mask, batch.pooled)
                return self.model(inputs, nabla=self.nabla, rope_scale=self.rope_scale).float()
        return v

    def noise(self, shape, seed: int) -> torch.Tensor:
        """Drawn on the CPU generator (the same sample on any device), then moved."""
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.device)


def decode_latent(vae, vae_info: VaeInfo, latent: torch.Tensor) -> np.ndarray:
    """Latent [1, T, h, w, C] → uint8 RGB [T', H, W, 3] (an image VAE decodes T = 1)."""
    if "temporal_compression_ratio" not in vae.config:  # an image VAE (FLUX.1): one frame, 4-D
        z = latent[0, 0].permute(2, 0, 1)[None] / vae_info.scaling_factor + vae_info.shift_factor
        pixels = vae.decode(z.to(vae.device, vae.dtype)).sample.float().cpu().clamp(-1, 1)[:, :, None]  # 1, 3, 1, H, W
    else:
        z = latent[0].permute(3, 0, 1, 2)[None] / vae_info.scaling_factor + vae_info.shift_factor  # 1, C, T, h, w
        pixels = vae.decode(z.to(vae.device, vae.dtype)).sample.float().cpu().clamp(-1, 1)  # 1, 3, T', H, W
    return ((pixels[0].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


@torch.no_grad()
def image_latent(model: CrossDiT, config: dict, prompt: str, *, height: int = 256, width: int = 256,
                 steps: int = 50, shift: float = IMAGE_SHIFT, guidance: float = IMAGE_GUIDANCE, seed: int = 0,
                 reference: torch.Tensor | None = None, source_half: Image.Image | None = None) -> torch.Tensor:
    """The sampled latent [1, 1, h, w, C] of text-to-image, or of instruct editing with ``reference`` (the
    source's latent [1, 1, h, w, C]) and ``source_half`` (the source at half size, for the text encoder)."""
    c = model.config
    if c.visual_cond:
        raise ValueError("this is a video model: sample it to an .mp4")
    if reference is not None and c.instruct_type != "channel":
        raise ValueError("an image to edit needs an editing model (instruct_type 'channel')")
    run = _Sampling(model, config, 1, height, width)
    if reference is not None:
        half = [source_half] if source_half is not None else None
        cond, uncond = run.encode(prompt, "image_edit", half), run.encode("", "image_edit", half)
        reference = reference.to(run.device)
        build = lambda x: edit_input(x, reference)  # noqa: E731
    else:
        cond, uncond = run.encode(prompt, "image"), run.encode("", "image")
        build = (lambda x: edit_input(x, None)) if c.instruct_type == "channel" else (lambda x: x)
    noise = run.noise((1, 1, height // 8, width // 8, c.out_visual_dim), seed)
    return euler_sample(guided(run.velocity(cond, build), run.velocity(uncond, build), guidance), noise,
                        steps=steps, shift=shift)


@torch.no_grad()
def sample_image(model: CrossDiT, config: dict, prompt: str, *, vae, vae_info: VaeInfo, height: int = 256,
                 width: int = 256, steps: int = 50, shift: float = IMAGE_SHIFT, guidance: float = IMAGE_GUIDANCE,
                 seed: int = 0, edit_image: Image.Image | None = None) -> tuple[torch.Tensor, Image.Image]:
    """Text-to-image; with ``edit_image``, instruct editing on an editing model (``prompt`` is the
    instruction): the image, resized/cropped to the output size, is the reference latent, and the text
    encoder sees it at half size in the ``image_edit`` template (unconditional branch: "" with the image)."""
    reference = half = None
    if edit_image is not None:
        if model.config.instruct_type != "channel":
            raise ValueError("an image to edit needs an editing model (instruct_type 'channel')")
        source = resize_to_bucket(edit_image.convert("RGB"), (height, width))
        half = source.resize((width // 2, height // 2), Image.Resampling.BICUBIC)
        reference = torch.from_numpy(encode_image(vae, vae_info, source))[None]  # 1, 1, h, w, C
    latent = image_latent(model, config, prompt, height=height, width=width, steps=steps, shift=shift,
                          guidance=guidance, seed=seed, reference=reference, source_half=half)
    return latent, Image.fromarray(decode_latent(vae, vae_info, latent)[0])


def nabla_for(config: dict, latent_frames: int, height: int, width: int) -> NablaParams | None:
    """NABLA settings for sampling a clip, by the run's ``nabla_when`` / ``nabla`` (as in training)."""
    if nabla_enabled(config.get("nabla_when", "report"), latent_frames, height, width):
        return NablaParams(**(config.get("nabla") or {}))
    return None


def latent_frames(seconds: float, fps: int = VIDEO_FPS) -> int:
    """``seconds · 24 // 4 + 1`` latent frames (the official pipelines: 31 for 5 s, 61 for 10 s)."""
    return int(seconds * fps) // TEMPORAL_COMPRESSION + 1


@torch.no_grad()
def video_latent(model: CrossDiT, config: dict, prompt: str, *, height: int = 256, width: int = 256,
                 seconds: float = 5.0, steps: int = 50, shift: float = VIDEO_SHIFT, guidance: float = VIDEO_GUIDANCE,
                 seed: int = 0, first: torch.Tensor | None = None) -> torch.Tensor:
    """The sampled latent [1, T, h, w, C] of text-to-video, or image-to-video from ``first`` (the first
    frame's latent [1, 1, h, w, C], kept clean at every step; ``image2video`` template)."""
    c = model.config
    if c.instruct_type:
        raise ValueError("video sampling needs a video model, not an editing one")
    T = latent_frames(seconds)
    run = _Sampling(model, config, T, height, width)
    fixed = fixed_mask = None
    if first is not None:
        if not c.visual_cond:
            raise ValueError("a first frame needs an image-to-video model (visual_cond)")
        first = first.to(run.device)
        cond, uncond = run.encode(prompt, "image2video"), run.encode("", "image2video")
        build = lambda x: image_to_video_input(x, first)  # noqa: E731
        fixed = torch.cat([first, first.new_zeros(1, T - 1, *first.shape[2:])], dim=1)
        fixed_mask = first_frame_mask(fixed).expand_as(fixed)
    else:
        cond, uncond = run.encode(prompt, "video"), run.encode("", "video")
        build = text_to_video_input if c.visual_cond else (lambda x: x)
    noise = run.noise((1, T, height // 8, width // 8, c.out_visual_dim), seed)
    latent = euler_sample(guided(run.velocity(cond, build), run.velocity(uncond, build), guidance), noise,
                          steps=steps, shift=shift, fixed=fixed, fixed_mask=fixed_mask)
    return normalize_first_frame(latent) if first is not None else latent


FIRST_FRAMES = 4  # latent frames renormalised after image-to-video sampling (the official inference)
# how far each first frame's mean / std may move towards the reference frames' (official constants)
MEAN_SHIFT = (-0.05, 0.1)
STD_SHIFT = (-0.1, 0.25)


def normalize_first_frame(latent: torch.Tensor, reference_frames: int = 5) -> torch.Tensor:
    """The official I2V post-processing: each of the first 4 latent frames is standardised (mean and std
    over h, w, C) and given the mean and std of the next ``reference_frames`` frames, each moved at most
    by ``MEAN_SHIFT`` / ``STD_SHIFT`` from the frame's own, so the clean given frame blends in.
    ``latent``: [B, T, h, w, C]."""
    out = latent.clone()
    if latent.shape[1] <= 1:
        return out
    for b in range(latent.shape[0]):
        first = latent[b, :FIRST_FRAMES]
        ref = latent[b, FIRST_FRAMES: FIRST_FRAMES + min(reference_frames, latent.shape[1] - 1)]
        if ref.numel() < 2:
            continue
        mean, std = first.mean((1, 2, 3), keepdim=True), first.std((1, 2, 3), keepdim=True)
        target_mean = torch.clamp(ref.mean(), mean + MEAN_SHIFT[0], mean + MEAN_SHIFT[1])
        target_std = torch.clamp(ref.std(), std + STD_SHIFT[0], std + STD_SHIFT[1])
        out[b, :FIRST_FRAMES] = (first - mean) / std * target_std + target_mean
    return out


@torch.no_grad()
def sample_video(model: CrossDiT, config: dict, prompt: str, *, vae, vae_info: VaeInfo, height: int = 256,
                 width: int = 256, seconds: float = 5.0, steps: int = 50, shift: float = VIDEO_SHIFT,
                 guidance: float = VIDEO_GUIDANCE, seed: int = 0,
                 first_image: Image.Image | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Latent [1, T, h, w, C] and uint8 RGB frames [4(T − 1) + 1, H, W, 3] of a text-to-video sample; with
    ``first_image`` (an I2V-capable model), image-to-video: the image's latent is latent frame 0, kept
    clean at every step, with the ``image2video`` template."""
    first = None
    if first_image is not None:
        if not model.config.visual_cond:
            raise ValueError("a first frame needs an image-to-video model (visual_cond)")
        frame = np.asarray(resize_to_bucket(first_image.convert("RGB"), (height, width)))[None]
        first = torch.from_numpy(encode_video(vae, vae_info, frame))[None]  # 1, 1, h, w, C
    latent = video_latent(model, config, prompt, height=height, width=width, seconds=seconds, steps=steps,
                          shift=shift, guidance=guidance, seed=seed, first=first)
    return latent, decode_latent(vae, vae_info, latent)


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
