"""resolution — the report's initial resolution filter (§4.2: "images with a shorter side measuring
fewer than 256 pixels are discarded").

Scores: ``short_side`` and ``long_side`` (pixels) and ``aspect_ratio`` (width / height, > 0), from the
probe's header sizes; no pixel is decoded. Gate: only assets with ``short_side >= min_side`` (default
256) go on to the next stage. The export buckets (256 / 512 / 1024) also come from ``short_side``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from workers.columns import ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem

REPORT_MIN_SIDE = 256


class ResolutionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_side: int = Field(REPORT_MIN_SIDE, ge=1, description="shortest side an image needs to go on (px)")


@dataclass(frozen=True)
class ResolutionScores:
    short_side: int
    long_side: int
    aspect_ratio: float


class ResolutionStage(Stage[ResolutionParams, ResolutionScores]):
    name = "resolution"
    view_columns = (ViewColumns("curated_images", "r", ("r.short_side", "r.long_side", "r.aspect_ratio")),)
    version = "1"
    result_type = ResolutionScores
    result_table = "resolution_results"
    Params = ResolutionParams
    threshold_params = frozenset({"min_side"})  # a gate: short_side is stored whatever it is
    resources = Resources(cpus=0.5, memory_gb=0.5)
    batch_size = 1024
    requires = ("probe",)

    def process(self, items: Sequence[StageItem]) -> list[ResolutionScores | ItemFailure]:
        out: list[ResolutionScores | ItemFailure] = []
        for item in items:
            probe = item.prior["probe"]
            out.append(
                ResolutionScores(
                    short_side=min(probe.width, probe.height),
                    long_side=max(probe.width, probe.height),
                    aspect_ratio=round(probe.width / probe.height, 6),
                )
            )
        return out

    def keep(self, result: ResolutionScores) -> bool:
        return result.short_side >= self.params.min_side
