"""topiq — TOPIQ technical and aesthetic quality (report §4.2 "Quality Assessment": "The TOPIQ model
provides separate scores for technical quality and aesthetic quality"), through ``models.topiq``.

Scores (higher is better for both):
- ``topiq_technical``: TOPIQ-NR trained on KonIQ-10k, roughly 0..1. The image is scaled so its long side
  is at most ``max_side`` (default 1024, KonIQ's 1024x768 training resolution).
- ``topiq_aesthetic``: TOPIQ-IAA trained on AVA, the mean of a 10-level distribution, 1..10 (the model
  resizes to 384x384 itself).
Provenance: ``technical_model`` / ``aesthetic_model`` and their weights checksums. The report gives no
thresholds; slice on the scores in SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.media import fit_long_side
from workers.columns import ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem


class TopiqParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    technical_model: str = Field("topiq-nr-koniq", description="registry name of the TOPIQ-NR weights")
    aesthetic_model: str = Field("topiq-iaa-ava", description="registry name of the TOPIQ-IAA weights")
    max_side: int = Field(1024, ge=64, le=4096, description="long side of the image scored for technical quality (px)")

    @field_validator("technical_model", "aesthetic_model")
    @classmethod
    def _known(cls, v: str, info) -> str:
        from models.registry import check_model
        from models.topiq import AESTHETIC, TECHNICAL, TINY

        allowed = (TECHNICAL,) if info.field_name == "technical_model" else (AESTHETIC,)
        return check_model(v, "iqa", names=allowed, tiny=TINY, what="TOPIQ model")


@dataclass(frozen=True)
class TopiqScores:
    topiq_technical: float
    topiq_aesthetic: float
    technical_model: str
    technical_sha256: str
    aesthetic_model: str
    aesthetic_sha256: str


class TopiqStage(Stage[TopiqParams, TopiqScores]):
    name = "topiq"
    view_columns = (ViewColumns("curated_images", "tq", ("tq.topiq_technical", "tq.topiq_aesthetic")),)
    version = "1"
    result_type = TopiqScores
    result_table = "topiq_results"
    Params = TopiqParams
    resources = Resources(cpus=1.0, memory_gb=2.0)
    batch_size = 8
    needs_image = True
    image_draft_size = 1024
    requires = ("probe",)

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        from models.topiq import TINY

        return tuple(m for m in (params.technical_model, params.aesthetic_model) if m != TINY)

    def setup(self) -> None:
        from models.topiq import AESTHETIC, TECHNICAL, load_topiq

        self._technical = load_topiq(TECHNICAL, self.params.technical_model)
        self._aesthetic = load_topiq(AESTHETIC, self.params.aesthetic_model)

    def teardown(self) -> None:
        del self._technical, self._aesthetic

    def process(self, items: Sequence[StageItem]) -> list[TopiqScores | ItemFailure]:
        images = [np.asarray(fit_long_side(item.image, self.params.max_side)) for item in items]
        technical = self._technical.score(images)
        aesthetic = self._aesthetic.score(images)
        t, a = self._technical, self._aesthetic
        return [TopiqScores(round(ts, 6), round(ae, 6), t.name, t.weights_sha256, a.name, a.weights_sha256)
                for ts, ae in zip(technical, aesthetic, strict=True)]
