"""One read and one decode per file for the worker runtime (``workers/runtime.py``).

- ``read_media``: a file's bytes from storage, or the storage error as the item's ``ItemFailure``.
- ``decode_upright``: the image decoded with its EXIF orientation applied, under the probe's pixel count.
- ``Media``: one file of a fused pass (docs/fused-stages.md): read once, fully decoded once, and the
  reduced views the later stages ask for made from that one decode.
- ``grey_of``: an image's greyscale conversion, made once per image object: phash and edges of a fused
  pass get the same view, and each needs its greyscale.
"""

from __future__ import annotations

import weakref
from typing import Any

from curation import storage
from curation.media import DEFAULT_MAX_PIXELS, MediaError, decode_image
from curation.storage import StorageError
from workers.stage import ItemFailure, Stage, StageItem, reduced_view


_GREYS: dict[int, tuple[weakref.ref, Any]] = {}  # id(image) -> (the image, weakly; its "L" conversion)


def grey_of(image: Any) -> Any:
    """``image.convert("L")``, converted once while ``image`` lives: in a fused pass phash and edges get the
    same view (``Media.views``), so the second stage reuses the first one's conversion (0.25 ms for a
    640x480 view). Kept no longer than the image (a weak reference's callback drops the entry); Pillow
    images cannot be hashed, hence the id, checked against the live image."""
    key = id(image)
    known = _GREYS.get(key)
    if known is not None and known[0]() is image:
        return known[1]
    grey = image.convert("L")
    _GREYS[key] = (weakref.ref(image, lambda _, key=key: _GREYS.pop(key, None)), grey)
    return grey


def read_media(uri: str) -> bytes | ItemFailure:
    """The file's bytes, or the storage error as an ItemFailure."""
    try:
        return storage.read_bytes(uri)
    except StorageError as exc:
        return ItemFailure(exc.error_class, str(exc))


def decode_upright(data: bytes, probe: Any, draft: int | None, asset_id: int, uri: str) -> Any:
    """The image decoded upright under the probe's pixel count (the job's limit, already applied by the
    probe), else the default limit; raises ``MediaError``."""
    limit = probe.width * probe.height if probe is not None else DEFAULT_MAX_PIXELS
    return decode_image(data, max_pixels=limit, draft_size=draft, what=f"asset {asset_id} ({uri})")


class Media:
    """One file of a fused pass: read once, decoded fully once — by the probe (``StageItem.keep_image``),
    or here by the first stage that needs the image — and a stage that asks for less than full size
    (``Stage.image_draft_size``) gets ``reduced_view`` of that decode: the very image a task of its own
    gives it (``StageWorker._fetch_batch``), so fused and unfused results are equal."""

    def __init__(self, uri: str):
        self.uri = uri
        self.data: bytes | ItemFailure | None = None
        self.full: Any = None
        self.views: dict[int | None, Any] = {}

    def read(self) -> bytes | ItemFailure:
        if self.data is None:
            self.data = read_media(self.uri)
        return self.data

    def fill(self, item: StageItem, stage: Stage, probe: Any) -> ItemFailure | None:
        """Give ``item`` what ``stage`` declares (as ``StageWorker._fetch_batch`` does); an ItemFailure
        when the file cannot be read or decoded."""
        if not (stage.needs_bytes or stage.needs_image):
            return None
        data = self.read()
        if isinstance(data, ItemFailure):
            return data
        item.data = data
        if stage.needs_bytes and self.full is None:
            item.keep_image = True  # the probe: its full decode is kept for the stages after it
        if not stage.needs_image:
            return None
        draft = stage.image_draft_size
        try:
            if not stage.takes_reduced_view():  # a JPEG draft decode of its own (not in a fused pass today)
                item.image = decode_upright(data, probe, draft, item.asset_id, item.uri)
                return None
            if self.full is None:
                self.full = decode_upright(data, probe, None, item.asset_id, item.uri)
            if draft not in self.views:
                self.views[draft] = reduced_view(self.full, draft)
            item.image = self.views[draft]
        except MediaError as exc:
            return ItemFailure(exc.error_class, str(exc))
        return None
