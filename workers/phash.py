"""phash — perceptual hash for deduplication (report §4.2: "an image perceptual hash is calculated
for each image ... identifies and removes exact duplicates and images that are visually very similar").

Scores: ``phash``, the 64-bit DCT perceptual hash (``imagehash.phash``: 32x32 greyscale, 2-D DCT,
the 8x8 low-frequency block thresholded at its median), stored as ``bit(64)``. Hamming distance
0..64; 0 for a resized or re-encoded copy of the same photo, ~20-40 for unrelated photos.

After the hashes are written, pairs within ``max_distance`` (default 8 bits) of any earlier-hashed
asset — this job or any other — are recorded in ``near_duplicates`` through pgvector's HNSW bit index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import imagehash
from pydantic import BaseModel, ConfigDict, Field

from workers.columns import Bits64, ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem

DEFAULT_MAX_DISTANCE = 8


class PhashParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_distance: int = Field(DEFAULT_MAX_DISTANCE, ge=0, le=16, description="Hamming bits for a near duplicate "
                              "(applied when the slice is read; pairs are stored up to 16 bits)")


@dataclass(frozen=True)
class PhashScores:
    phash: Bits64


def phash_bits(image) -> str:
    bits = imagehash.phash(image, hash_size=8).hash.flatten()
    return "".join("1" if b else "0" for b in bits)


class PhashStage(Stage[PhashParams, PhashScores]):
    name = "phash"
    view_columns = (ViewColumns("curated_images", "h", ("h.phash",), thresholds="th"),)
    version = "1"
    result_type = PhashScores
    result_table = "phash_results"
    Params = PhashParams
    threshold_params = frozenset({"max_distance"})
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 64
    needs_image = True
    requires = ("probe",)
    image_draft_size = 64  # the hash works on 32x32; JPEGs decode at up to 1/8 scale
    near_duplicate_column = "phash"

    def process(self, items: Sequence[StageItem]) -> list[PhashScores | ItemFailure]:
        return [PhashScores(phash=phash_bits(item.image)) for item in items]
