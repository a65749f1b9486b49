"""video_clip — CLIP classes and a scene embedding from frame embeddings (report §4.4: "A CLIP-based
classifier is used to classify the scene's location, style, main subject, and more detailed place
categories by analyzing frame embeddings").

``frames`` (5) evenly spaced frames of the scene are embedded; the scene embedding is their mean,
L2-normalised, stored in pgvector like an image's; the zero-shot classes are taken from it. Same
columns and table (``clip_results``) as the image ``clip`` stage; the stage version tells them apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from pydantic import Field

from curation.video import DecodedFrame
from workers.clip import CLIP_VIEW_COLUMNS, ClipModelStage, ClipParams, ClipScores, clip_scores
from workers.columns import ViewColumns
from workers.scene_frames import FrameSampledParams, FrameSampledStage, sampled_frames
from workers.stage import Resources

FRAMES = 5


class VideoClipParams(ClipParams):
    frames: int = Field(FRAMES, ge=1, le=64, description="evenly spaced frames embedded per scene")
    timeout_s: float = Field(DEFAULT_VIDEO_TIMEOUT_S, gt=0)
    view_columns = (ViewColumns("curated_scenes", "cl", CLIP_VIEW_COLUMNS),)


class VideoClipStage(ClipModelStage):
    name = "video_clip"
    version = "1"
    modalities = frozenset({"video"})
    Params = VideoClipParams
    resources = Resources(cpus=1.0, memory_gb=2.0)
    batch_size = 8
    max_runtime_s = 3600.0
    needs_path = True

    def times(self, span: Span) -> list[float]:
        return evenly_spaced_times(span.start_s, span.end_s, self.params.frames)

    def process(self, items: Sequence[StageItem]) -> list[ClipScores | ItemFailure]:
        self._ensure()
        out: list[ClipScores | ItemFailure] = []
        for item in items:
            frames = scene_frames(item, self.name, self.times, short_side=256, timeout_s=self.params.timeout_s)
            if isinstance(frames, ItemFailure):
                out.append(frames)
                continue
            per_frame = self._clip.embed_images([Image.fromarray(f.pixels) for f in frames])
            scene = per_frame.mean(axis=0)
            scene /= np.linalg.norm(scene)
            out.extend(clip_scores(self._clip, self._taxonomies, self._taxonomy_sha, scene[None, :]))
        return out
