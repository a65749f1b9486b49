"""Bad media becomes a specific, named error — on real photos and their broken copies."""

from __future__ import annotations

import pytest

from curation.media import DecodeTimeout, DecompressionBomb, EmptyFile, MediaError, NotAnImage, decode_image, read_header, time_limit
from curation.sample_media import png_bomb, write_broken_files


@pytest.fixture
def broken(tmp_path, skimage_dir):
    return write_broken_files(tmp_path, skimage_dir / "rocket.jpg")


def test_real_jpeg_decodes(skimage_dir):
    img = decode_image((skimage_dir / "rocket.jpg").read_bytes())
    assert img.size == (640, 427) and img.mode == "RGB"


def test_truncated_jpeg(broken):
    data = broken.truncated_jpeg.read_bytes()
    assert read_header(data).format == "JPEG"  # the header is intact ...
    with pytest.raises(MediaError, match="truncated") as info:  # ... the pixels are not
        decode_image(data)
    assert info.value.error_class == "corrupt_media"


def test_zero_byte(broken):
    with pytest.raises(EmptyFile):
        decode_image(broken.zero_byte.read_bytes())


def test_text_named_jpg(broken):
    with pytest.raises(NotAnImage) as info:
        read_header(broken.text_as_jpeg.read_bytes())
    assert info.value.error_class == "not_an_image"


def test_png_bomb_is_refused_from_the_header(broken):
    data = broken.png_bomb.read_bytes()
    assert len(data) < 2000
    with pytest.raises(DecompressionBomb, match="30000x30000"):
        decode_image(data)
    # a smaller claim under the limit is let through to the decoder, which then finds no pixels
    with pytest.raises(MediaError):
        decode_image(png_bomb(300, 300))


def test_decode_time_limit():
    import time

    with pytest.raises(DecodeTimeout):
        with time_limit(0.2, "slow thing"):
            time.sleep(2)


def test_draft_decode_is_smaller_but_same_picture(skimage_dir):
    data = (skimage_dir / "rocket.jpg").read_bytes()
    full = decode_image(data)
    small = decode_image(data, draft_size=64)
    assert small.width < full.width and small.width >= 64
