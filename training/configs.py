"""Model sizes of Kandinsky 5.0 (report Table 3; the official configs) and a tiny CPU recipe, in a
registry whose keys double as the CLI's choices. ``param_count`` is the closed-form count; building
the model on the ``meta`` device reproduces it exactly (tests/test_training_model.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class CrossDiTConfig:
    model_dim: int
    ff_dim: int
    time_dim: int
    num_visual_blocks: int
    num_text_blocks: int
    axes_dims: tuple[int, int, int]  # rotary dims of (t, h, w); their sum is the head dim
    in_visual_dim: int = 16  # VAE latent channels
    out_visual_dim: int = 16
    in_text_dim: int = 3584  # Qwen2.5-VL-7B hidden size
    in_text_dim2: int = 768  # CLIP ViT-L/14 pooled text embedding
    patch_size: tuple[int, int, int] = (1, 2, 2)
    visual_cond: bool = False  # image-to-video: + C condition channels + 1 mask channel
    instruct_type: str | None = None  # "channel": editing, reference latent + mask channel

    @property
    def head_dim(self) -> int:
        return sum(self.axes_dims)

    @property
    def num_heads(self) -> int:
        if self.model_dim % self.head_dim:
            raise ValueError(f"model_dim {self.model_dim} is not a multiple of head_dim {self.head_dim}")
        return self.model_dim // self.head_dim

    @property
    def in_channels(self) -> int:
        extra = self.visual_cond or self.instruct_type == "channel"
        return 2 * self.in_visual_dim + 1 if extra else self.in_visual_dim

    @property
    def patch_volume(self) -> int:
        pt, ph, pw = self.patch_size
        return pt * ph * pw


VIDEO_LITE = CrossDiTConfig(model_dim=1792, ff_dim=7168, time_dim=512, num_visual_blocks=32, num_text_blocks=2,
                            axes_dims=(16, 24, 24), visual_cond=True)
IMAGE_LITE = CrossDiTConfig(model_dim=2560, ff_dim=10240, time_dim=512, num_visual_blocks=50, num_text_blocks=2,
                            axes_dims=(32, 48, 48))
VIDEO_PRO = CrossDiTConfig(model_dim=4096, ff_dim=16384, time_dim=1024, num_visual_blocks=60, num_text_blocks=4,
                           axes_dims=(32, 48, 48), visual_cond=True)
TINY = CrossDiTConfig(model_dim=64, ff_dim=256, time_dim=32, num_visual_blocks=2, num_text_blocks=1,
                      axes_dims=(8, 12, 12), in_text_dim=48, in_text_dim2=24)

CONFIGS: dict[str, CrossDiTConfig] = {
    "video-lite": VIDEO_LITE,  # T2V and I2V share the 33-channel input
    "image-lite": IMAGE_LITE,
    "image-lite-edit": replace(IMAGE_LITE, instruct_type="channel"),
    "video-pro": VIDEO_PRO,
    "tiny": TINY,
    "tiny-i2v": replace(TINY, visual_cond=True),
    "tiny-edit": replace(TINY, instruct_type="channel"),
}


def param_count(c: CrossDiTConfig) -> int:
    """Closed-form parameter count of the architecture in ``training/model.py``."""
    d, t, f, h, p = c.model_dim, c.time_dim, c.ff_dim, c.head_dim, c.patch_volume
    time = d * t + t + t * t + t
    text = c.in_text_dim * d + d + 2 * d
    pooled = c.in_text_dim2 * t + t + 2 * t
    vis_in = p * c.in_channels * d + d
    attn = 4 * (d * d + d) + 2 * h
    ffn = 2 * d * f
    ltf = 6 * (t * d + d) + attn + ffn
    crossdit = 9 * (t * d + d) + 2 * attn + ffn
    out = 2 * (t * d + d) + d * p * c.out_visual_dim + p * c.out_visual_dim
    return time + text + pooled + vis_in + c.num_text_blocks * ltf + c.num_visual_blocks * crossdit + out
