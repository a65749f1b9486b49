"""video_text — text on a scene's frames (report §4.4: "The number of detected text boxes and their total
area are averaged over three evenly spaced frames. Scenes with an excessive amount of text are
filtered"). The same detectors and code as the image ``text`` stage.

Scores: ``text_boxes_mean`` (mean number of text lines per sampled frame, >= 0), ``text_area_mean``
(mean of each frame's box area over its image area, 0..1), ``frames_sampled`` (3 by default, at the
centres of three equal parts of the scene), and provenance (``model``, ``weights_sha256``). Backends as
for the image ``text`` stage (``ppocrv4`` default, ``craft``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from curation.video import DecodedFrame
from workers.columns import ViewColumns
from workers.scene_frames import FrameSampledParams, FrameSampledStage, sampled_frames
from workers.stage import Resources
from workers.text import TextParams, load_backend, text_models

FRAMES = 3  # report §4.4
ANALYSIS_SHORT_SIDE = 720


class VideoTextParams(TextParams, FrameSampledParams):
    frames: int = sampled_frames(FRAMES)


@dataclass(frozen=True)
class VideoTextScores:
    text_boxes_mean: float
    text_area_mean: float
    frames_sampled: int
    model: str
    weights_sha256: str


class VideoTextStage(FrameSampledStage[VideoTextParams, VideoTextScores]):
    name = "video_text"
    view_columns = (ViewColumns("curated_scenes", "tx", ("tx.text_boxes_mean", "tx.text_area_mean")),)
    version = "1"
    result_type = VideoTextScores
    result_table = "video_text_results"
    Params = VideoTextParams
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 8
    frame_decode = {"short_side": ANALYSIS_SHORT_SIDE}
    models = ("ppocrv4-det",)

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        return text_models(params)

    def setup(self) -> None:
        self._detector = load_backend(self.params)

    def teardown(self) -> None:
        del self._detector

    def score_frames(self, frames: list[DecodedFrame]) -> VideoTextScores:
        from models.ppocr import polygon_area

        counts, areas = [], []
        for f in frames:
            boxes = self._detector.detect(f.pixels)
            counts.append(len(boxes))
            areas.append(min(sum(polygon_area(b) for b in boxes) / float(f.pixels.shape[0] * f.pixels.shape[1]), 1.0))
        return VideoTextScores(
            text_boxes_mean=round(sum(counts) / len(counts), 6), text_area_mean=round(sum(areas) / len(areas), 6),
            frames_sampled=len(frames), model=self._detector.name, weights_sha256=self._detector.weights_sha256,
        )
