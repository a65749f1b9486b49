"""complexity — visual complexity from SAM 2 masks and Sobel edges (report §4.2 "Complexity Filtering":
"SAM 2 generates segmentation masks, complemented by a Sobel filter for detailed edge analysis ...
filters out overly simple images (e.g., plain backgrounds)").

Scores:
- ``mask_count`` (>= 0) and ``mask_coverage`` (0..1): masks SAM 2's automatic generator keeps on the image
  (long side scaled to ``max_side``, default 1024; a ``points_per_side`` grid, default 16) and the share
  of the image their union covers.
- ``edge_density`` / ``edge_mean``: the Sobel scores of the ``edges`` stage (same defaults and formula:
  complexity@3 has edges@3's).
- ``complexity`` = ``mask_weight`` · min(1, ln(1 + mask_count) / ln(1 + mask_saturation))
  + (1 − ``mask_weight``) · min(1, edge_density / ``edge_saturation``), in 0..1. Defaults: mask_weight 0.5,
  mask_saturation 64 masks, edge_saturation 0.2 (the busiest scikit-image photos: astronaut 0.14, camera
  0.07, coffee 0.05, chelsea 0.01). A plain background scores ~0.
- ``too_simple``: ``complexity < simple_threshold`` (default 0.15).
The report gives no values for these; the defaults are documented here and in the job spec.
Provenance: ``model`` and ``weights_sha256`` of the SAM 2 checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.media import fit_long_side
from workers.columns import ViewColumns
from workers.edges import edge_scores
from workers.stage import ItemFailure, Resources, Stage, StageItem


class ComplexityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("sam2.1-hiera-tiny", description="registry name of the SAM 2 checkpoint")
    points_per_side: int = Field(16, ge=1, le=64, description="SAM 2 prompt grid (points per side)")
    pred_iou_thresh: float = Field(0.8, ge=0, le=1, description="SAM 2's default")
    stability_score_thresh: float = Field(0.95, ge=0, le=1, description="SAM 2's default")
    max_side: int = Field(1024, ge=64, le=4096, description="long side of the image given to SAM 2 (px)")
    edge_short_side: int = Field(256, ge=16, le=4096)
    edge_threshold: float = Field(0.1, gt=0, lt=1)
    mask_weight: float = Field(0.5, ge=0, le=1)
    mask_saturation: int = Field(64, ge=1, description="mask count that scores 1")
    edge_saturation: float = Field(0.2, gt=0, le=1, description="edge density that scores 1")
    simple_threshold: float = Field(0.15, ge=0, le=1)

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        from models.registry import check_model
        from models.sam2_masks import TINY

        return check_model(v, "segmentation", tiny=TINY, what="SAM 2 model")


def complexity_score(mask_count: int, edge_density: float, p: ComplexityParams) -> float:
    masks = min(1.0, math.log1p(mask_count) / math.log1p(p.mask_saturation))
    edges = min(1.0, edge_density / p.edge_saturation)
    return p.mask_weight * masks + (1.0 - p.mask_weight) * edges


@dataclass(frozen=True)
class ComplexityScores:
    mask_count: int
    mask_coverage: float
    edge_density: float
    edge_mean: float
    complexity: float
    too_simple: bool
    model: str
    weights_sha256: str


class ComplexityStage(Stage[ComplexityParams, ComplexityScores]):
    name = "complexity"
    view_columns = (ViewColumns("curated_images", "cx", ("cx.complexity", "cx.mask_count", "cx.mask_coverage",
                                                     "(cx.complexity < (tcx.params->>'simple_threshold')::float8) AS too_simple"),
                               thresholds="tcx"),)
    version = "3"  # 2: the Sobel half is edges@2's exact integer formula; 3: edges@3's (its resize)
    result_type = ComplexityScores
    result_table = "complexity_results"
    Params = ComplexityParams
    threshold_params = frozenset({"simple_threshold"})
    resources = Resources(cpus=1.0, memory_gb=3.0)
    batch_size = 4
    max_runtime_s = 1800.0
    needs_image = True
    image_draft_size = 1024
    requires = ("probe",)

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        from models.sam2_masks import TINY

        return () if params.model == TINY else (params.model,)

    def setup(self) -> None:
        from models.sam2_masks import load_sam2

        self._sam = load_sam2(self.params.model)

    def teardown(self) -> None:
        del self._sam

    def process(self, items: Sequence[StageItem]) -> list[ComplexityScores | ItemFailure]:
        p = self.params
        out: list[ComplexityScores | ItemFailure] = []
        for item in items:
            img = fit_long_side(item.image, p.max_side)
            masks = self._sam.stats(np.asarray(img), p.points_per_side, p.pred_iou_thresh, p.stability_score_thresh)
            edges = edge_scores(img, p.edge_short_side, p.edge_threshold)
            score = complexity_score(masks.count, edges.edge_density, p)
            out.append(ComplexityScores(masks.count, round(masks.coverage, 6), edges.edge_density, edges.edge_mean,
                                        round(score, 6), score < p.simple_threshold, self._sam.name,
                                        self._sam.weights_sha256))
        return out
