"""quality — technical image quality (report §4.2 "Quality Assessment"). This release scores
BRISQUE (OpenCV, LIVE model files that ship offline): ``brisque``, unitless, roughly 0..100, **lower is
better**, computed on the image resized to a ``short_side`` of 512 px so scores compare across
resolutions. The report's TOPIQ and Q-Align scores are the ``topiq`` and ``qalign`` stages.
Provenance: ``model`` and ``weights_sha256`` on every row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from workers.columns import ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem


class QualityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    short_side: int = Field(512, ge=64, le=4096, description="images are resized to this short side first (px)")


@dataclass(frozen=True)
class QualityScores:
    brisque: float
    model: str
    weights_sha256: str


class QualityStage(Stage[QualityParams, QualityScores]):
    name = "quality"
    view_columns = (ViewColumns("curated_images", "q", ("q.brisque",)),)
    version = "1"
    result_type = QualityScores
    result_table = "quality_results"
    Params = QualityParams
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 16
    needs_image = True
    image_draft_size = 512
    requires = ("probe",)
    models = ("brisque-live",)

    def setup(self) -> None:
        from models.brisque import load_brisque

        self._brisque = load_brisque()

    def teardown(self) -> None:
        del self._brisque

    def process(self, items: Sequence[StageItem]) -> list[QualityScores | ItemFailure]:
        out = []
        for item in items:
            img: Image.Image = item.image
            scale = self.params.short_side / min(img.size)
            resized = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                 Image.Resampling.BILINEAR)
            out.append(QualityScores(round(self._brisque.score(np.asarray(resized)), 4), self._brisque.name,
                                     self._brisque.weights_sha256))
        return out
