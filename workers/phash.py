"""phash — perceptual hash for deduplication (report §4.2: "an image perceptual hash is calculated
for each image ... identifies and removes exact duplicates and images that are visually very similar").

Scores (of the upright image, EXIF orientation applied; the runtime hands phash the 256 px view edges also
takes, so a fused pass makes one reduction of the full decode for both, and the two share its greyscale
conversion; the hashes and the fill are of ``hashed_grey``, that greyscale box-reduced to about 64 px):

- ``phash``: the 64-bit DCT perceptual hash (``imagehash.phash``'s: 32x32 greyscale, 2-D DCT-II, the 8x8
  low-frequency block thresholded at its median; but the 32x32 input is a bilinear resize, not Lanczos,
  and the coefficients are rounded to 1e-4 so that those that are zero, as in a flat image, are zero),
  stored as ``bit(64)``. Hamming distance 0..64; 0 for a resized or re-encoded copy of the same photo,
  ~20-40 for unrelated photos. Greyscale copies hash alike.
- ``phash_mirror``: the same hash of the horizontally mirrored image — a flipped copy's ``phash`` equals
  the original's ``phash_mirror``.
- ``phash_center``: the hash of the central 80 % (each side cut by 10 %), which small rotations (a few
  degrees: new corners) and borders move much less than the full hash (``bench/near_duplicates.py``).
- ``colourfulness``: mean spread between the colour channels (|R-G| + |G-B|) over a 64x64 nearest-neighbour
  sample of the view, 0..510 (0 for a greyscale copy stored as RGB, > 10 for most colour photos): the
  keep-one rule prefers colour.
- ``border_fill``: the share (0..1) of the image's outermost ring of pixels that is near black (luma <=
  16): a copy rotated without enlarging the canvas gains black corners there (a 3° rotation: +2 % or more
  of the ring on 94 % of 136 real photos; a resize, JPEG re-encode or mirror moves it by more than 2 % on
  at most 3 %). The keep-one rule's ``framing`` criterion prefers the copy with less fill.

After the hashes are written, pairs within 16 bits by any of the four comparisons (full, mirrored,
centre, crop: one's centre hash against the other's full hash) of any earlier-hashed asset — this job or
any other — are recorded in ``near_duplicates`` (with the comparison that matched) through pgvector's HNSW bit indexes; the job's ``max_distance`` (default 8)
and ``keep_rule`` are applied by the curated view.

``keep_rule`` is the order of the criteria that pick the one image kept of a near-duplicate group (the
curated view compares each pair of neighbours criterion by criterion; the first that differs decides,
then the lower asset id):

- ``colour``: colour over greyscale (``colourfulness`` >= 4);
- ``framing``: no added crop or rotation. A crop: the pair's centre and full hashes are asymmetric — when
  A's centre hash is at least 8 bits closer to B's full hash than A's full hash is to B's centre hash, B
  shows a part of A (a 5 % crop per side: right on 88 % of 136 real photos, wrong on 6 %; a 10 % crop
  scaled back up: 98 % / 1 %). Otherwise an added rotation or black border: ``border_fill`` more than
  0.02 above the other's (3° rotations: 88 % right, 7 % wrong with both checks);
- ``quality``: the better quality score of the job, when both have one: Q-Align quality (differences
  under 0.1 of its 1-5 scale are ties), else TOPIQ technical (0.02), else BRISQUE (lower is better; 2);
- ``pixels``: more pixels; ``bytes``: more bytes.

Default ``colour,framing,quality,pixels,bytes`` (phash@3); ``colour_pixels_bytes`` (phash@2's rule) and
``pixels_bytes`` (phash@1's) are the same syntax (``_`` or ``,`` between names).

phash@4 (issue 14 §1: the fused pass's CPU time) against phash@3, which was ``imagehash.phash`` bit for bit:
the hashed pixels are the greyscale of edges' 256 px view box-reduced to about 64 px, instead of the full
decode box-reduced to about 64 px and then converted (a rounding apart); the 32x32 hash input is Pillow's
bilinear (triangle filter) resize, 0.07 ms, instead of Lanczos, 0.2-0.3 ms, twice per image (of the 140
demo photos, 101 get imagehash's bits of the same pixels, 136 are within 2 bits of them, 0.7 bits apart on
average); the DCT is one matrix product and the mirrored hash negates its odd columns (mirroring negates
them exactly); colourfulness is the mean over a nearest-neighbour sample of the view instead of over a
64x64 bicubic thumbnail. Near-duplicate recall and false pairs on derived copies of real photos, against
phash@3 and imagehash, are in docs/fused-stages.md; the keep rule's tolerances above were measured under
phash@3 (the groups of real photos in tests/test_configs.py are decided alike under phash@4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import re

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.columns import Bits64, ViewColumns
from workers.media_fetch import grey_of
from workers.stage import ItemFailure, Resources, Stage, StageItem, reduced_view

DEFAULT_MAX_DISTANCE = 8
KEEP_CRITERIA = ("colour", "framing", "quality", "pixels", "bytes")
DEFAULT_KEEP_RULE = ",".join(KEEP_CRITERIA)


class PhashParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_distance: int = Field(DEFAULT_MAX_DISTANCE, ge=0, le=16, description="Hamming bits for a near duplicate "
                              "(applied when the slice is read; pairs are stored up to 16 bits)")
    keep_rule: str = Field(
        DEFAULT_KEEP_RULE, description="which copy of a near-duplicate group is kept: the criteria in order, "
        f"names from {', '.join(KEEP_CRITERIA)} separated by ',' or '_' (then the lower asset id); "
        "colour_pixels_bytes: phash@2's rule, pixels_bytes: phash@1's")

    @field_validator("keep_rule")
    @classmethod
    def _known_criteria(cls, value: str) -> str:
        return ",".join(keep_criteria(value))


def keep_criteria(rule: str) -> list[str]:
    """The criteria of a ``keep_rule`` in order; ``ValueError`` names an unknown or repeated one."""
    names = [n for n in re.split(r"[,_\s]+", rule.strip().lower()) if n]
    unknown = [n for n in names if n not in KEEP_CRITERIA]
    if not names or unknown:
        raise ValueError(f"keep_rule {rule!r}: unknown criteria {unknown}; use names from {', '.join(KEEP_CRITERIA)}")
    if len(set(names)) != len(names):
        raise ValueError(f"keep_rule {rule!r}: a criterion is named twice")
    return names


HASH_INPUT = 32  # the DCT's input side (imagehash.phash's: hash_size 8 x highfreq_factor 4)
CENTER = 0.8  # the central share of each side hashed by phash_center
GREYSCALE_BELOW = 4.0  # colourfulness under this is a greyscale copy (curated view's keep rule)
DARK_LUMA = 16  # border_fill counts ring pixels at or below this luma (black fill after a JPEG re-encode)
# the keep rule's tolerances (curated view): measured on derived copies of 136 real photos (docs/curated-view.md)
CROP_BITS = 8  # the centre/full asymmetry that says one copy is a crop of the other
CROP_NEAR_BITS = 16  # ... only between hashes this close (else the two do not overlap by a crop)
FILL_MARGIN = 0.02  # border_fill difference that says one copy has added black corners or borders
QUALITY_TIES = {"qalign_quality": 0.1, "topiq_technical": 0.02, "brisque": 2.0}  # differences under these tie


@dataclass(frozen=True)
class PhashScores:
    phash: Bits64
    phash_mirror: Bits64 | None  # NULL for hashes written by phash@1
    phash_center: Bits64 | None
    colourfulness: float | None
    border_fill: float | None = None  # NULL for hashes written by phash@1 and @2


HASHED_VIEW = 64  # phash hashes its view's greyscale box-reduced to a short side of at least this
EDGES_VIEW = 256  # edges' ``image_draft_size``: one box reduction of the full decode serves both stages
COLOUR_SAMPLE = 64  # colourfulness: a COLOUR_SAMPLE x COLOUR_SAMPLE nearest-neighbour sample of the view


def hashed_grey(image):
    """The pixels phash@4 hashes: the greyscale of ``image`` (the runtime's ``reduced_view`` at
    ``EDGES_VIEW``; ``grey_of``: converted once for phash and edges) box-reduced again (``reduced_view``:
    by 8, 4 or 2, keeping the short side >= 64)."""
    return reduced_view(grey_of(image), HASHED_VIEW)


def phash_bits(image) -> str:
    """The 64-bit hash of ``image`` (8x8 bits, row by row) as a '0'/'1' string."""
    return _bits(_dct8(_hash_input(image.convert("L"))))


def _hash_input(grey) -> np.ndarray:
    """The 32x32 greyscale pixels the DCT transforms: ``grey`` resized with Pillow's bilinear filter (a triangle
    as wide as two source pixels per output pixel: antialiased, and symmetric, so resizing commutes with
    mirroring; Pillow's box filter is not, at pixel boundaries)."""
    return np.asarray(grey.resize((HASH_INPUT, HASH_INPUT), Image.Resampling.BILINEAR))


