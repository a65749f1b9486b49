"""motion — camera movement, object movement and light/colour dynamics of a scene (report §4.4: the
VideoMAE-based predictor [82]), an optional stage.

The model's ``frames`` (16 for VideoMAE) evenly spaced frames of the scene, resized to its input size,
go through ``models.motion``; the three regression outputs are stored as ``camera_motion``,
``object_motion``, ``light_dynamics`` (the model's own scale), with ``frames_sampled`` and provenance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.video import DEFAULT_VIDEO_TIMEOUT_S, DecodedFrame, evenly_spaced_times
from workers.columns import ViewColumns
from workers.scene_frames import FrameSampledStage
from workers.stage import Resources, Span, StageItem

DEFAULT_MODEL = "kandinsky-video-motion"


class MotionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(DEFAULT_MODEL, description="registry name of the motion model")
    timeout_s: float = Field(DEFAULT_VIDEO_TIMEOUT_S, gt=0)

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        from models.motion import TINY
        from models.registry import check_model

        return check_model(v, "motion", tiny=TINY, what="motion model")


@dataclass(frozen=True)
class MotionScores:
    camera_motion: float
    object_motion: float
    light_dynamics: float
    frames_sampled: int
    model: str
    weights_sha256: str


class MotionStage(FrameSampledStage[MotionParams, MotionScores]):
    name = "motion"
    view_columns = (ViewColumns("curated_scenes", "mo", ("mo.camera_motion", "mo.object_motion", "mo.light_dynamics")),)
    version = "1"
    result_type = MotionScores
    result_table = "motion_results"
    Params = MotionParams
    resources = Resources(cpus=1.0, memory_gb=2.0)
    batch_size = 4

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        from models.registry import REGISTRY

        return (params.model,) if params.model in REGISTRY else ()

    def setup(self) -> None:
        from models.motion import load_motion

        self._model = load_motion(self.params.model)

    def teardown(self) -> None:
        del self._model

    def times(self, span: Span) -> list[float]:  # the model's own frame count
        return evenly_spaced_times(span.start_s, span.end_s, self._model.frames)

    def decode_options(self, item: StageItem) -> dict[str, Any]:
        return {"size": (self._model.size, self._model.size)}

    def score_frames(self, frames: list[DecodedFrame]) -> MotionScores:
        m = self._model
        camera, obj, light = (float(v) for v in m.predict([np.stack([f.pixels for f in frames])])[0])
        return MotionScores(round(camera, 6), round(obj, 6), round(light, 6), len(frames), m.name, m.weights_sha256)
