"""scenes — split a video into scenes (report §4.4: "segmenting raw videos into individual scenes using
the PySceneDetect tool ... Each extracted scene has a duration constrained between 2 and 60 seconds").

Cut detection is PySceneDetect's own detector — ``ContentDetector`` (default; ``threshold`` 27, its
default) or ``AdaptiveDetector`` (``adaptive_threshold`` 3, ``min_content_val`` 15) — fed frames that
PyAV decodes with frame threading and shrinks to ``analysis_width`` pixels (256 by default, about what
PySceneDetect's own automatic downscale gives) before the colour conversion (``curation.video``). A cut at frame *k* means frame *k* is the
first frame of a new scene.

The report's constraint, as defaults: scenes shorter than ``min_scene_s`` = 2 s are dropped, scenes
longer than ``max_scene_s`` = 60 s are cut into ``ceil(d / 60)`` equal parts.

Scenes are **referenced by time range, not cut into files**: each becomes an asset of kind ``scene``
with its parent video, ``[start_frame, end_frame)`` and ``[start_s, end_s)``. Nothing is re-encoded
(no generation loss, no duplicated storage); a stage that reads a scene seeks to the key frame before
``start_s`` and decodes to ``end_s`` (``curation.video.iter_frames``), which costs at most one GOP of
extra decoding.

**Long videos in windows**: the runtime hands a video longer than the job's ``scene_window_s`` (600 s)
to this stage as consecutive time windows, each its own task, so one two-hour video keeps a dozen
workers busy instead of one. A window is split like a video, its frame numbers and times offset to the
video's; a cut is forced at each window edge (a scene crossing it becomes two, each then under the
2–60 s rule) — at most one extra cut per window.

Scores, per video (or window): ``detector``, ``cut_frames`` (every detected cut, before the length rules),
``n_scenes`` (kept), ``n_dropped_short``, ``n_split_long`` (scenes that were split), ``frames``
(decoded) and ``analysis_ms``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from curation.media import MediaError
from curation.video import DEFAULT_VIDEO_TIMEOUT_S, iter_frames
from workers.columns import ViewColumns
from workers.stage import ItemFailure, Resources, Span, Stage, StageItem

MIN_SCENE_S = 2.0  # report §4.4
MAX_SCENE_S = 60.0  # report §4.4
MIN_CUT_GAP_S = 0.6  # the scenedetect CLI's default min-scene-len; a duration, so 10 fps and 60 fps alike
DURATION_TOLERANCE_S = 1e-6  # a scene of exactly 2.000 s is kept when float arithmetic lands a hair below


class ScenesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    detector: Literal["content", "adaptive"] = Field("content", description="PySceneDetect detector")
    threshold: float = Field(27.0, gt=0, le=255, description="ContentDetector: score above which a frame is a cut")
    adaptive_threshold: float = Field(3.0, gt=0, description="AdaptiveDetector: score / rolling mean for a cut")
    min_content_val: float = Field(15.0, ge=0, description="AdaptiveDetector: least content score for a cut")
    min_cut_gap_s: float = Field(MIN_CUT_GAP_S, gt=0, le=60, description="least seconds between two cuts "
                                 "(PySceneDetect's min_scene_len, in frames at the video's rate; its CLI: 0.6 s)")
    min_scene_s: float = Field(MIN_SCENE_S, ge=0, description="scenes shorter than this are dropped")
    max_scene_s: float = Field(MAX_SCENE_S, gt=0, description="scenes longer than this are split evenly")
    analysis_width: int = Field(256, ge=32, le=4096, description="frames are scaled to this width for detection")
    timeout_s: float = Field(DEFAULT_VIDEO_TIMEOUT_S, gt=0, description="wall-clock limit of one video's decode")


@dataclass(frozen=True)
class ScenesResult:
    detector: str
    cut_frames: list[int]
    n_scenes: int
    n_dropped_short: int
    n_split_long: int
    frames: int
    analysis_ms: float
    gradual_starts: list[int] | None = None  # fades and dissolves [start, end) in frames; NULL before scenes@2
    gradual_ends: list[int] | None = None
    scenes: list[Span] = field(default_factory=list)  # not a column: stored as assets of kind 'scene'


def min_gap_frames(seconds: float, fps: float) -> int:
    """``min_cut_gap_s`` in frames of a video at ``fps`` (at least one)."""
    return max(1, round(seconds * fps))


def make_detector(params: ScenesParams, fps: float):
    from scenedetect.detectors import AdaptiveDetector, ContentDetector

    gap = min_gap_frames(params.min_cut_gap_s, fps)
    if params.detector == "adaptive":
        return AdaptiveDetector(adaptive_threshold=params.adaptive_threshold, min_content_val=params.min_content_val,
                                min_scene_len=gap)
    return ContentDetector(threshold=params.threshold, min_scene_len=gap)


def detect_cuts(frames_bgr: Iterable, fps: float, detector) -> tuple[list[int], int]:
    """Feed BGR frames (numpy HxWx3) to a PySceneDetect detector; the cut frame numbers and the number
    of frames seen."""
    from scenedetect import FrameTimecode

    cuts: list[int] = []
    n = 0
    last = None
    for n, frame in enumerate(frames_bgr, start=1):
        last = FrameTimecode(n - 1, fps=fps)
        cuts.extend(int(tc.frame_num) for tc in detector.process_frame(last, frame))
    if last is not None:
        cuts.extend(int(tc.frame_num) for tc in detector.post_process(last))
    return sorted(set(c for c in cuts if 0 < c < n)), n


def constrain(bounds: Sequence[int], times: Sequence[float], end_time: float, min_s: float,
              max_s: float) -> tuple[list[Span], int, int]:
    """Scenes from cut frames: ``bounds`` are the first frames of each scene plus the frame count
    at the end; ``times[i]`` the time of frame ``i``. Drop the short, split the long."""
    spans: list[Span] = []
    dropped = split = 0

    def t(i: int) -> float:
        return times[i] if i < len(times) else end_time

    for a, b in zip(bounds[:-1], bounds[1:]):
        duration = t(b) - t(a)
        if duration < min_s - DURATION_TOLERANCE_S:
            dropped += 1
            continue
        parts = max(1, math.ceil(duration / max_s - 1e-9))
        if parts > 1:
            split += 1
        # split points in frames, evenly; each part is <= max_s (frame-accurate to one frame)
        edges = [a + round((b - a) * k / parts) for k in range(parts + 1)]
        for s, e in zip(edges[:-1], edges[1:]):
            spans.append(Span(start_frame=s, end_frame=e, start_s=round(t(s), 6), end_s=round(t(e), 6)))
    return spans, dropped, split


class ScenesStage(Stage[ScenesParams, ScenesResult]):
    name = "scenes"
    view_columns = (ViewColumns("curated_scenes", "sp", (), of="a.parent_id"),)
    version = "1"
    modalities = frozenset({"video"})
    result_type = ScenesResult
    result_table = "scene_split_results"
    Params = ScenesParams
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 1
    max_runtime_s = 4 * 3600.0
    needs_path = True
    requires = ("video_probe",)
    children_field = "scenes"
    windowed = True

    def process(self, items: Sequence[StageItem]) -> list[ScenesResult | ItemFailure]:
        return [self._split(item) for item in items]

    def _split(self, item: StageItem) -> ScenesResult | ItemFailure:
        probe = item.prior["video_probe"]
        p = self.params
        what = f"asset {item.asset_id} ({item.uri})"
        started = time.perf_counter()
        times: list[float] = []
        # coded orientation: rotation does not change where the cuts are
        coded_w, coded_h = (probe.height, probe.width) if probe.rotation in (90, 270) else (probe.width, probe.height)
        width = min(p.analysis_width, coded_w)
        size = (max(2, width // 2 * 2), max(2, round(coded_h * width / coded_w / 2) * 2))

        window = item.span  # a window of a long video, or None for the whole video
        offset = window.start_frame if window else 0
        last = window is not None and window.end_s >= probe.start_s + probe.duration_s - 1e-6
        bounds = dict(start_s=window.start_s, end_s=None if last else window.end_s) if window else {}

        def frames():
            for f in iter_frames(item.path, size=size, bgr=True, timeout_s=p.timeout_s, what=what,
                                 max_pixels=coded_w * coded_h, **bounds):  # BGR: PySceneDetect's convention
                times.append(f.time_s)
                yield f.pixels

        try:
            cuts, n = detect_cuts(frames(), probe.fps, make_detector(p, probe.fps))
        except MediaError as exc:
            return ItemFailure(exc.error_class, str(exc))
        if n == 0:
            return ItemFailure("corrupt_media", f"{what}: no frame decoded")
        frame_s = probe.duration_s / max(probe.frames, 1)
        end_time = times[-1] + frame_s
        spans, dropped, split = constrain([0, *cuts, n], times, end_time, p.min_scene_s, p.max_scene_s)
        if offset:
            cuts = [c + offset for c in cuts]
            spans = [Span(s.start_frame + offset, s.end_frame + offset, s.start_s, s.end_s) for s in spans]
        return ScenesResult(
            detector=p.detector, cut_frames=cuts, n_scenes=len(spans), n_dropped_short=dropped,
            n_split_long=split, frames=n, analysis_ms=round((time.perf_counter() - started) * 1000.0, 3),
            scenes=spans,
        )
