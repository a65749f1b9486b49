"""video_watermark — the watermark pair on a scene (report §4.4: "averaging the models' confidence scores
across five evenly spaced frames and applying specific thresholds"). Same models, thresholds, columns
and table (``watermark_results``) as the image ``watermark`` stage; ``frames_sampled`` is 5."""

from __future__ import annotations

from PIL import Image

from curation.video import DecodedFrame
from workers.columns import ViewColumns
from workers.scene_frames import FrameSampledParams, FrameSampledStage, sampled_frames
from workers.stage import Resources
from workers.watermark import WATERMARK_VIEW_COLUMNS, WatermarkModels, WatermarkParams, WatermarkScores

FRAMES = 5  # report §4.4


class VideoWatermarkParams(WatermarkParams, FrameSampledParams):
    frames: int = sampled_frames(FRAMES)


class VideoWatermarkStage(WatermarkModels, FrameSampledStage[VideoWatermarkParams, WatermarkScores]):
    name = "video_watermark"
    view_columns = (ViewColumns("curated_scenes", "wm", WATERMARK_VIEW_COLUMNS, thresholds="tw"),)
    version = "1"
    Params = VideoWatermarkParams
    resources = Resources(cpus=1.0, memory_gb=2.0)
    batch_size = 8
    frame_decode = {"short_side": 512}

    def score_frames(self, frames: list[DecodedFrame]) -> WatermarkScores:
        return self.score([[Image.fromarray(f.pixels) for f in frames]])[0]
