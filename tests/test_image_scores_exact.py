"""The fused pass's cheaper computations give what their definitions give, on the real demo photos (issue 14
§1): the probe's one parse and decode (``decode_with_header``) is ``read_header`` + ``decode_image``; phash@4's
shared greyscale conversion, one 32x32 resize and one matrix DCT hash exactly as the definition (scipy's DCT
of the bilinear 32x32 input) of the hashed pixels, of their mirror and of their centre, and within a bit or
so of ``imagehash.phash`` of the same pixels; edges@3 is the integer Sobel formula of its pixels, which differ
from edges@2's (Pillow's bilinear resize) by a grey level or so (a blur that makes up the antialiasing, then
OpenCV's bilinear interpolation), so that its scores are within a few hundredths of edges@2's; and the Sobel
differs from edges@1 (kornia) only on pixels lying exactly on the threshold."""

from __future__ import annotations

import cv2
import imagehash
import numpy as np
import pytest
import scipy.fftpack
from PIL import Image, ImageOps

from curation.media import MediaError, decode_image, decode_with_header, read_header
from curation.sample_media import write_broken_files
from tests.test_media import _stored_sideways
from workers.edges import SOBEL_SCALE, EdgeScores, EdgesStage, edge_grey, edge_scores, edge_size
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


def _integer_sobel(pixels: np.ndarray, threshold: float) -> tuple[float, float]:
    """The Sobel scores as defined: the 3x3 Sobel gradients of the 8-bit greyscale pixels (border replicated) in
    integers; a pixel is an edge when its magnitude exceeds the threshold exactly."""
    p = np.pad(pixels.astype(np.int64), 1, mode="edge")
    rows = p[:-2] + 2 * p[1:-1] + p[2:]
    cols = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
    gx, gy = rows[:, 2:] - rows[:, :-2], cols[2:] - cols[:-2]
    squared = gx * gx + gy * gy
    density = np.count_nonzero(squared > (SOBEL_SCALE * threshold) ** 2) / squared.size
    return round(density, 6), float(np.sqrt(squared).mean()) / SOBEL_SCALE


def _pillow_pixels(image, short_side: int) -> np.ndarray:
    """edges@2's pixels: the greyscale conversion resized by Pillow's bilinear filter (antialiased)."""
    grey = image.convert("L")
    return np.asarray(grey.resize(edge_size(grey.size, short_side), Image.Resampling.BILINEAR))


def sobel_edges(pixels: np.ndarray, threshold: float) -> EdgeScores:
    """edges@1's Sobel (kornia's normalised Sobel in float32), the reference the integer Sobel is compared with."""
    import kornia
    import torch

    grey = pixels.astype(np.float32) / 255.0
    with torch.inference_mode():
        magnitude = kornia.filters.sobel(torch.from_numpy(grey)[None, None], normalized=True, eps=0.0)
        return EdgeScores(edge_density=round(float((magnitude > threshold).float().mean()), 6),
                          edge_mean=round(float(magnitude.mean()), 6))


def test_edges_are_the_integer_sobel_of_their_pixels_and_differ_from_edges_1_only_on_the_threshold(decoded):
    for name, full in decoded.items():
        view = reduced_view(full, 256)
        pixels = edge_grey(view, 256)
        assert pixels.dtype == np.uint8 and pixels.shape[::-1] == edge_size(view.size, 256), name
        got = edge_scores(view, 256, 0.1)
        density, mean = _integer_sobel(pixels, 0.1)
        assert got.edge_density == density, name
        assert abs(got.edge_mean - mean) <= 6e-7, name
        before = sobel_edges(pixels, 0.1)  # edges@1's float Sobel: ties at the threshold went either way
        assert -1e-6 <= before.edge_density - got.edge_density <= 1e-4, name
        assert abs(before.edge_mean - got.edge_mean) <= 1.5e-6, name  # one step of the 6th decimal


def test_edges_3_resize_is_pillows_antialiased_bilinear_within_a_grey_level_and_scores_alike(decoded):
    """edges@3's resize against edges@2's (Pillow's bilinear, antialiased): pixels under a grey level apart (line art
    a few), much
    closer than OpenCV's bilinear interpolation without the blur (aliased); the scores of the 256 px views, as
    the runtime gives them, within what docs/fused-stages.md reports; complexity's larger images (shrunk by 2
    or more: a box reduction first) and images grown to 256 px alike."""
    cases = [(name, reduced_view(full, 256)) for name, full in decoded.items()]
    cases += [(f"{name} at 1024", full.resize((1024, round(1024 * full.height / full.width))))
              for name, full in list(decoded.items())[::10]]
    cases += [(f"{name} at 200", full.resize((200, round(200 * full.height / full.width))))
              for name, full in list(decoded.items())[::20]]
    apart, plain, density, mean = [], [], [], []
    for name, image in cases:
        ours, pillow = edge_grey(image, 256).astype(np.int16), _pillow_pixels(image, 256).astype(np.int16)
        apart.append(np.abs(ours - pillow).mean())
        aliased = cv2.resize(np.asarray(image.convert("L")), edge_size(image.size, 256), interpolation=cv2.INTER_LINEAR)
        plain.append(np.abs(aliased.astype(np.int16) - pillow).mean())
        got, before = edge_scores(image, 256, 0.1), _integer_sobel(pillow.astype(np.uint8), 0.1)
        density.append(got.edge_density - before[0])
        mean.append(got.edge_mean - before[1])
    apart, plain = np.array(apart), np.array(plain)
    assert apart.max() < 4 and apart.mean() < 0.5 and np.median(apart) < 0.3, apart.max()  # 3.7: pic2, line art
    grown = np.array([name.endswith("at 200") for name, _ in cases])
    assert (apart[~grown] <= plain[~grown]).mean() > 0.95 and apart[~grown].mean() < 0.6 * plain[~grown].mean()
    assert np.abs(density).max() < 0.03 and np.abs(density).mean() < 0.002, np.abs(density).max()
    assert np.abs(mean).max() < 0.004 and np.abs(mean).mean() < 0.0005, np.abs(mean).max()
    assert EdgesStage.version == "3"


def test_edges_of_a_flat_image_are_zero_at_every_scale():
    for size in ((800, 600), (512, 512), (3000, 2000), (200, 150)):
        got = edge_scores(Image.new("RGB", size, (120, 160, 200)), 256, 0.1)
        assert (got.edge_density, got.edge_mean) == (0.0, 0.0), size
