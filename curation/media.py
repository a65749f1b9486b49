"""Decoding media safely: a pixel-count guard against decompression bombs (checked on the header,
before any pixel is decoded) and a wall-clock limit on decoding. Every failure is a ``MediaError``
whose ``error_class`` names what is wrong with the file."""

from __future__ import annotations

import io
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

# We apply our own, configurable limit on the header instead of Pillow's global one.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's historical default: ~ 9459 x 9459, 0.25 GiB as RGB
DEFAULT_DECODE_TIMEOUT_S = 20.0


class MediaError(Exception):
    error_class = "corrupt_media"


class EmptyFile(MediaError):
    error_class = "empty_file"


class NotAnImage(MediaError):
    error_class = "not_an_image"


class DecompressionBomb(MediaError):
    error_class = "decompression_bomb"


class DecodeTimeout(MediaError):
    error_class = "decode_timeout"


EXIF_ORIENTATION = 0x0112  # 1 upright; 2-4 mirrored/rotated 180; 5-8 rotated by 90 degrees (width and height swap)


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, as the viewer sees it: ``width`` x ``height`` after the EXIF orientation;
    ``orientation`` the raw tag (1 when absent)."""

    format: str
    width: int
    height: int
    mode: str
    orientation: int = 1


def exif_orientation(img: Image.Image) -> int:
    """The raw EXIF orientation tag (1..8), 1 when absent or invalid."""
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except (ValueError, TypeError, OSError, SyntaxError):
        return 1
    return value if 1 <= value <= 8 else 1


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise ``DecodeTimeout`` if the block runs longer than ``seconds``.

    Uses SIGALRM, so it only interrupts in the main thread (where Ray runs a default actor's
    methods). Pillow decodes in Python-level chunks, so the alarm is seen between chunks."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise DecodeTimeout(f"{what}: decoding took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _open(data: bytes, what: str) -> Image.Image:
    if len(data) == 0:
        raise EmptyFile(f"{what}: file is empty (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise NotAnImage(f"{what}: not a recognised image format ({len(data)} bytes)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"{what}: unreadable image header: {exc}") from exc


def _check_pixels(img: Image.Image, max_pixels: int, what: str) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise MediaError(f"{what}: invalid size {width}x{height}")
    if width * height > max_pixels:
        raise DecompressionBomb(
            f"{what}: header claims {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,}"
        )


def read_header(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image") -> ImageHeader:
    """Format, size and mode from the header alone (no pixel decoded; but a PNG's EXIF may follow its pixels,
    so Pillow decodes a PNG to find the orientation: ``decode_with_header`` gets both from one decode)."""
    img = _open(data, what)
    _check_pixels(img, max_pixels, what)
    orientation = exif_orientation(img)
    width, height = (img.height, img.width) if orientation >= 5 else (img.width, img.height)
    return ImageHeader(format=img.format or "unknown", width=width, height=height, mode=img.mode,
                       orientation=orientation)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout_s: float = DEFAULT_DECODE_TIMEOUT_S,
    draft_size: int | None = None,
    what: str = "image",
) -> Image.Image:
    """Fully decode the first frame to RGB, upright: the EXIF orientation is applied, so every stage,
    hash and latent sees the image as a viewer does.

    ``draft_size`` lets JPEG decode at a reduced scale (DCT scaling, up to 8x fewer pixels) when the
    caller only needs an image whose short side is about that size; other formats ignore it."""
    img = _open(data, what)
    _check_pixels(img, max_pixels, what)
    return _decode(img, timeout_s, draft_size, what)[0]


def decode_with_header(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout_s: float = DEFAULT_DECODE_TIMEOUT_S,
    what: str = "image",
) -> tuple[ImageHeader, Image.Image]:
    """``read_header`` and ``decode_image`` of the same bytes from one parse and one decode (the probe):
    the header as the file states it (format, stored mode, displayed size), the image as ``decode_image``."""
    img = _open(data, what)
    _check_pixels(img, max_pixels, what)
    fmt, mode, size = img.format, img.mode, img.size
    image, orientation = _decode(img, timeout_s, None, what)
    width, height = (size[1], size[0]) if orientation >= 5 else size
    return ImageHeader(format=fmt or "unknown", width=width, height=height, mode=mode,
                       orientation=orientation), image


def _decode(img: Image.Image, timeout_s: float, draft_size: int | None, what: str) -> tuple[Image.Image, int]:
    """The opened ``img`` decoded to upright RGB, and its raw EXIF orientation."""
    try:
        with time_limit(timeout_s, what):
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            orientation = exif_orientation(img)
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = img.convert("RGB")
    except MediaError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise MediaError(f"{what}: cannot decode {img.format or 'image'} data: {exc}") from exc
    return img, orientation


def fit_long_side(img: Image.Image, max_side: int) -> Image.Image:
    """RGB ``img`` scaled down (bilinear) so its long side is at most ``max_side``; smaller images as they are."""
    img = img.convert("RGB")
    scale = max_side / max(img.size)
    if scale >= 1:
        return img
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR)
