"""The fused pass's cheaper computations give what their definitions give, on the real demo photos (issue 14
§1): the probe's one parse and decode (``decode_with_header``) is ``read_header`` + ``decode_image``; phash@4's
shared greyscale conversion, one 32x32 resize and one matrix DCT hash exactly as the definition (scipy's DCT
of the bilinear 32x32 input) of the hashed pixels, of their mirror and of their centre, and within a bit or
so of ``imagehash.phash`` of the same pixels; edges@2 is the integer Sobel formula of the same pixels as
before the shared conversion, and differs from edges@1 (kornia) only on pixels lying exactly on the
threshold."""

from __future__ import annotations

import imagehash
import numpy as np
import pytest
import scipy.fftpack
from PIL import Image, ImageOps

from curation.media import MediaError, decode_image, decode_with_header, read_header
from curation.sample_media import write_broken_files
from tests.test_media import _stored_sideways
from workers.edges import SOBEL_SCALE, EdgeScores, EdgesStage, edge_grey, edge_scores
from workers.media_fetch import grey_of
from workers.phash import CENTER, COLOUR_SAMPLE, DARK_LUMA, PhashStage, hashed_grey, phash_scores
from workers.stage import StageItem, reduced_view


@pytest.fixture(scope="module")
def photos(skimage_dir, debian_photos):
    paths = sorted(p for p in skimage_dir.iterdir() if p.suffix in (".png", ".jpg"))
    return paths + debian_photos["opencv"] + debian_photos["mate"]


@pytest.fixture(scope="module")
def decoded(photos):
    """Each photo's full decode, as the probe leaves it for the stages after it."""
    return {p.name: decode_image(p.read_bytes()) for p in photos}


def test_the_probe_parses_and_decodes_once_what_header_and_decode_give_apart(skimage_dir, debian_photos, tmp_path):
    photos = sorted(p for p in skimage_dir.iterdir() if p.suffix in (".png", ".jpg")) + debian_photos["opencv"]
    files = [p.read_bytes() for p in photos + debian_photos["mate"][:2]]
    files += [_stored_sideways(skimage_dir, o)[0] for o in (3, 6, 8)]
    assert any(p.suffix == ".png" for p in photos)  # a PNG's EXIF may follow its pixels: read after the decode
    for data in files:
        header, image = decode_with_header(data)
        assert header == read_header(data)
        reference = decode_image(data)
        assert (image.mode, image.size) == (reference.mode, reference.size)
        assert image.tobytes() == reference.tobytes()
    for path in write_broken_files(tmp_path, skimage_dir / "rocket.jpg").all():  # the same error, word for word
        with pytest.raises(MediaError) as apart:
            read_header(path.read_bytes())
            decode_image(path.read_bytes())
        with pytest.raises(MediaError) as once:
            decode_with_header(path.read_bytes())
        assert (type(once.value), str(once.value)) == (type(apart.value), str(apart.value))


def _definition_bits(img) -> str:
    """phash@4's hash as defined, computed apart: scipy's 2-D DCT-II of the 32x32 bilinear greyscale resize,
    its 8x8 low-frequency block above its median."""
    pixels = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)[:8, :8]
    return "".join("1" if b else "0" for b in (dct > np.median(dct)).flatten())


def _imagehash_bits(img) -> str:
    return "".join("1" if b else "0" for b in imagehash.phash(img, hash_size=8).hash.flatten())


def _reference_phash(view) -> tuple:
    """phash@4 as defined: the hash of the view's greyscale box-reduced to about 64 px, of its mirror and of
    its central 80 %; colourfulness (of a nearest-neighbour sample of the view) and border fill (of the
    hashed pixels) by their formulas."""
    image = reduced_view(view.convert("L"), 64)
    w, h = image.size
    dx, dy = round(w * (1 - CENTER) / 2), round(h * (1 - CENTER) / 2)
    centre = image.crop((dx, dy, max(dx + 1, w - dx), max(dy + 1, h - dy)))
    sample = view.convert("RGB").resize((COLOUR_SAMPLE, COLOUR_SAMPLE), Image.Resampling.NEAREST)
    rgb = np.asarray(sample, dtype=np.int16)
    colour = np.abs(rgb[..., 0] - rgb[..., 1]).mean() + np.abs(rgb[..., 1] - rgb[..., 2]).mean()
    grey = np.asarray(image)
    ring = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    return (_definition_bits(image), _definition_bits(ImageOps.mirror(image)), _definition_bits(centre),
            round(float(colour), 3), round(float((ring <= DARK_LUMA).mean()), 4))


