"""video_probe — what the video file is (report §4.4, the step before scene splitting).

Scores, per video (``curation.video.probe_video``, PyAV, no ffmpeg binary):
``container`` and ``codec`` (FFmpeg names), ``width`` / ``height`` (pixels as displayed, rotation
applied), ``fps`` (frames / duration), ``variable_frame_rate`` (frame intervals spread more than 10 %
between their 5th and 95th percentile), ``frames`` (video packets, exact), ``duration_s`` (s),
``rotation`` (degrees counter-clockwise from the display matrix: 0, 90, 180, 270), ``has_audio``,
``bytes``, ``sha256`` (32 bytes) and ``probe_ms``.

Guards: frames above ``max_pixels`` are refused before decoding (``oversized_video``), videos longer
than ``max_duration_s`` are refused (``too_long``), and the probe runs under ``timeout_s``. Item errors:
``empty_file``, ``not_a_video``, ``no_video_stream`` (e.g. an audio-only file), ``truncated_video``,
``oversized_video``, ``too_long``, ``decode_timeout``, ``corrupt_media``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from curation.media import DEFAULT_MAX_PIXELS, MediaError
from curation.video import DEFAULT_VIDEO_TIMEOUT_S, probe_video
from workers.columns import BigInt, SmallInt, ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem

DEFAULT_MAX_DURATION_S = 4 * 3600.0


class VideoProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="largest width*height of a frame")
    max_duration_s: float = Field(DEFAULT_MAX_DURATION_S, gt=0, description="longest video accepted, seconds")
    timeout_s: float = Field(DEFAULT_VIDEO_TIMEOUT_S, gt=0, description="wall-clock limit of one probe")


@dataclass(frozen=True)
class VideoProbeScores:
    container: str
    codec: str
    width: int
    height: int
    fps: float
    variable_frame_rate: bool
    frames: int
    duration_s: float
    rotation: SmallInt
    has_audio: bool
    bytes: BigInt
    sha256: bytes
    probe_ms: float
    start_s: float = 0.0  # presentation time of the first frame


def _sha256(path: str) -> tuple[bytes, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.digest(), size


class VideoProbeStage(Stage[VideoProbeParams, VideoProbeScores]):
    name = "video_probe"
    view_columns = (ViewColumns("curated_scenes", "p", (
        "p.container", "p.codec", "p.width", "p.height", "p.fps", "p.variable_frame_rate", "p.rotation", "p.has_audio",
        "p.bytes AS video_bytes", "encode(p.sha256, 'hex') AS video_sha256", "least(p.width, p.height) AS short_side",
        "greatest(p.width, p.height) AS long_side",
        "round((p.width::numeric / nullif(p.height, 0)), 4)::double precision AS aspect_ratio"), of="a.parent_id"),)
    version = "1"
    modalities = frozenset({"video"})
    result_type = VideoProbeScores
    result_table = "video_probe_results"
    Params = VideoProbeParams
    run_params = frozenset({"timeout_s", "max_pixels", "max_duration_s"})
    reuse_by_content = False  # it computes the content hash
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 8
    max_runtime_s = 3600.0
    needs_path = True

    def task_seconds(self, result: VideoProbeScores) -> float:
        """The scene split's tasks hold about ``video_seconds_per_task`` seconds of video each."""
        return result.duration_s

    def process(self, items: Sequence[StageItem]) -> list[VideoProbeScores | ItemFailure]:
        return [self._probe_one(item) for item in items]

    def _probe_one(self, item: StageItem) -> VideoProbeScores | ItemFailure:
        what = f"asset {item.asset_id} ({item.uri})"
        started = time.perf_counter()
        try:
            info = probe_video(item.path, max_pixels=self.params.max_pixels, timeout_s=self.params.timeout_s,
                               what=what)
        except MediaError as exc:
            return ItemFailure(exc.error_class, str(exc))
        if info.duration_s > self.params.max_duration_s:
            return ItemFailure("too_long", f"{what}: {info.duration_s:.0f} s, above the limit of "
                                           f"{self.params.max_duration_s:.0f} s")
        sha, size = _sha256(item.path)
        return VideoProbeScores(
            container=info.container, codec=info.codec, width=info.width, height=info.height, fps=info.fps,
            variable_frame_rate=info.variable_frame_rate, frames=info.frames, duration_s=info.duration_s,
            rotation=info.rotation, has_audio=info.has_audio, bytes=size, sha256=sha,
            probe_ms=round((time.perf_counter() - started) * 1000.0, 3), start_s=info.start_s,
        )
