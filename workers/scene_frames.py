"""The frames a scene stage samples, and ``FrameSampledStage``, the base of the stages that score them
(video_hash, dynamics, video_text, video_clip, video_watermark, video_objects, video_qalign, motion,
video_thumbnail, video_caption, video_domain): the span check, the decode within ``timeout_s`` and its
errors are here, so every such stage reads frames the same way and keeps only its scoring of the frames.

In a fused pass of such stages (``workers/runtime.py``, docs/video.md "One decode per scene") each scene
is a ``SceneDecode``: the runtime plans every stage's ``frame_request`` on it, and the first stage that
asks decodes the scene once for all of them (``curation.video.frames_for``); ``scene_frames`` hands each
stage the frames it asked for, exactly those its own decode would give.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from curation.media import MediaError
from curation.video import (
    DEFAULT_VIDEO_TIMEOUT_S,
    DecodedFrame,
    FrameRequest,
    evenly_spaced_times,
    frames_at,
    frames_for,
)
from workers.stage import ItemFailure, P, R, Span, Stage, StageItem

_DECODE_OPTIONS = ("short_side", "size", "gray", "bgr")


class SceneDecode:
    """One scene of a fused pass: its local file (or the failure to fetch it), its span, and the frame
    requests the pass's stages will make of it. The first request served decodes the scene once for every
    planned request (``frames_for``, under the largest time limit among them); a decode that fails fails
    every planned request with its error. Frames are shared between the stages: none may change them."""

    def __init__(self, asset_id: int, uri: str, span: Span | None, path: str | ItemFailure):
        self.asset_id, self.uri, self.span, self.path = asset_id, uri, span, path
        self.planned: dict[FrameRequest, float] = {}  # request -> its stage's time limit
        self._frames: dict[FrameRequest, list[DecodedFrame] | MediaError] | MediaError | None = None

    def fill(self, item: StageItem, stage: Stage, probe: Any = None) -> ItemFailure | None:
        """Give ``item`` the scene's file and span (what ``StageWorker._fetch_paths`` gives a task of the
        stage's own); an ItemFailure when the file could not be fetched."""
        if isinstance(self.path, ItemFailure):
            return self.path
        item.path, item.span = self.path, self.span
        return None

    def plan(self, request: FrameRequest, timeout_s: float) -> None:
        if self._frames is None:  # after the decode a new request is decoded by its stage alone
            self.planned[request] = max(timeout_s, self.planned.get(request, 0.0))

    def frames(self, request: FrameRequest, what: str) -> list[DecodedFrame] | None:
        """The frames of a planned request (None for one not planned); raises the decode's ``MediaError``."""
        if request not in self.planned or isinstance(self.path, ItemFailure) or self.span is None:
            return None
        if self._frames is None:
            requests = list(self.planned)
            try:
                got = frames_for(self.path, requests, end_s=self.span.end_s, timeout_s=max(self.planned.values()),
                                 what=what)
                self._frames = dict(zip(requests, got))
            except MediaError as exc:
                self._frames = exc
        if isinstance(self._frames, MediaError):
            raise self._frames
        got = self._frames[request]
        if isinstance(got, MediaError):
            raise got
        return got


_SHARED: ContextVar[Mapping[int, SceneDecode] | None] = ContextVar("shared_scene_decodes", default=None)


@contextmanager
def shared_decodes(scenes: Mapping[int, SceneDecode]) -> Iterator[None]:
    """While in the block, ``scene_frames`` serves the planned requests of these scenes (by asset id) from
    their one decode."""
    token = _SHARED.set(scenes)
    try:
        yield
    finally:
        _SHARED.reset(token)


def scene_frames(item: StageItem, stage: str, times: Callable[[Span], list[float]],
                 **kwargs) -> list[DecodedFrame] | ItemFailure:
    """The frames shown at ``times(span)`` of the item's scene, decoded as ``kwargs`` say
    (``size``/``short_side``, ``gray``, ``timeout_s``) — from the scene's shared decode in a fused pass
    when the pass planned this very request, else by a decode of its own; an ItemFailure if the item is
    not a scene or its frames cannot be decoded."""
    what = f"asset {item.asset_id} ({item.uri})"
    if item.span is None:
        return ItemFailure("not_a_scene", f"{what}: {stage} runs on scenes (run the scenes stage first)")
    wanted = times(item.span)
    try:
        scenes = _SHARED.get()
        scene = scenes.get(item.asset_id) if scenes is not None else None
        if scene is not None and scene.path == item.path and not set(kwargs) - {*_DECODE_OPTIONS, "timeout_s"}:
            request = FrameRequest.of(wanted, **{k: v for k, v in kwargs.items() if k in _DECODE_OPTIONS})
            got = scene.frames(request, what)
            if got is not None:
                return got
        return frames_at(item.path, wanted, end_s=item.span.end_s, what=what, **kwargs)
    except MediaError as exc:
        return ItemFailure(exc.error_class, str(exc))


def sampled_frames(default: int, *, most: int = 64, description: str = "evenly spaced frames per scene") -> Any:
    """The ``frames`` field of a frame-sampled stage's params, with the stage's default count."""
    return Field(default, ge=1, le=most, description=description)


class FrameSampledParams(BaseModel):
    """What every evenly-spaced-frames stage takes: ``frames`` (the report's 5 unless the stage's params
    say otherwise: 3 for text, 8 for Q-Align) and the decode time limit."""

    model_config = ConfigDict(extra="forbid")
    frames: int = sampled_frames(5)
    timeout_s: float = Field(DEFAULT_VIDEO_TIMEOUT_S, gt=0)


class FrameSampledStage(Stage[P, R]):
    """A scene stage that scores frames of each scene: the frames shown at ``times(span)`` (default:
    ``params.frames`` evenly spaced, report §4.4), decoded as ``frame_decode`` says within
    ``params.timeout_s``; a non-scene or a decode error is that item's ItemFailure. A subclass gives
    ``score_frames`` (and ``times`` / ``decode_options`` when it samples or decodes otherwise); its
    ``Params`` has ``timeout_s`` (``FrameSampledParams`` has both)."""

    modalities = frozenset({"video"})
    max_runtime_s = 3600.0
    needs_path = True
    frame_decode: ClassVar[dict[str, Any]] = {}
    """How frames are decoded (``curation.video.iter_frames``: ``short_side`` or ``size``, ``gray``)."""

    def times(self, span: Span) -> list[float]:
        return evenly_spaced_times(span.start_s, span.end_s, self.params.frames)

    def decode_options(self, item: StageItem) -> dict[str, Any]:
        return self.frame_decode

    def frame_request(self, item: StageItem) -> FrameRequest | None:
        """What ``process`` will ask of the item's scene (None for a non-scene): a fused pass plans it on the
        scene's one decode. A subclass that asks otherwise than ``times`` / ``decode_options`` returns None
        (or its own request); an unplanned request is decoded by the stage alone, as in a task of its own."""
        options = self.decode_options(item)
        if item.span is None or set(options) - set(_DECODE_OPTIONS):
            return None
        return FrameRequest.of(self.times(item.span), **options)

    @abstractmethod
    def score_frames(self, frames: list[DecodedFrame]) -> R:
        """The result for one scene from its sampled frames, in time order."""

    def process(self, items: Sequence[StageItem]) -> list[R | ItemFailure]:
        out: list[R | ItemFailure] = []
        for item in items:
            frames = scene_frames(item, self.name, self.times, timeout_s=self.params.timeout_s,
                                  **self.decode_options(item))
            out.append(frames if isinstance(frames, ItemFailure) else self.score_frames(frames))
        return out