def test_phash_scores_are_their_definition_on_the_hashed_pixels_their_mirror_and_their_centre(decoded):
    views = {name: reduced_view(full, 256) for name, full in decoded.items()}
    apart = []
    for name, view in views.items():
        s = phash_scores(view)
        assert (s.phash, s.phash_mirror, s.phash_center, s.colourfulness, s.border_fill) == _reference_phash(view), name
        apart.append(sum(a != b for a, b in zip(s.phash, _imagehash_bits(hashed_grey(view)))))
    # the bilinear 32x32 input instead of imagehash's Lanczos: the same bits on most photos, about a bit apart
    assert np.median(apart) == 0 and np.mean(apart) < 1.5, apart


def test_phash_of_flat_and_mirror_symmetric_images_is_exact_not_rounding_noise(decoded):
    flat = phash_scores(Image.new("RGB", (640, 480), (90, 140, 30)))  # every AC coefficient is 0
    assert flat.phash == flat.phash_mirror == flat.phash_center == "1" + "0" * 63
    photo = decoded["chelsea.png"].crop((0, 0, 448, 300))  # 896 px wide: box-reduced by 4, still symmetric
    symmetric = Image.new("RGB", (2 * photo.width, photo.height))  # a photo and its mirror side by side
    symmetric.paste(photo, (0, 0))
    symmetric.paste(ImageOps.mirror(photo), (photo.width, 0))
    s = phash_scores(symmetric)  # its odd DCT columns are 0: mirroring, which negates them, changes no bit
    assert s.phash_mirror == s.phash != flat.phash


def test_phash_and_edges_share_one_view_and_its_greyscale_conversion(decoded):
    """phash@4 takes edges' view (one reduction of the full decode serves both in a fused pass) and the
    greyscale conversion of it that edges uses (``grey_of``: made once per image object)."""
    phash, edges = PhashStage(), EdgesStage()
    assert phash.image_draft_size == edges.image_draft_size == 256 and phash.takes_reduced_view()
    for name, full in list(decoded.items())[:20]:
        view = reduced_view(full, 256)
        (got,) = phash.process([StageItem(0, name, image=view)])
        grey = grey_of(view)
        assert got == phash_scores(view) and grey_of(view) is grey, name
        assert grey.tobytes() == view.convert("L").tobytes(), name
    assert grey_of(view.copy()) is not grey  # another image object (equal pixels): converted anew


def _integer_sobel(image, short_side: int, threshold: float) -> tuple[float, float]:
    """edges@2 as defined: the 3x3 Sobel gradients of the 8-bit greyscale pixels (border replicated) in
    integers; a pixel is an edge when its magnitude exceeds the threshold exactly."""
    p = np.pad(np.asarray(edge_grey(image, short_side), dtype=np.int64), 1, mode="edge")
    rows = p[:-2] + 2 * p[1:-1] + p[2:]
    cols = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
    gx, gy = rows[:, 2:] - rows[:, :-2], cols[2:] - cols[:-2]
    squared = gx * gx + gy * gy
    density = np.count_nonzero(squared > (SOBEL_SCALE * threshold) ** 2) / squared.size
    return round(density, 6), float(np.sqrt(squared).mean()) / SOBEL_SCALE


def sobel_edges(image, short_side: int, threshold: float) -> EdgeScores:
    """edges@1's formula (kornia's normalised Sobel in float32), the reference edges@2 is compared with."""
    import kornia
    import torch

    grey = np.asarray(edge_grey(image, short_side), dtype=np.float32) / 255.0
    with torch.inference_mode():
        magnitude = kornia.filters.sobel(torch.from_numpy(grey)[None, None], normalized=True, eps=0.0)
        return EdgeScores(edge_density=round(float((magnitude > threshold).float().mean()), 6),
                          edge_mean=round(float(magnitude.mean()), 6))


def test_edges_are_the_integer_sobel_formula_and_differ_from_edges_1_only_on_the_threshold(decoded):
    for name, full in decoded.items():
        view = reduced_view(full, 256)
        size = edge_grey(view, 256).size  # the shared greyscale conversion: the very pixels edges@2 resized
        assert edge_grey(view, 256).tobytes() == view.convert("L").resize(size, Image.Resampling.BILINEAR).tobytes()
        got = edge_scores(view, 256, 0.1)
        density, mean = _integer_sobel(view, 256, 0.1)
        assert got.edge_density == density, name
        assert abs(got.edge_mean - mean) <= 6e-7, name
        before = sobel_edges(view, 256, 0.1)  # edges@1: ties at the threshold went either way
        assert -1e-6 <= before.edge_density - got.edge_density <= 1e-4, name
        assert abs(before.edge_mean - got.edge_mean) <= 1.5e-6, name  # one step of the 6th decimal
