"""dynamics — structural dynamics of a scene (report §4.4: "sampling frames at 2 FPS and calculating the
Multi-Scale Structural Similarity (MS-SSIM) index between consecutive pairs. A low average MS-SSIM
score indicates high dynamism ..., while a high score indicates a static scene. Scenes deemed too
static or excessively dynamic are filtered out based on threshold values.").

Frames are sampled ``1 / sample_fps`` = 0.5 s apart from the scene's start, as luma scaled to a short
side of 256 (``curation.video.frames_at``), and ``curation.ms_ssim`` is computed for every consecutive
pair. Scores: ``ms_ssim_mean`` (0..1), ``ms_ssim_min``, ``ms_ssim_max``, ``pairs``, and the flags
``too_static`` (mean >= ``static_above``) and ``too_dynamic`` (mean <= ``dynamic_below``).

The report gives no threshold values; ours are documented defaults: ``static_above`` = 0.98 (a
still shot with sensor noise only; a camera that holds still on a moving crowd scores about 0.85-0.9)
and ``dynamic_below`` = 0.25 (unrelated pictures every half second score about 0.1-0.2; a real
hand-held or panning shot about 0.4-0.8). A scene shorter than two samples gets ``pairs`` = 0 and
no flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.ms_ssim import ms_ssim
from curation.video import DEFAULT_VIDEO_TIMEOUT_S, DecodedFrame, scaled_size, times_at_fps
from workers.columns import ViewColumns
from workers.scene_frames import FrameSampledStage
from workers.stage import Resources, Span, StageItem

SAMPLE_FPS = 2.0  # report §4.4
STATIC_ABOVE = 0.98
DYNAMIC_BELOW = 0.25
ANALYSIS_SHORT_SIDE = 256


class DynamicsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_fps: float = Field(SAMPLE_FPS, gt=0, le=30, description="frames sampled per second")
    static_above: float = Field(STATIC_ABOVE, ge=0, le=1, description="mean MS-SSIM at or above: too static")
    dynamic_below: float = Field(DYNAMIC_BELOW, ge=0, le=1, description="mean MS-SSIM at or below: too dynamic")
    timeout_s: float = Field(DEFAULT_VIDEO_TIMEOUT_S, gt=0)


@dataclass(frozen=True)
class DynamicsScores:
    ms_ssim_mean: float | None
    ms_ssim_min: float | None
    ms_ssim_max: float | None
    pairs: int
    too_static: bool
    too_dynamic: bool


def dynamics_of(frames: Sequence[np.ndarray], static_above: float, dynamic_below: float) -> DynamicsScores:
    """Scores from luma frames sampled at the stage's rate, in order."""
    if len(frames) < 2:
        return DynamicsScores(None, None, None, 0, False, False)
    stack = np.stack(frames)
    scores = ms_ssim(stack[:-1], stack[1:])
    mean = float(scores.mean())
    return DynamicsScores(
        ms_ssim_mean=round(mean, 6), ms_ssim_min=round(float(scores.min()), 6),
        ms_ssim_max=round(float(scores.max()), 6), pairs=len(scores),
        too_static=mean >= static_above, too_dynamic=mean <= dynamic_below,
    )


class DynamicsStage(FrameSampledStage[DynamicsParams, DynamicsScores]):
    name = "dynamics"
    view_columns = (ViewColumns("curated_scenes", "d", (
        "d.ms_ssim_mean", "d.ms_ssim_min", "d.ms_ssim_max", "d.pairs AS ms_ssim_pairs",
        "(d.ms_ssim_mean >= (td.params->>'static_above')::float8) AS too_static",
        "(d.ms_ssim_mean <= (td.params->>'dynamic_below')::float8) AS too_dynamic"), thresholds="td"),)
    version = "1"
    result_type = DynamicsScores
    result_table = "dynamics_results"
    Params = DynamicsParams
    threshold_params = frozenset({"static_above", "dynamic_below"})
    resources = Resources(cpus=1.0, memory_gb=1.5)
    batch_size = 4
    requires = ("video_probe",)

    def times(self, span: Span) -> list[float]:
        return times_at_fps(span.start_s, span.end_s, self.params.sample_fps)

    def decode_options(self, item: StageItem) -> dict[str, Any]:
        probe = item.prior["video_probe"]
        coded = (probe.height, probe.width) if probe.rotation in (90, 270) else (probe.width, probe.height)
        # small videos are scaled up: MS-SSIM's fifth scale needs >= 176 px
        return {"gray": True, "size": scaled_size(*coded, ANALYSIS_SHORT_SIDE, upscale=True)}

    def score_frames(self, frames: list[DecodedFrame]) -> DynamicsScores:
        return dynamics_of([f.pixels for f in frames], self.params.static_above, self.params.dynamic_below)
