"""video_watermark — the watermark pair on a scene (report §4.4: "averaging the models' confidence scores
across five evenly spaced frames and applying specific thresholds"). Same models, thresholds, columns
and table (``watermark_results``) as the image ``watermark`` stage; ``frames_sampled`` is 5."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from pydantic import Field

from curation.video import DecodedFrame
from workers.columns import ViewColumns
from workers.scene_frames import FrameSampledParams, FrameSampledStage, sampled_frames
from workers.stage import Resources
from workers.watermark import WATERMARK_VIEW_COLUMNS, WatermarkModels, WatermarkParams, WatermarkScores

FRAMES = 5  # report §4.4


class VideoWatermarkParams(WatermarkParams):
    frames: int = Field(FRAMES, ge=1, le=64, description="evenly spaced frames per scene")
    timeout_s: float = Field(DEFAULT_VIDEO_TIMEOUT_S, gt=0)
    view_columns = (ViewColumns("curated_scenes", "wm", WATERMARK_VIEW_COLUMNS, thresholds="tw"),)


class VideoWatermarkStage(WatermarkModels):
    name = "video_watermark"
    version = "1"
    modalities = frozenset({"video"})
    Params = VideoWatermarkParams
    resources = Resources(cpus=1.0, memory_gb=2.0)
    batch_size = 8
    max_runtime_s = 3600.0
    needs_path = True

    def times(self, span: Span) -> list[float]:
        return evenly_spaced_times(span.start_s, span.end_s, self.params.frames)

    def process(self, items: Sequence[StageItem]) -> list[WatermarkScores | ItemFailure]:
        self._ensure()
        out: list[WatermarkScores | ItemFailure] = []
        for item in items:
            frames = scene_frames(item, self.name, self.times, short_side=512, timeout_s=self.params.timeout_s)
            if isinstance(frames, ItemFailure):
                out.append(frames)
                continue
            out.extend(self.score([[Image.fromarray(f.pixels) for f in frames]]))
        return out