# scipy.fftpack's DCT-II (imagehash's): y[k] = 2 sum_n x[n] cos(pi k (2n + 1) / 2N); only k < 8 is hashed
_DCT8 = 2 * np.cos(np.pi * np.arange(8)[:, None] * (2 * np.arange(HASH_INPUT) + 1) / (2 * HASH_INPUT))
_MIRRORED = np.where(np.arange(8) % 2, -1.0, 1.0)  # mirroring the input negates the odd columns of its DCT


def _dct8(pixels: np.ndarray) -> np.ndarray:
    """The 8x8 low-frequency block of the 2-D DCT-II of the 32x32 input, rounded to 1e-4: a coefficient that
    is 0 (a flat image's, a mirror-symmetric image's odd ones) is then 0, not rounding noise (<= 1e-8 here),
    and the bits do not depend on the matrix library."""
    return np.round(_DCT8 @ pixels.astype(np.float64) @ _DCT8.T, 4)


def _bits(dct: np.ndarray) -> str:
    """The 64 bits of an 8x8 block: above its median (``np.median``'s value: the mean of the two middle ones)."""
    ordered = np.sort(dct, axis=None)
    bits = np.packbits(dct > (ordered[31] + ordered[32]) / 2)
    return format(int.from_bytes(bits.tobytes(), "big"), "064b")


