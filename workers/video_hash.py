"""video_hash — a perceptual hash per scene for video deduplication (report §4.4: "a video perceptual hash
is computed for each scene. This hash is a fingerprint designed to be similar for visually alike
videos, allowing for the identification and removal of identical or highly similar scenes").

The hash: ``frames`` (16) evenly spaced frames of the scene, as luma at 64x64, are averaged into one
temporal-mean picture, and its 64-bit DCT perceptual hash (``imagehash.phash``) is stored as
``bit(64)``. Re-encoding and resizing barely move the mean picture; trimming a few seconds off a
scene moves the sample points, not what they average over; two different shots average to different
pictures. Hamming distance 0..64.

After the hashes are written, scene pairs within ``max_distance`` (default 10 bits) of any
earlier-hashed scene — this job or any other — are recorded in ``near_duplicates`` through pgvector's
HNSW bit index, exactly as for images. ``curated_scenes.is_unique`` keeps one scene per group (the
longer, then the sharper, then the earlier).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image
from pydantic import Field

from curation.video import DecodedFrame
from workers.columns import Bits64, ViewColumns
from workers.scene_frames import FrameSampledParams, FrameSampledStage, sampled_frames
from workers.stage import Resources

FRAMES = 16
HASH_SIDE = 64
DEFAULT_MAX_DISTANCE = 10


class VideoHashParams(FrameSampledParams):
    frames: int = sampled_frames(FRAMES, most=256, description="evenly spaced frames averaged into the hashed picture")
    max_distance: int = Field(DEFAULT_MAX_DISTANCE, ge=0, le=16, description="Hamming bits for a near duplicate "
                              "(applied when the slice is read; pairs are stored up to 16 bits)")


@dataclass(frozen=True)
class VideoHashScores:
    vhash: Bits64
    frames_hashed: int


def video_hash_bits(frames: Sequence[np.ndarray]) -> str:
    """The 64-bit hash of the temporal mean of luma frames (all of one size)."""
    mean = np.mean(np.stack([f.astype(np.float32) for f in frames]), axis=0)
    bits = imagehash.phash(Image.fromarray(np.clip(mean + 0.5, 0, 255).astype(np.uint8)), hash_size=8).hash.flatten()
    return "".join("1" if b else "0" for b in bits)


class VideoHashStage(FrameSampledStage[VideoHashParams, VideoHashScores]):
    name = "video_hash"
    view_columns = (ViewColumns("curated_scenes", "h", ("h.vhash",), thresholds="th"),)
    version = "1"
    result_type = VideoHashScores
    result_table = "video_hash_results"
    Params = VideoHashParams
    threshold_params = frozenset({"max_distance"})
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 8
    frame_decode = {"size": (HASH_SIDE, HASH_SIDE), "gray": True}
    near_duplicate_column = "vhash"

    def score_frames(self, frames: list[DecodedFrame]) -> VideoHashScores:
        return VideoHashScores(vhash=video_hash_bits([f.pixels for f in frames]), frames_hashed=len(frames))
