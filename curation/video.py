"""Reading video safely with PyAV (FFmpeg's libraries bundled in the wheel; no ffmpeg binary).

- ``probe_video``: container, codec, frame rate (variable frame rate detected from the packet
  timestamps), exact frame count and duration (every video packet is demuxed, nothing decoded), size,
  rotation (display matrix), audio presence. The first frame is decoded, so a file whose video cannot
  be decoded fails here, and a file with fewer packets than its header promises is reported as
  truncated.
- ``iter_frames`` / ``frames_at``: decoded frames of a time range (a scene), shrunk to the size a
  stage asks for (YUV 4:2:0 planes shrunk with OpenCV — box filter by a whole factor, then bilinear —
  and colour-converted small;
  other pixel formats through swscale), with the rotation applied, so no stage ever holds full-size
  frames it does not need.

Every failure is a ``curation.media.MediaError`` whose ``error_class`` says what is wrong; decoding
runs under a wall-clock limit (``curation.media.time_limit``) and a pixel limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from curation.media import DEFAULT_MAX_PIXELS, EmptyFile, MediaError, time_limit

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
DEFAULT_VIDEO_TIMEOUT_S = 600.0
VFR_TOLERANCE = 0.10  # relative spread of frame intervals (5th..95th percentile) above which the rate is variable


class NotAVideo(MediaError):
    error_class = "not_a_video"


class NoVideoStream(MediaError):
    error_class = "no_video_stream"


class TruncatedVideo(MediaError):
    error_class = "truncated_video"


class OversizedVideo(MediaError):
    error_class = "oversized_video"


@dataclass(frozen=True)
class VideoInfo:
    container: str
    codec: str
    width: int  # as displayed (rotation applied)
    height: int
    coded_width: int
    coded_height: int
    fps: float  # average frame rate: frames / duration
    variable_frame_rate: bool
    frames: int
    duration_s: float
    start_s: float  # timestamp of the first frame
    rotation: int  # degrees, counter-clockwise, as in the display matrix; 0, 90, 180 or 270
    has_audio: bool


def _open(path: str | Path, what: str) -> av.container.InputContainer:
    p = Path(path)
    if p.exists() and p.stat().st_size == 0:
        raise EmptyFile(f"{what}: file is empty (0 bytes)")
    try:
        return av.open(str(p), mode="r", metadata_errors="ignore")
    except av.error.InvalidDataError as exc:
        raise NotAVideo(f"{what}: not a recognised media container: {exc}") from exc
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{what}: cannot open: {exc}") from exc


def _video_stream(container, what: str):
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise NoVideoStream(f"{what}: no video stream (streams: {kinds})")
    return container.streams.video[0]


def _rotation(frame) -> int:
    """Degrees counter-clockwise from the display matrix, normalised to 0/90/180/270 (PyAV reports
    INT_MIN when a frame has no matrix)."""
    try:
        rot = int(round(getattr(frame, "rotation", 0) or 0))
    except (TypeError, ValueError):
        rot = 0
    return rot % 360 if abs(rot) <= 360 and rot % 90 == 0 else 0


def probe_video(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout_s: float = DEFAULT_VIDEO_TIMEOUT_S,
    what: str = "video",
) -> VideoInfo:
    """Metadata of a video file, from its packets and its first decoded frame."""
    with time_limit(timeout_s, what):
        container = _open(path, what)
        try:
            return _probe(container, max_pixels, what)
        except MediaError:
            raise
        except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
            raise MediaError(f"{what}: cannot read video: {exc}") from exc
        finally:
            container.close()


def _probe(container, max_pixels: int, what: str) -> VideoInfo:
    stream = _video_stream(container, what)
    cc = stream.codec_context
    width, height = int(cc.width or 0), int(cc.height or 0)
    if width <= 0 or height <= 0:
        raise MediaError(f"{what}: invalid frame size {width}x{height}")
    if width * height > max_pixels:
        raise OversizedVideo(f"{what}: frames are {width}x{height} = {width * height:,} pixels, "
                             f"above the limit of {max_pixels:,}")
    tb = stream.time_base
    pts: list[int] = []
    last_duration = 0
    truncated_error: Exception | None = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            pts.append(int(packet.pts))
            last_duration = int(packet.duration or 0)
    except (av.error.InvalidDataError, av.error.EOFError) as exc:  # data ends inside a packet
        truncated_error = exc
    if not pts:
        raise TruncatedVideo(f"{what}: the video stream holds no frames")
    # only an MP4/MOV sample table counts its frames exactly (an AVI header's count is often wrong)
    header_frames = int(stream.frames or 0) if "mp4" in container.format.name else 0
    if truncated_error is not None or (header_frames > 0 and len(pts) < header_frames):
        reason = f" ({truncated_error})" if truncated_error is not None else ""
        raise TruncatedVideo(f"{what}: {len(pts)} video packets of the {header_frames or '?'} "
                             f"the header promises{reason}")
    pts.sort()
    intervals = np.diff(np.asarray(pts, dtype=np.float64)) * float(tb) if len(pts) > 1 else np.zeros(0)
    if intervals.size:
        median = float(np.median(intervals))
        p5, p95 = np.percentile(intervals, [5, 95])
        vfr = median > 0 and (p95 - p5) > VFR_TOLERANCE * median
        frame_s = median if median > 0 else (float(last_duration * tb) or 0.0)
    else:
        vfr, frame_s = False, float(last_duration * tb)
    if frame_s <= 0:
        rate = stream.average_rate or stream.guessed_rate
        frame_s = 1.0 / float(rate) if rate else 0.04
    start_s = pts[0] * float(tb)
    end_s = pts[-1] * float(tb) + (last_duration * float(tb) if last_duration else frame_s)
    duration = max(end_s - start_s, frame_s)
    # decode the first frame: the codec must work, and it carries the rotation
    container.seek(0)
    rotation = 0
    decoded = False
    for frame in container.decode(stream):
        rotation = _rotation(frame)
        decoded = True
        break
    if not decoded:
        raise MediaError(f"{what}: no frame of the video stream could be decoded")
    disp_w, disp_h = (height, width) if rotation in (90, 270) else (width, height)
    return VideoInfo(
        container=container.format.name, codec=cc.name, width=disp_w, height=disp_h,
        coded_width=width, coded_height=height, fps=round(len(pts) / duration, 6),
        variable_frame_rate=bool(vfr), frames=len(pts), duration_s=round(duration, 6),
        start_s=round(start_s, 6), rotation=rotation, has_audio=bool(container.streams.audio),
    )


def scaled_size(width: int, height: int, short_side: int | None, *, upscale: bool = False) -> tuple[int, int]:
    """(w, h) with the short side scaled to ``short_side`` (up only if ``upscale``), both even."""
    if short_side is None or (min(width, height) <= short_side and not upscale):
        return width - width % 2 or width, height - height % 2 or height
    s = short_side / min(width, height)
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def _plane(frame, index: int, width: int, height: int) -> np.ndarray:
    plane = frame.planes[index]
    return np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)[:height, :width]


def _shrink(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a plane: an area (box) filter by the largest whole factor — OpenCV's fast path, and no
    aliasing — then bilinear to the exact size."""
    import cv2

    ph, pw = plane.shape
    k = min(pw // width, ph // height)
    if k >= 2:
        plane = cv2.resize(plane[: ph // k * k, : pw // k * k], (pw // k, ph // k), interpolation=cv2.INTER_AREA)
    if plane.shape != (height, width):
        plane = cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR)
    return plane


def _to_array(frame, size: tuple[int, int] | None, rotation: int, gray: bool, bgr: bool = False) -> np.ndarray:
    w, h = size if size is not None else (frame.width, frame.height)
    if frame.format.name in ("yuv420p", "yuvj420p") and w % 2 == 0 and h % 2 == 0 and (w, h) != (frame.width, frame.height):
        # fast path for the common case: shrink the planes with OpenCV, then convert the small
        # picture's colours (swscale converting the full frame costs more than decoding it)
        import cv2

        fw, fh = frame.width, frame.height
        y = _shrink(_plane(frame, 0, fw, fh), w, h)
        if gray:
            arr = y
        else:
            u = _shrink(_plane(frame, 1, (fw + 1) // 2, (fh + 1) // 2), w // 2, h // 2)
            v = _shrink(_plane(frame, 2, (fw + 1) // 2, (fh + 1) // 2), w // 2, h // 2)
            i420 = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(h * 3 // 2, w)
            arr = cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420 if bgr else cv2.COLOR_YUV2RGB_I420)
    else:
        arr = frame.to_ndarray(format="gray" if gray else ("bgr24" if bgr else "rgb24"), width=w, height=h)
    if rotation:
        arr = np.ascontiguousarray(np.rot90(arr, k=rotation // 90))
    return arr


@dataclass(frozen=True)
class DecodedFrame:
    index: int  # 0-based position in the range's decode order
    time_s: float
    pixels: np.ndarray  # HxWx3 uint8 RGB (BGR when asked), or HxW uint8 when grey


def iter_frames(
    path: str | Path,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    short_side: int | None = None,
    size: tuple[int, int] | None = None,
    gray: bool = False,
    bgr: bool = False,
    threads: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout_s: float = DEFAULT_VIDEO_TIMEOUT_S,
    what: str = "video",
) -> Iterator[DecodedFrame]:
    """Every frame with ``start_s <= time < end_s`` in presentation order, scaled to ``size`` (coded
    orientation, before rotation) or to a short side of ``short_side``. Seeks to the key frame before
    ``start_s``, so a scene in the middle of a long video costs one GOP of extra decoding. Pixels are
    RGB, or BGR (OpenCV's order) with ``bgr``, or luma with ``gray``."""
    with _decoding(path, start_s, end_s, threads=threads, max_pixels=max_pixels, timeout_s=timeout_s,
                   what=what) as (cc, frames):
        target = size or scaled_size(cc.width, cc.height, short_side)
        for index, (frame, t) in enumerate(frames):
            yield DecodedFrame(index, t, _to_array(frame, target, _rotation(frame), gray, bgr))


@contextmanager
def _decoding(path: str | Path, start_s: float, end_s: float | None, *, threads: bool, max_pixels: int,
              timeout_s: float, what: str) -> Iterator[tuple[Any, Iterator[tuple[Any, float]]]]:
    """The video stream's codec context and its decoded frames ``(frame, time)`` with ``start_s <= time <
    end_s``, in presentation order, after a seek to the key frame before ``start_s``; the whole ``with``
    body runs under ``timeout_s``, and a decode failure in it becomes a ``MediaError``."""
    with time_limit(timeout_s, what):
        container = _open(path, what)
        try:
            stream = _video_stream(container, what)
            cc = stream.codec_context
            if cc.width * cc.height > max_pixels:
                raise OversizedVideo(f"{what}: frames are {cc.width}x{cc.height}, above the limit of {max_pixels:,}")
            if threads:
                stream.thread_type = "AUTO"
            tb = float(stream.time_base)
            if start_s > 0:
                container.seek(int(start_s / tb), stream=stream, backward=True, any_frame=False)

            def frames() -> Iterator[tuple[Any, float]]:
                eps = 1e-6
                for frame in container.decode(stream):
                    t = frame.time if frame.time is not None else (frame.pts or 0) * tb
                    if t < start_s - eps:
                        continue
                    if end_s is not None and t >= end_s - eps:
                        break
                    yield frame, t

            yield cc, frames()
        except MediaError:
            raise
        except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
            raise MediaError(f"{what}: cannot decode video: {exc}") from exc
        finally:
            container.close()


def evenly_spaced_times(start_s: float, end_s: float, n: int) -> list[float]:
    """``n`` times at the centres of ``n`` equal parts of [start, end): the report's "evenly spaced
    frames" (5 for watermark and objects, 3 for text)."""
    span = max(end_s - start_s, 0.0)
    return [start_s + span * (i + 0.5) / n for i in range(n)]


def times_at_fps(start_s: float, end_s: float, fps: float) -> list[float]:
    """Sample times ``1/fps`` apart from the start of the range (2 FPS: 0.5 s apart)."""
    step = 1.0 / fps
    n = max(1, int(math.ceil((end_s - start_s) / step - 1e-9)))  # every sample time < end_s
    return [start_s + i * step for i in range(n)]


@dataclass(frozen=True)
class FrameRequest:
    """The frames one stage asks of a range: the frame shown at each of ``times``, decoded as ``iter_frames``
    would (``short_side`` or ``size``, ``gray``, ``bgr``). Hashable, so a shared decode keys each stage's
    frames by what it asked (``frames_for``)."""

    times: tuple[float, ...]
    short_side: int | None = None
    size: tuple[int, int] | None = None
    gray: bool = False
    bgr: bool = False

    @classmethod
    def of(cls, times: Sequence[float], *, short_side: int | None = None, size: Sequence[int] | None = None,
           gray: bool = False, bgr: bool = False) -> FrameRequest:
        return cls(tuple(float(t) for t in times), short_side, tuple(size) if size is not None else None,  # type: ignore[arg-type]
                   bool(gray), bool(bgr))

    @property
    def start_s(self) -> float:
        """Where a decode of this request alone starts: early enough that the frame shown at the first
        time (which starts before it) is decoded."""
        return max(0.0, min(self.times) - 0.5)


class _Picture:
    """One decoded picture of a shared decode, converted once per size / grey / channel order asked of it."""

    __slots__ = ("frame", "time_s", "rotation", "arrays")

    def __init__(self, frame, time_s: float):
        self.frame, self.time_s, self.rotation, self.arrays = frame, time_s, _rotation(frame), {}

    def array(self, target: tuple[int, int], gray: bool, bgr: bool) -> np.ndarray:
        key = (target, gray, bgr)
        if key not in self.arrays:
            self.arrays[key] = _to_array(self.frame, target, self.rotation, gray, bgr)
        return self.arrays[key]


class _Picker:
    """What ``frames_at`` does for one request, fed the pictures of a shared decode in order: the request
    sees only the pictures from its own start on (numbered from there), and takes for each time the last
    picture starting at or before it (the first it saw if none did)."""

    def __init__(self, request: FrameRequest, width: int, height: int):
        self.request = request
        self.wanted = sorted(request.times)
        self.start_s = request.start_s
        self.target = request.size or scaled_size(width, height, request.short_side)
        self.out: list[DecodedFrame | None] = [None] * len(self.wanted)
        self.previous: DecodedFrame | None = None
        self.seen = 0
        self.k = 0

    @property
    def done(self) -> bool:
        return self.k >= len(self.wanted)

    def _frame(self, picture: _Picture, index: int) -> DecodedFrame:
        r = self.request
        return DecodedFrame(index, picture.time_s, picture.array(self.target, r.gray, r.bgr))

    def offer(self, picture: _Picture) -> None:
        if self.done or picture.time_s < self.start_s - 1e-6:
            return
        current: DecodedFrame | None = None
        while self.k < len(self.wanted) and picture.time_s > self.wanted[self.k] + 1e-6:
            if self.previous is None and current is None:
                current = self._frame(picture, self.seen)
            self.out[self.k] = self.previous or current
            self.k += 1
        if not self.done:
            self.previous = current or self._frame(picture, self.seen)
            self.seen += 1

    def result(self, end_s: float | None, what: str) -> list[DecodedFrame] | MediaError:
        while self.k < len(self.wanted):
            self.out[self.k] = self.previous
            self.k += 1
        if any(f is None for f in self.out):
            return MediaError(f"{what}: no frame decoded in [{self.wanted[0]:.3f}, {end_s}) s")
        times = self.request.times
        order = sorted(range(len(times)), key=lambda i: times[i])
        result: list[DecodedFrame] = [None] * len(times)  # type: ignore[list-item]
        for rank, i in enumerate(order):
            result[i] = self.out[rank]  # type: ignore[assignment]
        return result


def frames_for(
    path: str | Path,
    requests: Sequence[FrameRequest],
    *,
    end_s: float | None = None,
    threads: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout_s: float = DEFAULT_VIDEO_TIMEOUT_S,
    what: str = "video",
) -> list[list[DecodedFrame] | MediaError]:
    """The frames of every request in ONE sequential decode of the range they span together (from the
    earliest request's start to the last time any of them wants, or ``end_s``): each request gets exactly
    the frames ``frames_at`` gives it alone — the same pictures, numbered from its own start, at its own
    size, grey or not — converted from the one decoded picture (once per distinct size). Pictures no
    request takes are never converted. A request that gets no frame gets its ``MediaError`` in its place;
    a failure of the decode itself (open, time limit, codec) raises for all."""
    out: list[list[DecodedFrame] | MediaError] = [[] for _ in requests]
    live = [i for i, r in enumerate(requests) if r.times]
    if not live:
        return out
    start_s = min(requests[i].start_s for i in live)
    with _decoding(path, start_s, end_s, threads=threads, max_pixels=max_pixels, timeout_s=timeout_s,
                   what=what) as (cc, frames):
        pickers = {i: _Picker(requests[i], cc.width, cc.height) for i in live}
        for frame, t in frames:
            picture = _Picture(frame, t)
            for picker in pickers.values():
                picker.offer(picture)
            if all(p.done for p in pickers.values()):
                break
        for i, picker in pickers.items():
            out[i] = picker.result(end_s, what)
    return out


def frames_at(path: str | Path, times: Sequence[float], *, end_s: float | None = None, short_side: int | None = None,
              size: tuple[int, int] | None = None, gray: bool = False, bgr: bool = False, **kwargs) -> list[DecodedFrame]:
    """The frame shown at each of ``times`` (the last frame starting at or before it), in one
    sequential decode of the range. Times past the last frame get the last frame. (``frames_for`` with
    one request: what a stage decodes in a task of its own.)"""
    if not times:
        return []
    request = FrameRequest.of(times, short_side=short_side, size=size, gray=gray, bgr=bgr)
    got = frames_for(path, [request], end_s=end_s, **kwargs)[0]
    if isinstance(got, MediaError):
        raise got
    return got
