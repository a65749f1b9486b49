"""video_caption — a detailed English caption of each scene from ``frames`` evenly spaced frames given to
the VLM together in one prompt (report §4.4: synthetic English captions of the scenes that pass the filters,
Tarsier2-7B there; intro phrases such as "The video starts with" removed and sentences in another script
dropped). A Russian caption only where ``russian_min_pixels`` is set (the report gives Russian captions for
images, §4.2, not for scenes: default off). Same columns and table (``caption_results``) as ``caption``;
``frames_sampled`` is the frame count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from PIL import Image
from pydantic import Field

from curation.video import DecodedFrame
from workers.caption import (
    CAPTION_VIEW_COLUMNS,
    CaptionModel,
    CaptionParams,
    CaptionResult,
)
from workers.captioning import scene_frame_groups
from workers.columns import ViewColumns
from workers.scene_frames import FrameSampledParams, FrameSampledStage, sampled_frames
from workers.stage import ItemFailure, StageItem

FRAMES = 8  # not in the report; as video_qalign

PROMPT_EN = ("Describe the video in detail: the location, the main characters or objects and their actions, "
             "how the camera moves or shakes, the zoom and the view angle, whether it follows the objects, "
             "and the visual style of the video. Write plain English sentences.")
PROMPT_RU = ("Подробно опиши видео на русском языке: место действия, главные персонажи или объекты и их действия, "
             "движение камеры, ракурс и визуальный стиль.")


class VideoCaptionParams(CaptionParams, FrameSampledParams):
    frames: int = sampled_frames(FRAMES)
    prompt_en: str = Field(PROMPT_EN, min_length=1, description="the English captioning prompt")
    prompt_ru: str = Field(PROMPT_RU, min_length=1, description="the Russian captioning prompt")
    russian_min_pixels: int | None = Field(None, ge=0, description="a Russian caption where width·height ≥ this")


class VideoCaptionStage(CaptionModel, FrameSampledStage[VideoCaptionParams, CaptionResult]):
    name = "video_caption"
    version = "1"
    Params = VideoCaptionParams
    view_columns = (ViewColumns("curated_scenes", "cp", CAPTION_VIEW_COLUMNS),)
    batch_size = 4
    requires = ("video_probe",)
    frame_decode: ClassVar[dict] = {"short_side": 448}
    medium = "video"

    def score_frames(self, frames: list[DecodedFrame]) -> CaptionResult:
        (result,) = self.caption([[Image.fromarray(f.pixels) for f in frames]], [None])
        if isinstance(result, ItemFailure):
            raise RuntimeError(result.message)  # noqa: TRY004 - score_frames returns a result; process() keeps the class
        return result

    def process(self, items: Sequence[StageItem]) -> list[CaptionResult | ItemFailure]:
        """All scenes of the batch in one captioner call (the backends batch them)."""
        out, groups, where = scene_frame_groups(self, items)
        probes = [items[i].prior.get("video_probe") for i in where]
        sizes = [(p.width, p.height) if p is not None else None for p in probes]
        for i, result in zip(where, self.caption(groups, sizes) if groups else []):
            out[i] = result
        return out
