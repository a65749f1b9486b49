"""thumbnail — a small WebP of each image and a contact sheet of each scene, for people to look at: the
report's kept-vs-dropped strips (``curation report``) and the console's slice browser (``curation serve``).
Nothing is scored; the result is where the picture is and its size.

- ``thumbnail`` (images): the upright image scaled so its long side is ``size`` (256 px; never enlarged),
  WebP at ``quality``.
- ``video_thumbnail`` (scenes): ``frames`` (6) evenly spaced frames of the scene tiled ``columns`` wide into
  one contact sheet whose long side is ``size`` (512 px), WebP.

The file goes to ``<output>/<config>/<asset_id>.webp`` through ``curation.storage`` (a folder or an
``s3://`` prefix): ``output`` is the job's (stage param), by default ``<CURATION_HOME>/thumbnails``. Unlike
the scoring stages this one writes an object, since its result *is* a picture; it still runs no SQL, and
the URI lands in ``thumbnail_results`` (``curated_images.thumbnail_uri`` / ``curated_scenes.thumbnail_uri``).
A picture that cannot be written is that item's error (``thumbnail_write``); bad media fails as everywhere
(the runtime's decode for images, the frame decode for scenes).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from curation import storage
from curation.video import DecodedFrame
from workers.columns import ViewColumns
from workers.scene_frames import FrameSampledParams, FrameSampledStage, sampled_frames, scene_frames
from workers.stage import ItemFailure, Resources, Stage, StageItem

IMAGE_SIDE = 256
SHEET_SIDE = 512
VIEW_COLUMNS = ("tn.thumbnail_uri", "tn.thumbnail_width", "tn.thumbnail_height")


def default_output() -> str:
    """``<CURATION_HOME>/thumbnails``: the state folder the embedded database lives in."""
    from curation.config import Settings

    return str(Settings.from_env().home / "thumbnails")


class ThumbnailParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    output: str | None = Field(None, description="folder or s3:// prefix the WebP files go under "
                               "(default: <CURATION_HOME>/thumbnails)")
    size: int = Field(IMAGE_SIDE, ge=16, le=2048, description="long side of the thumbnail, px (never enlarged)")
    quality: int = Field(80, ge=1, le=100, description="WebP quality")


class VideoThumbnailParams(FrameSampledParams):
    frames: int = sampled_frames(6, most=36, description="evenly spaced frames of the scene on its contact sheet")
    columns: int = Field(3, ge=1, le=12, description="frames per row of the contact sheet")
    output: str | None = Field(None, description="folder or s3:// prefix the WebP files go under "
                               "(default: <CURATION_HOME>/thumbnails)")
    size: int = Field(SHEET_SIDE, ge=16, le=4096, description="long side of the contact sheet, px")
    quality: int = Field(80, ge=1, le=100, description="WebP quality")


@dataclass(frozen=True)
class ThumbnailResult:
    thumbnail_uri: str
    thumbnail_width: int
    thumbnail_height: int
    thumbnail_frames: int  # 1 for an image; the frames on a scene's contact sheet
    thumbnail_bytes: int


class ThumbnailWriteError(Exception):
    error_class = "thumbnail_write"


def fit(image: Image.Image, side: int) -> Image.Image:
    """``image`` scaled so its long side is at most ``side`` (aspect kept, never enlarged)."""
    w, h = image.size
    scale = side / max(w, h)
    if scale >= 1:
        return image
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def contact_sheet(frames: Sequence[np.ndarray], columns: int, side: int) -> Image.Image:
    """The frames (HxWx3 RGB, one size) tiled ``columns`` wide, scaled so the sheet's long side is ``side``."""
    columns = max(1, min(columns, len(frames)))
    rows = math.ceil(len(frames) / columns)
    h, w = frames[0].shape[:2]
    sheet = Image.new("RGB", (w * columns, h * rows))
    for i, pixels in enumerate(frames):
        sheet.paste(Image.fromarray(pixels), ((i % columns) * w, (i // columns) * h))
    return fit(sheet, side)


def encode_webp(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue()


class _Writes:
    """Where a thumbnail stage writes: one folder per configuration, so two sizes of one asset coexist."""

    params: ThumbnailParams | VideoThumbnailParams

    def setup(self) -> None:
        base = self.params.output or default_output()
        self.folder = storage.join(base, self.config().config_id.replace(":", "-"))

    def store(self, asset_id: int, picture: Image.Image, frames: int) -> ThumbnailResult | ItemFailure:
        uri = storage.join(self.folder, f"{asset_id}.webp")
        data = encode_webp(picture, self.params.quality)
        try:
            storage.write_bytes(uri, data)
        except (OSError, storage.StorageError) as exc:
            return ItemFailure(ThumbnailWriteError.error_class, f"asset {asset_id}: cannot write {uri}: {exc}")
        except Exception as exc:  # noqa: BLE001 - boto3's errors: the item fails, the batch goes on
            return ItemFailure(ThumbnailWriteError.error_class, f"asset {asset_id}: cannot write {uri}: "
                               f"{exc.__class__.__name__}: {exc}")
        return ThumbnailResult(uri, picture.width, picture.height, frames, len(data))


class ThumbnailStage(_Writes, Stage[ThumbnailParams, ThumbnailResult]):
    """A WebP of the upright image, long side ``size`` (256 px)."""

    name = "thumbnail"
    version = "1"
    result_type = ThumbnailResult
    result_table = "thumbnail_results"
    Params = ThumbnailParams
    view_columns = (ViewColumns("curated_images", "tn", VIEW_COLUMNS),)
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 32
    needs_image = True
    image_draft_size = 2 * IMAGE_SIDE  # JPEGs decode at reduced scale; the thumbnail is smaller still
    requires = ("probe",)

    def process(self, items: Sequence[StageItem]) -> list[ThumbnailResult | ItemFailure]:
        return [self.store(item.asset_id, fit(item.image, self.params.size), 1) for item in items]


class VideoThumbnailStage(_Writes, FrameSampledStage[VideoThumbnailParams, ThumbnailResult]):
    """A contact sheet of ``frames`` (6) evenly spaced frames of the scene, long side ``size`` (512 px)."""

    name = "video_thumbnail"
    version = "1"
    result_type = ThumbnailResult
    result_table = "thumbnail_results"
    Params = VideoThumbnailParams
    view_columns = (ViewColumns("curated_scenes", "tn", VIEW_COLUMNS),)
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 8
    frame_decode: ClassVar[dict] = {"short_side": 180}

    def score_frames(self, frames: list[DecodedFrame]) -> Image.Image:
        """The contact sheet (``process`` stores it under the item's asset id)."""
        pixels = [f.pixels for f in frames]
        h, w = pixels[0].shape[:2]
        pixels = [p if p.shape[:2] == (h, w) else np.asarray(Image.fromarray(p).resize((w, h))) for p in pixels]
        return contact_sheet(pixels, self.params.columns, self.params.size)

    def process(self, items: Sequence[StageItem]) -> list[ThumbnailResult | ItemFailure]:
        out: list[ThumbnailResult | ItemFailure] = []
        for item in items:
            frames = scene_frames(item, self.name, self.times, timeout_s=self.params.timeout_s, **self.frame_decode)
            if isinstance(frames, ItemFailure):
                out.append(frames)
            elif not frames:
                out.append(ItemFailure("no_frames", f"asset {item.asset_id} ({item.uri}): no frame decoded in the scene"))
            else:
                out.append(self.store(item.asset_id, self.score_frames(frames), len(frames)))
        return out
