"""DINOv2 image embeddings (registry family ``dino``) for the editing-pair mining of report §4.3: "DINO
Score [74]: computed visual similarity using DINOv2 features" (``dino_sim > 0.8`` with LoFTR inliers,
``dino_sim > 0.97`` excludes near-copies).

- ``dinov2-small`` / ``dinov2-base`` / ``dinov2-large``: ``transformers.Dinov2Model`` + its image processor
  (resize the short side to 256, centre-crop 224, ImageNet normalisation), ``from_pretrained`` of the weights
  folder (a Hugging Face snapshot of ``facebook/dinov2-*``): 384-, 768- and 1024-d embeddings.
- ``dinov2-tiny-random``: the same class from a tiny config (2 layers of width 32, 8 px patches, 32 px
  input), random weights: 32-d embeddings whose similarities mean nothing — tests only
  (``CURATION_ALLOW_TINY_MODELS=1``), so a real job can never run it by mistake.

The embedding is the **CLS token** of the last layer after the final layer norm (``pooler_output``; DINOv2's
``x_norm_clstoken``), the global descriptor DINOv2 is evaluated with for retrieval, L2-normalised float32:
cosine similarity is a dot product.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.device import cpu_threads, torch_device
from models.registry import (
    REGISTRY,
    TINY_SUFFIX,
    MissingWeights,
    files_digest,
    refuse_tiny,
    require,
)

TINY = "dinov2-tiny-random"
FAMILY = "dino"
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def registered() -> tuple[str, ...]:
    """The registry's DINOv2 models (the names the stage's ``model`` param takes, besides the tiny one)."""
    return tuple(n for n, spec in REGISTRY.items() if spec.family == FAMILY)


def _tiny():
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    refuse_tiny(TINY)
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8)
    processor = BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                  image_mean=MEAN, image_std=STD)
    return Dinov2Model(config), processor, "random-init"


def _folder(name: str) -> tuple[Path, str]:
    """(weights folder, weights identity) of a registry name, a local folder or a hub id already in the
    local Hugging Face cache — never a download."""
    if name in REGISTRY:
        st = require(name)
        return st.where, files_digest(st)
    path = Path(name)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name, local_files_only=True))
        except Exception as exc:  # noqa: BLE001 - not cached, not a repo id: say what was looked for
            raise MissingWeights(f"DINOv2 model {name!r}: not a registry model ({', '.join(registered())}), "
                                 f"a local folder or a hub id in the local cache ({exc.__class__.__name__})") from None
    from models.captioner import folder_digest

    return path, folder_digest(path)


@dataclass
class DinoEmbedder:
    """``embed(images) -> (N, dim)`` float32, L2-normalised CLS embeddings; ``dim`` their width."""

    model: str
    device: str | None = None
    threads: int | None = None
    name: str = field(init=False)
    weights_sha256: str = field(init=False)
    dim: int = field(init=False)

    def __post_init__(self) -> None:
        import torch
        from transformers import AutoImageProcessor, Dinov2Model

        self.device = self.device or torch_device()
        if self.device == "cpu":
            torch.set_num_threads(self.threads or cpu_threads())
        if self.model == TINY or self.model.endswith(TINY_SUFFIX):
            if self.model != TINY:
                raise MissingWeights(f"unknown tiny DINOv2 model {self.model!r}; the test variant is {TINY}")
            net, processor, digest = _tiny()
        else:
            folder, digest = _folder(self.model)
            try:
                net = Dinov2Model.from_pretrained(str(folder), local_files_only=True)
                processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
            except (OSError, ValueError) as exc:
                raise MissingWeights(f"DINOv2 model {self.model!r}: {folder} is not a Dinov2Model folder "
                                     f"(config.json, model.safetensors, preprocessor_config.json): {exc}") from None
        self._net = net.to(self.device).eval()
        self._processor = processor
        self.name = self.model
        self.weights_sha256 = digest
        self.dim = int(net.config.hidden_size)

    def embed(self, images: list) -> np.ndarray:
        """(N, dim) float32 rows of unit length for RGB ``PIL.Image`` s."""
        import torch

        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        pixels = self._processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.no_grad():
            cls = self._net(pixel_values=pixels).pooler_output.float()
        return torch.nn.functional.normalize(cls, dim=-1).cpu().numpy().astype(np.float32)
