"""edges — Sobel edge density, the weight-free half of the report's complexity score (§4.2:
"a Sobel filter for detailed edge analysis ... filters out overly simple images (e.g., plain
backgrounds)"). The ``complexity`` stage combines it with SAM 2 masks.

Scores, on the greyscale image resized so its short side is ``short_side`` px (default 256, so the
score does not depend on the original resolution):
- ``edge_density``: fraction of pixels whose normalised Sobel gradient magnitude (kornia) exceeds
  ``threshold`` (default 0.1). Unitless, 0..1; a plain background is ~0, dense foliage ~0.5.
- ``edge_mean``: mean gradient magnitude, unitless, 0..~1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from workers.columns import ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem


class EdgesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    short_side: int = Field(256, ge=16, le=4096, description="images are resized to this short side first (px)")
    threshold: float = Field(0.1, gt=0, lt=1, description="gradient magnitude counted as an edge")


@dataclass(frozen=True)
class EdgeScores:
    edge_density: float
    edge_mean: float


def sobel_edges(image: Image.Image, short_side: int, threshold: float) -> EdgeScores:
    """Edge density and mean Sobel magnitude of one image (the greyscale image at ``short_side`` px)."""
    import kornia
    import torch

    w, h = image.size
    scale = short_side / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = np.asarray(image.convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    with torch.inference_mode():
        magnitude = kornia.filters.sobel(torch.from_numpy(grey)[None, None], normalized=True, eps=0.0)
        return EdgeScores(edge_density=round(float((magnitude > threshold).float().mean()), 6),
                          edge_mean=round(float(magnitude.mean()), 6))


class EdgesStage(Stage[EdgesParams, EdgeScores]):
    name = "edges"
    view_columns = (ViewColumns("curated_images", "e", ("e.edge_density", "e.edge_mean")),)
    version = "1"
    result_type = EdgeScores
    result_table = "edge_results"
    Params = EdgesParams
    resources = Resources(cpus=1.0, memory_gb=1.5)
    batch_size = 64
    needs_image = True
    requires = ("probe",)
    image_draft_size = 256

    def setup(self) -> None:
        import torch

        torch.set_num_threads(1)

    def process(self, items: Sequence[StageItem]) -> list[EdgeScores | ItemFailure]:
        return [sobel_edges(item.image, self.params.short_side, self.params.threshold) for item in items]
