"""qalign — Q-Align technical and aesthetic ratings of an image (report §4.2: "The Q-Align model offers an
alternative assessment of technical and aesthetic aspects"), the method of ``models.qalign`` on the VLM
of ``models.qwen_vl``.

Scores, each 1 (bad) .. 5 (excellent), higher is better:
- ``qalign_quality``: "How would you rate the quality of this image?"
- ``qalign_aesthetic``: "How would you rate the aesthetics of this image?"
- ``sft_candidate``: ``qalign_quality > 4`` and ``qalign_aesthetic > 2`` — the report's filter for the
  image-editing SFT set (§3, "a Q-Align score greater than 4 and a Q-Align aesthetic score greater than 2";
  ``sft_min_quality`` / ``sft_min_aesthetic``).
- ``frames_sampled``: 1 for an image (``video_qalign`` rates sampled frames; same table).
Each image is resized by the processor to at most ``max_pixels`` (default 448², 256 visual tokens).
Provenance: ``model`` and ``weights_sha256``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.columns import ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem

SFT_MIN_QUALITY = 4.0  # report §3, SFT dataset curation of the editing pairs
SFT_MIN_AESTHETIC = 2.0


QALIGN_VIEW_COLUMNS = (
    "qa.qalign_quality", "qa.qalign_aesthetic",
    "(qa.qalign_quality > (tqa.params->>'sft_min_quality')::float8"
    " AND qa.qalign_aesthetic > (tqa.params->>'sft_min_aesthetic')::float8) AS qalign_sft_candidate")  # the report's SFT rule with the job's thresholds


class QAlignParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("qwen2.5-vl-7b-instruct", description="registry name of the VLM")
    max_pixels: int = Field(448 * 448, ge=28 * 28 * 4, le=4096 * 4096, description="pixels per image or frame")
    sft_min_quality: float = Field(SFT_MIN_QUALITY, ge=1, le=5)
    sft_min_aesthetic: float = Field(SFT_MIN_AESTHETIC, ge=1, le=5)

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        from models.qwen_vl import REAL, TINY
        from models.registry import check_model

        return check_model(v, "vlm", names=(REAL,), tiny=TINY, what="Q-Align VLM")


@dataclass(frozen=True)
class QAlignScores:
    qalign_quality: float
    qalign_aesthetic: float
    sft_candidate: bool
    frames_sampled: int
    model: str
    weights_sha256: str


class QAlignModel(Stage[QAlignParams, QAlignScores]):
    """What the image and the video Q-Align stages share: the VLM, loaded once per actor."""
    threshold_params = frozenset({"sft_min_quality", "sft_min_aesthetic"})

    result_type = QAlignScores
    result_table = "qalign_results"
    resources = Resources(cpus=1.0, memory_gb=4.0)

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        from models.qwen_vl import TINY

        return () if params.model == TINY else (params.model,)

    def setup(self) -> None:
        from models.qalign import QAlignScorer
        from models.qwen_vl import load_qwen_vl

        self._scorer = QAlignScorer(load_qwen_vl(self.params.model), max_pixels=self.params.max_pixels)

    def teardown(self) -> None:
        del self._scorer

    def rate(self, groups: list[list], medium: str) -> list[QAlignScores]:
        """One result per group of PIL images (one image, or the frames of one scene)."""
        quality = self._scorer.score(groups, "quality", medium)
        aesthetic = self._scorer.score(groups, "aesthetics", medium)
        p, vlm = self.params, self._scorer.vlm
        return [QAlignScores(round(q, 6), round(a, 6), q > p.sft_min_quality and a > p.sft_min_aesthetic, len(g),
                             vlm.name, vlm.weights_sha256)
                for q, a, g in zip(quality, aesthetic, groups, strict=True)]


class QAlignStage(QAlignModel):
    name = "qalign"
    view_columns = (ViewColumns("curated_images", "qa", QALIGN_VIEW_COLUMNS, thresholds="tqa"),)
    version = "1"
    Params = QAlignParams
    batch_size = 8
    needs_image = True
    image_draft_size = 512
    requires = ("probe",)

    def process(self, items: Sequence[StageItem]) -> list[QAlignScores | ItemFailure]:
        return self.rate([[item.image] for item in items], "image")
