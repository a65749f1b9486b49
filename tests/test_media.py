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


def _stored_sideways(skimage_dir, orientation: int) -> tuple[bytes, "object"]:
    """A real photo stored as a camera does: pixels rotated, with the EXIF tag that puts them upright."""
    import io

    from PIL import Image

    upright = Image.open(skimage_dir / "chelsea.png").convert("RGB")  # 451 x 300, landscape
    stored = {6: upright.transpose(Image.Transpose.ROTATE_90), 8: upright.transpose(Image.Transpose.ROTATE_270),
              3: upright.transpose(Image.Transpose.ROTATE_180), 1: upright}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue(), upright


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_everywhere(skimage_dir, orientation):
    import numpy as np

    from workers.phash import phash_bits
    from workers.probe import ProbeParams, ProbeStage
    from workers.stage import StageItem

    data, upright = _stored_sideways(skimage_dir, orientation)
    header = read_header(data)
    assert (header.width, header.height, header.orientation) == (451, 300, orientation)  # as displayed
    image = decode_image(data)
    assert image.size == upright.size
    assert np.abs(np.asarray(image, dtype=np.int16) - np.asarray(upright, dtype=np.int16)).mean() < 4  # JPEG noise
    # the sideways-stored copy hashes like the upright original: found as a near duplicate
    a, b = phash_bits(image), phash_bits(upright)
    assert sum(x != y for x, y in zip(a, b)) <= 2
    probe = ProbeStage(ProbeParams())
    probe.setup()
    scores = probe.process([StageItem(1, "sideways.jpg", data=data)])[0]
    assert (scores.width, scores.height, scores.orientation) == (451, 300, orientation)


def test_an_image_without_the_tag_is_upright(skimage_dir):
    data, upright = _stored_sideways(skimage_dir, 1)
    assert read_header(data).orientation == 1 and decode_image(data).size == upright.size


def test_a_sideways_stored_photo_is_encoded_upright(skimage_dir, tmp_path):
    """The VAE latents land in the bucket of the displayed (landscape) shape, not the stored one."""
    from training.encode import ImageRecord, encode_images, tiny_image_vae

    data, _ = _stored_sideways(skimage_dir, 6)
    path = tmp_path / "sideways.jpg"
    path.write_bytes(data)
    vae, info = tiny_image_vae()
    shards = encode_images([ImageRecord("sideways", str(path), {})], vae, info, tier="low", output=str(tmp_path / "out"))
    height, width = shards[0].bucket
    assert width > height  # landscape, as displayed (the stored pixels are portrait)
