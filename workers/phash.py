"""phash — perceptual hash for deduplication (report §4.2: "an image perceptual hash is calculated
for each image ... identifies and removes exact duplicates and images that are visually very similar").

Scores (of the upright image, EXIF orientation applied):

- ``phash``: the 64-bit DCT perceptual hash (``imagehash.phash``: 32x32 greyscale, 2-D DCT, the 8x8
  low-frequency block thresholded at its median), stored as ``bit(64)``. Hamming distance 0..64; 0 for a
  resized or re-encoded copy of the same photo, ~20-40 for unrelated photos. Greyscale copies hash alike.
- ``phash_mirror``: the same hash of the horizontally mirrored image — a flipped copy's ``phash`` equals
  the original's ``phash_mirror``.
- ``phash_center``: the hash of the central 80 % (each side cut by 10 %), which small rotations (a few
  degrees: new corners) and borders move much less than the full hash (``bench/near_duplicates.py``).
- ``colourfulness``: mean spread between the colour channels on a 64 px thumbnail, 0..255 (about 0 for a
  greyscale copy stored as RGB, > 10 for most colour photos): the keep-one rule prefers colour.

After the hashes are written, pairs within 16 bits by any of the three comparisons (full, mirrored,
centre) of any earlier-hashed asset — this job or any other — are recorded in ``near_duplicates`` (with
the comparison that matched) through pgvector's HNSW bit indexes; the job's ``max_distance`` (default 8)
and ``keep_rule`` are applied by the curated view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from typing import Literal

import imagehash
import numpy as np
from PIL import ImageOps
from pydantic import BaseModel, ConfigDict, Field

from workers.columns import Bits64, ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem

DEFAULT_MAX_DISTANCE = 8


class PhashParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_distance: int = Field(DEFAULT_MAX_DISTANCE, ge=0, le=16, description="Hamming bits for a near duplicate "
                              "(applied when the slice is read; pairs are stored up to 16 bits)")
    keep_rule: Literal["colour_pixels_bytes", "pixels_bytes"] = Field(
        "colour_pixels_bytes", description="which copy of a near-duplicate group is kept: colour over greyscale, "
        "then more pixels, then more bytes (then the lower asset id); pixels_bytes: the rule before phash@2")


CENTER = 0.8  # the central share of each side hashed by phash_center
GREYSCALE_BELOW = 4.0  # colourfulness under this is a greyscale copy (curated view's keep rule)


@dataclass(frozen=True)
class PhashScores:
    phash: Bits64
    phash_mirror: Bits64 | None  # NULL for hashes written by phash@1
    phash_center: Bits64 | None
    colourfulness: float | None


def phash_bits(image) -> str:
    bits = imagehash.phash(image, hash_size=8).hash.flatten()
    return "".join("1" if b else "0" for b in bits)


def center_crop(image, share: float = CENTER):
    w, h = image.size
    dx, dy = round(w * (1 - share) / 2), round(h * (1 - share) / 2)
    return image.crop((dx, dy, max(dx + 1, w - dx), max(dy + 1, h - dy)))


def colourfulness(image) -> float:
    """Mean of |R-G| + |G-B| over a 64 px thumbnail (0 for greyscale)."""
    thumb = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.int16)
    return float(np.abs(thumb[..., 0] - thumb[..., 1]).mean() + np.abs(thumb[..., 1] - thumb[..., 2]).mean())


def phash_scores(image) -> PhashScores:
    return PhashScores(phash=phash_bits(image), phash_mirror=phash_bits(ImageOps.mirror(image)),
                       phash_center=phash_bits(center_crop(image)), colourfulness=round(colourfulness(image), 3))


class PhashStage(Stage[PhashParams, PhashScores]):
    name = "phash"
    view_columns = (ViewColumns("curated_images", "h", ("h.phash", "h.colourfulness"), thresholds="th"),)
    version = "2"  # 2: mirrored and centre hashes, colourfulness
    result_type = PhashScores
    result_table = "phash_results"
    Params = PhashParams
    threshold_params = frozenset({"max_distance", "keep_rule"})
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 64
    needs_image = True
    requires = ("probe",)
    image_draft_size = 64  # the hash works on 32x32; JPEGs decode at up to 1/8 scale
    near_duplicate_column = "phash"

    def process(self, items: Sequence[StageItem]) -> list[PhashScores | ItemFailure]:
        return [phash_scores(item.image) for item in items]
