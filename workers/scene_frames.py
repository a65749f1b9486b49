"""The frames a scene stage samples: one call for the span check, the decode and its errors, so every
frame-sampled stage (video_hash, dynamics, video_text, video_clip, video_watermark, video_objects,
motion) reads frames the same way."""

from __future__ import annotations

from collections.abc import Callable

from curation.media import MediaError
from curation.video import DecodedFrame, frames_at
from workers.stage import ItemFailure, Span, StageItem


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
