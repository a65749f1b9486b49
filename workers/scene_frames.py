"""The frames a scene stage samples, and ``FrameSampledStage``, the base of the stages that score them
(video_hash, dynamics, video_text, video_clip, video_watermark, video_objects, video_qalign, motion):
the span check, the decode within ``timeout_s`` and its errors are here, so every such stage reads frames
the same way and keeps only its scoring of the frames."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from curation.media import MediaError
from curation.video import DEFAULT_VIDEO_TIMEOUT_S, DecodedFrame, evenly_spaced_times, frames_at
from workers.stage import ItemFailure, P, R, Span, Stage, StageItem


def scene_frames(item: StageItem, stage: str, times: Callable[[Span], list[float]],
                 **kwargs) -> list[DecodedFrame] | ItemFailure:
    """The frames shown at ``times(span)`` of the item's scene, decoded as ``kwargs`` say
    (``size``/``short_side``, ``gray``, ``timeout_s``); an ItemFailure if the item is not a scene or
    its frames cannot be decoded."""
    what = f"asset {item.asset_id} ({item.uri})"
    if item.span is None:
        return ItemFailure("not_a_scene", f"{what}: {stage} runs on scenes (run the scenes stage first)")
    try:
        return frames_at(item.path, times(item.span), end_s=item.span.end_s, what=what, **kwargs)
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
