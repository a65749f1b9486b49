"""video_clip — CLIP classes and a scene embedding from frame embeddings (report §4.4: "A CLIP-based
classifier is used to classify the scene's location, style, main subject, and more detailed place
categories by analyzing frame embeddings").

``frames`` (5) evenly spaced frames of the scene are embedded; the scene embedding is their mean,
L2-normalised, stored in pgvector like an image's; the zero-shot classes are taken from it. Same
columns and table (``clip_results``) as the image ``clip`` stage; the stage version tells them apart.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from curation.video import DecodedFrame
from workers.clip import CLIP_VIEW_COLUMNS, ClipModelStage, ClipParams, ClipScores, clip_scores
from workers.columns import ViewColumns
from workers.scene_frames import FrameSampledParams, FrameSampledStage, sampled_frames
from workers.stage import Resources

FRAMES = 5


class VideoClipParams(ClipParams, FrameSampledParams):
    frames: int = sampled_frames(FRAMES, description="evenly spaced frames embedded per scene")


class VideoClipStage(ClipModelStage, FrameSampledStage[VideoClipParams, ClipScores]):
    name = "video_clip"
    view_columns = (ViewColumns("curated_scenes", "cl", CLIP_VIEW_COLUMNS),)
    version = "1"
    Params = VideoClipParams
    resources = Resources(cpus=1.0, memory_gb=2.0)
    batch_size = 8
    frame_decode = {"short_side": 256}

    def score_frames(self, frames: list[DecodedFrame]) -> ClipScores:
        per_frame = self._clip.embed_images([Image.fromarray(f.pixels) for f in frames])
        scene = per_frame.mean(axis=0)
        scene /= np.linalg.norm(scene)
        return clip_scores(self._clip, self._taxonomies, self._taxonomy_sha, scene[None, :])[0]
