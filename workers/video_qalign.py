"""video_qalign — Q-Align on a scene (report §4.4: "The Q-Align model ... is also applied to provide an
additional quality assessment"): ``frames`` evenly spaced frames (default 8) go to the VLM together,
rated as "this video" — as Q-Align rates videos, from a handful of frames in one prompt. Same columns and
table (``qalign_results``) as the image ``qalign`` stage; ``frames_sampled`` is the frame count."""

from __future__ import annotations

from PIL import Image

from curation.video import DecodedFrame
from workers.columns import ViewColumns
from workers.qalign import QALIGN_VIEW_COLUMNS, QAlignModel, QAlignParams, QAlignScores
from workers.scene_frames import FrameSampledParams, FrameSampledStage, sampled_frames

FRAMES = 8


class VideoQAlignParams(QAlignParams, FrameSampledParams):
    frames: int = sampled_frames(FRAMES)


class VideoQAlignStage(QAlignModel, FrameSampledStage[VideoQAlignParams, QAlignScores]):
    name = "video_qalign"
    view_columns = (ViewColumns("curated_scenes", "qa", QALIGN_VIEW_COLUMNS, thresholds="tqa"),)
    version = "1"
    Params = VideoQAlignParams
    batch_size = 2
    frame_decode = {"short_side": 448}

    def score_frames(self, frames: list[DecodedFrame]) -> QAlignScores:
        return self.rate([[Image.fromarray(f.pixels) for f in frames]], "video")[0]
