"""The thumbnail stages on real media: a WebP of each photo (long side 256, aspect kept, never enlarged), a
contact sheet of a real scene, and an unwritable output is that item's error."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from curation.sample_media import MediaUnavailable, sample_clips
from tests.missing import unavailable
from workers.stage import ItemFailure, Span, StageItem
from workers.thumbnail import ThumbnailParams, ThumbnailStage, VideoThumbnailParams, VideoThumbnailStage

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png")


def _items(skimage_dir: Path) -> list[StageItem]:
    items = []
    for i, name in enumerate(PHOTOS):
        path = skimage_dir / name
        if not path.is_file():
            unavailable(f"scikit-image photo {name} missing")
        items.append(StageItem(i + 1, str(path), image=Image.open(path).convert("RGB")))
    return items


def test_image_thumbnails_are_webp_with_long_side_256(skimage_dir, tmp_path):
    items = _items(skimage_dir)
    stage = ThumbnailStage(ThumbnailParams(output=str(tmp_path)))
    stage.setup()
    results = stage.process(items)
    for item, r in zip(items, results):
        assert not isinstance(r, ItemFailure), r
        assert r.thumbnail_uri.startswith(str(tmp_path)) and r.thumbnail_uri.endswith(f"/{item.asset_id}.webp")
        with Image.open(io.BytesIO(Path(r.thumbnail_uri).read_bytes())) as got:
            assert got.format == "WEBP" and got.size == (r.thumbnail_width, r.thumbnail_height)
        assert max(r.thumbnail_width, r.thumbnail_height) == 256
        w, h = item.image.size
        assert abs(r.thumbnail_width / r.thumbnail_height - w / h) < 0.02
        assert r.thumbnail_frames == 1 and r.thumbnail_bytes == Path(r.thumbnail_uri).stat().st_size


def test_small_images_are_not_enlarged_and_the_default_output_is_the_state_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATION_HOME", str(tmp_path / "home"))
    stage = ThumbnailStage()
    stage.setup()
    (r,) = stage.process([StageItem(7, "x.png", image=Image.new("RGB", (100, 40), (200, 10, 10)))])
    assert (r.thumbnail_width, r.thumbnail_height) == (100, 40)
    assert r.thumbnail_uri.startswith(str(tmp_path / "home" / "thumbnails"))


def test_unwritable_output_is_an_item_error(skimage_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    stage = ThumbnailStage(ThumbnailParams(output=str(blocker)))
    stage.setup()
    results = stage.process(_items(skimage_dir)[:1])
    assert isinstance(results[0], ItemFailure) and results[0].error_class == "thumbnail_write"


def test_scene_contact_sheet(media_cache, tmp_path):
    try:
        bikes = sample_clips(media_cache)["bikes"]
    except (MediaUnavailable, KeyError) as exc:
        unavailable(f"real clips unavailable: {exc}")
    stage = VideoThumbnailStage(VideoThumbnailParams(output=str(tmp_path), frames=6, columns=3))
    stage.setup()
    scene = StageItem(2, str(bikes), path=str(bikes), span=Span(76, 137, 3.04, 5.48))
    not_scene = StageItem(3, str(bikes), path=str(bikes))
    sheet, failure = stage.process([scene, not_scene])
    assert not isinstance(sheet, ItemFailure), sheet
    assert sheet.thumbnail_frames == 6 and max(sheet.thumbnail_width, sheet.thumbnail_height) == 512
    with Image.open(sheet.thumbnail_uri) as got:
        assert got.format == "WEBP"
        tile_w, tile_h = got.width / 3, got.height / 2  # 3 columns, 2 rows of frames
        assert tile_w > tile_h  # the clip is landscape
    assert isinstance(failure, ItemFailure) and failure.error_class == "not_a_scene"


def test_thumbnail_params_reject_nonsense():
    with pytest.raises(ValueError):
        ThumbnailParams(size=0)
