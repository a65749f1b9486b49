"""Text conditioning: a pair of encoders computed online (report §6.1.1) — token hidden states for
cross-attention (Qwen2.5-VL-7B in the report) and a pooled vector added to the time embedding (CLIP
ViT-L/14) — behind one small interface, so the trainer does not care which pair it gets.

Pairs (``text_encoders(name)``):
- ``qwen2.5-vl+clip``: ``QwenClipTextEncoders`` on Qwen2.5-VL-7B-Instruct (``models.qwen_vl``) and CLIP
  ViT-L/14's text tower (``models.clip_text``), as the Kandinsky 5 code does it: the caption goes into a
  per-content system-prompt template (``PROMPT_TEMPLATES``, the code's spelling kept — the crop counts
  depend on it), the last hidden state is taken and the template's prefix, ``CROP_START`` tokens, is cut
  off; at most ``MAX_LENGTH`` caption tokens (512 for images, 256 for video), padded to the longest in the
  batch with a key-padding mask. CLIP gets the raw caption, padded to 77, and gives ``pooler_output``.
- ``tiny-hf``: the same class on the tiny random Qwen2.5-VL and CLIP (widths 48 / 24, the tiny CrossDiT's);
  the crop is the tokenised prefix length of its own tokenizer — tests only.
- ``tiny``: ``TinyTextEncoders``, a deterministic random byte-level encoder, for fast tests and CPU smoke runs.
The unconditional branch (10 % of training samples, and CFG at sampling) is the encoding of ``""``
through the same template, not zeros (trainer spec §1.7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


@dataclass
class TextBatch:
    hidden: torch.Tensor  # [B, L, in_text_dim]
    mask: torch.Tensor  # [B, L] bool, True = real token
    pooled: torch.Tensor  # [B, in_text_dim2]

    def to(self, device) -> "TextBatch":
        return TextBatch(self.hidden.to(device), self.mask.to(device), self.pooled.to(device))


CONTENT_TYPES = ("image", "video", "image2video", "image_edit")

_VIDEO_LINES = (
    "Describe how the camera moves or shakes, describe the zoom and view angle, whether it follows the objects.",
    "Describe the location of the video, main characters or objects and their action.",
    "Describe the dynamism of the video and presented actions.",
    "Name the visual style of the video: whether it is a professional footage, user generated content, some kind of "
    "animation, video game or scren content.",
    "Describe the visual effects, postprocessing and transitions if they are presented in the video.",
    "Pay attention to the order of key actions shown in the scene.<|im_end|>",
    "<|im_start|>user\n{}<|im_end|>",
)
# Kandinsky 5's ``PROMPT_TEMPLATE["template"]`` lines, joined with "\n" and formatted with the caption
PROMPT_TEMPLATES = {
    "image": "\n".join((
        "<|im_start|>system\nYou are a promt engineer. Describe the image by detailing the color, shape, size, "
        "texture, quantity, text, spatial relationships of the objects and background:<|im_end|>",
        "<|im_start|>user\n{}<|im_end|>")),
    "video": "\n".join(("<|im_start|>system\nYou are a promt engineer. Describe the video in detail.", *_VIDEO_LINES)),
    "image2video": "\n".join((
        "<|im_start|>system\nYou are a promt engineer. Your task is to create a highly detailed and effective video "
        "description based on a provided input image.", _VIDEO_LINES[0], "Describe main characters actions.",
        *_VIDEO_LINES[2:])),
    "image_edit": "\n".join((
        "<|im_start|>system\nYou are a promt engineer. Based on the provided source image (first image) and target "
        "image (second image), create an interesting text prompt that can be used together with the source image "
        "to create the target image:<|im_end|>",
        "<|im_start|>user\n{}")),
}
VISION_TOKENS = "<|vision_start|><|image_pad|><|vision_end|>"  # one image; the processor expands the pad
CROP_START = {"video": 129, "image": 41, "image_edit": 55, "image2video": 132}  # Qwen2.5-VL tokens of the prefix
MAX_LENGTH = {"image": 512, "image_edit": 512, "video": 256, "image2video": 256}  # caption tokens


class TextEncoders(Protocol):
    name: str

    def encode(self, prompts: list[str], content: str = "image", images: list | None = None) -> TextBatch: ...


class TinyTextEncoders(nn.Module):
    """Bytes → embedding → one transformer layer (hidden states); mean of the states → linear (pooled).
    Random and frozen. The empty prompt encodes to one padding-free token, like a template would."""

    name = "tiny-random"

    def __init__(self, hidden_dim: int = 48, pooled_dim: int = 24, max_length: int = 32, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.max_length = max_length
        self.embed = nn.Embedding(257, hidden_dim)
        self.layer = nn.TransformerEncoderLayer(hidden_dim, nhead=2, dim_feedforward=2 * hidden_dim, batch_first=True,
                                                dropout=0.0)
        self.pool = nn.Linear(hidden_dim, pooled_dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def encode(self, prompts: list[str], content: str = "image", images: list | None = None) -> TextBatch:
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for i, p in enumerate(prompts):
            data = list(p.encode("utf-8")[: self.max_length - 1])
            row = [256] + [b for b in data]  # a start token, so even "" has one real token
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        ids, mask = ids.to(self.embed.weight.device), mask.to(self.embed.weight.device)
        hidden = self.layer(self.embed(ids), src_key_padding_mask=~mask)
        pooled = self.pool((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
        return TextBatch(hidden, mask, pooled)


class QwenClipTextEncoders:
    """Qwen2.5-VL hidden states (cross-attention) + CLIP pooled embedding (time modulation)."""

    def __init__(self, qwen, clip, crop_start: dict[str, int] | None = None):
        self.qwen, self.clip = qwen, clip
        self.name = f"{qwen.name}+{clip.name}"
        tok = qwen.tokenizer
        self.crop_start = crop_start or {
            c: len(tok(t.split("{}")[0], add_special_tokens=False)["input_ids"]) for c, t in PROMPT_TEMPLATES.items()}

    @torch.no_grad()
    def encode(self, prompts: list[str], content: str = "image", images: list | None = None) -> TextBatch:
        """``images``: for ``image_edit``, one PIL source image per prompt (already halved), given to
        Qwen after the instruction as the Kandinsky code does (no length cap then)."""
        if content not in PROMPT_TEMPLATES:
            raise ValueError(f"content must be one of {CONTENT_TYPES}, not {content!r}")
        crop = self.crop_start[content]
        if images is not None:
            if content != "image_edit" or len(images) != len(prompts):
                raise ValueError("images go with content 'image_edit', one per prompt")
            texts = [PROMPT_TEMPLATES[content].format(p + VISION_TOKENS + "<|im_end|>") for p in prompts]
            inputs = self.qwen.processor(text=texts, images=[im.convert("RGB") for im in images], padding=True,
                                         return_tensors="pt")
        else:
            texts = [PROMPT_TEMPLATES[content].format(p) for p in prompts]
            inputs = self.qwen.tokenizer(texts, max_length=MAX_LENGTH[content] + crop, truncation=True,
                                         padding=True, return_tensors="pt")
        inputs = {k: v.to(self.qwen.device) for k, v in inputs.items()}
        attn = inputs["attention_mask"]
        states = self.qwen.model.model(**inputs, output_hidden_states=True).hidden_states[-1]
        hidden, mask = states[:, crop:].float(), attn[:, crop:].bool()
        return TextBatch(hidden.cpu(), mask.cpu(), self.clip.pooled(prompts).cpu())


def text_encoders(name: str, **kwargs) -> TextEncoders:
    """``tiny`` | ``tiny-hf`` | ``qwen2.5-vl+clip`` (see the module docstring)."""
    if name == "tiny":
        return TinyTextEncoders(**kwargs)
    from models import clip_text, qwen_vl

    if name == "tiny-hf":
        return QwenClipTextEncoders(qwen_vl.load_qwen_vl(qwen_vl.TINY), clip_text.load_clip_text(clip_text.TINY))
    if name == "qwen2.5-vl+clip":
        return QwenClipTextEncoders(qwen_vl.load_qwen_vl(qwen_vl.REAL), clip_text.load_clip_text(clip_text.REAL),
                                    crop_start=CROP_START)
    raise ValueError(f"unknown text encoder pair {name!r}: one of tiny, tiny-hf, qwen2.5-vl+clip")