def center_crop(image, share: float = CENTER):
    w, h = image.size
    dx, dy = round(w * (1 - share) / 2), round(h * (1 - share) / 2)
    return image.crop((dx, dy, max(dx + 1, w - dx), max(dy + 1, h - dy)))


def colourfulness(image) -> float:
    """Mean of |R-G| + |G-B| over a 64x64 nearest-neighbour sample of ``image`` (0 for greyscale): a mean over
    4096 pixels, without a pass over all of them."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    r, g, b = cv2.split(np.asarray(rgb.resize((COLOUR_SAMPLE, COLOUR_SAMPLE), Image.Resampling.NEAREST)))
    return cv2.mean(cv2.absdiff(r, g))[0] + cv2.mean(cv2.absdiff(g, b))[0]


def border_fill(image, level: int = DARK_LUMA) -> float:
    """Share of the outermost ring of pixels with luma <= ``level`` (0..1)."""
    return _ring_fill(np.asarray(image.convert("L")), level)


def _ring_fill(a: np.ndarray, level: int) -> float:
    ring = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    return float((ring <= level).mean())


def phash_scores(image) -> PhashScores:
    """Every score of ``image`` (the runtime's 256 px view) from ``hashed_grey``, one 32x32 resize of it and one
    of its centre (cropping commutes with the conversion): the mirrored hash negates the
    odd DCT columns of the full hash — the DCT of the mirrored input, exactly (bilinear weights are symmetric,
    so the mirrored image's 32x32 input is this one mirrored). ``tests/test_image_scores_exact.py`` checks
    each against its definition on the image, its mirror and its centre."""
    grey = hashed_grey(image)
    dct = _dct8(_hash_input(grey))
    return PhashScores(phash=_bits(dct), phash_mirror=_bits(dct * _MIRRORED),
                       phash_center=_bits(_dct8(_hash_input(center_crop(grey)))),
                       colourfulness=round(colourfulness(image), 3),
                       border_fill=round(_ring_fill(np.asarray(grey), DARK_LUMA), 4))


class PhashStage(Stage[PhashParams, PhashScores]):
    name = "phash"
    view_columns = (ViewColumns("curated_images", "h", ("h.phash", "h.colourfulness", "h.border_fill"),
                               thresholds="th"),)
    version = "4"  # 2: mirrored and centre hashes, colourfulness; 3: border_fill; 4: hashed_grey, bilinear, matrix DCT
    result_type = PhashScores
    result_table = "phash_results"
    Params = PhashParams
    threshold_params = frozenset({"max_distance", "keep_rule"})
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 64
    needs_image = True
    requires = ("probe",)
    image_draft_size = EDGES_VIEW  # edges' view (``hashed_grey``): one reduction and one conversion per pass
    near_duplicate_column = "phash"

    def process(self, items: Sequence[StageItem]) -> list[PhashScores | ItemFailure]:
        return [phash_scores(item.image) for item in items]
