"""CLIP image and text embeddings through open_clip (registry family ``clip``).

- ``clip-vit-b-32``: open_clip's ``ViT-B-32`` architecture with the LAION-2B weights
  (``open_clip_pytorch_model.bin`` of ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``) from the weights folder.
- ``clip-tiny-random``: the same code path and classes from a tiny config shipped in
  ``models/configs/`` (32-d embeddings, 64 px input), random weights. Tests only: loading it needs
  ``CURATION_ALLOW_TINY_MODELS=1``, so a real job can never run it by mistake.

The model runs on the GPU when the actor has one (``models.device``). Embeddings are L2-normalised float32. Zero-shot classes: each class is the normalised mean of its
prompts' text embeddings; an image's class is the softmax argmax over ``100 * cos`` (CLIP's logit scale).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from models.device import torch_device
from models.registry import MissingWeights, files_digest, refuse_tiny, require

TINY = "clip-tiny-random"
CONFIGS = Path(__file__).parent / "configs"
TAXONOMY = Path(__file__).parent / "data" / "clip_taxonomy.yaml"
ARCHITECTURE = {"clip-vit-b-32": "ViT-B-32", TINY: TINY}


@dataclass
class Clip:
    model: object
    preprocess: object
    tokenizer: object
    name: str
    weights_sha256: str
    dim: int

    device: str = "cpu"

    def embed_images(self, images) -> np.ndarray:
        import torch

        batch = torch.stack([self.preprocess(img) for img in images]).to(self.device)
        with torch.no_grad():
            out = self.model.encode_image(batch).float()
        return (out / out.norm(dim=-1, keepdim=True)).cpu().numpy()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
        return (out / out.norm(dim=-1, keepdim=True)).cpu().numpy()


def load_clip(name: str) -> Clip:
    import open_clip
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    if name == TINY:
        refuse_tiny(TINY)
        open_clip.add_model_config(CONFIGS / f"{TINY}.json")
        model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=None)
        digest = "tiny-random"
    else:
        if name not in ARCHITECTURE:
            raise MissingWeights(f"unknown CLIP model {name!r}; known: {', '.join(ARCHITECTURE)}")
        st = require(name)
        weights = st.where / next(iter(st.spec.files))
        model, _, preprocess = open_clip.create_model_and_transforms(ARCHITECTURE[name], pretrained=str(weights))
        digest = files_digest(st)
    device = torch_device()
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(ARCHITECTURE[name])
    return Clip(model, preprocess, tokenizer, name, digest, int(model.text_projection.shape[1]), device)


@dataclass(frozen=True)
class Taxonomy:
    name: str
    labels: list[str]
    matrix: np.ndarray  # (classes, dim), rows normalised


def load_taxonomies(clip: Clip, path: Path = TAXONOMY) -> tuple[list[Taxonomy], str]:
    """The taxonomies of the prompt file with their class embeddings, and the file's sha256."""
    raw = path.read_bytes()
    data = yaml.safe_load(raw)
    template = data.get("template", "{}")
    out = []
    for tax_name, classes in data["taxonomies"].items():
        labels, rows = [], []
        for label, phrases in classes.items():
            emb = clip.embed_texts([template.format(p) for p in phrases]).mean(axis=0)
            labels.append(label)
            rows.append(emb / np.linalg.norm(emb))
        out.append(Taxonomy(tax_name, labels, np.stack(rows).astype(np.float32)))
    return out, hashlib.sha256(raw).hexdigest()


def classify(embeddings: np.ndarray, taxonomy: Taxonomy, logit_scale: float = 100.0) -> list[tuple[str, float]]:
    """(label, probability) per embedding row."""
    logits = logit_scale * embeddings @ taxonomy.matrix.T
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    best = p.argmax(axis=1)
    return [(taxonomy.labels[i], float(p[r, i])) for r, i in enumerate(best)]
