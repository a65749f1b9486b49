"""video_qalign — Q-Align on a scene (report §4.4: "The Q-Align model ... is also applied to provide an
additional quality assessment"): ``frames`` evenly spaced frames (default 8) go to the VLM together,
rated as "this video" — as Q-Align rates videos, from a handful of frames in one prompt. Same columns and
table (``qalign_results``) as the image ``qalign`` stage; ``frames_sampled`` is the frame count."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from pydantic import Field

from curation.video import DecodedFrame
from workers.columns import ViewColumns
from workers.qalign import QALIGN_VIEW_COLUMNS, QAlignModel, QAlignParams, QAlignScores
from workers.scene_frames import FrameSampledParams, FrameSampledStage, sampled_frames

FRAMES = 8


class VideoQAlignParams(QAlignParams):
    frames: int = Field(FRAMES, ge=1, le=64, description="evenly spaced frames per scene")
    timeout_s: float = Field(DEFAULT_VIDEO_TIMEOUT_S, gt=0)
    view_columns = (ViewColumns("curated_scenes", "qa", QALIGN_VIEW_COLUMNS, thresholds="tqa"),)


class VideoQAlignStage(QAlignModel):
    name = "video_qalign"
    version = "1"
    modalities = frozenset({"video"})
    Params = VideoQAlignParams
    batch_size = 2
    max_runtime_s = 3600.0
    needs_path = True

    def times(self, span: Span) -> list[float]:
        return evenly_spaced_times(span.start_s, span.end_s, self.params.frames)

    def process(self, items: Sequence[StageItem]) -> list[QAlignScores | ItemFailure]:
        out: list[QAlignScores | ItemFailure] = []
        for item in items:
            frames = scene_frames(item, self.name, self.times, short_side=448, timeout_s=self.params.timeout_s)
            if isinstance(frames, ItemFailure):
                out.append(frames)
                continue
            out.extend(self.rate([[Image.fromarray(f.pixels) for f in frames]], "video"))
        return out
