"""probe — what the file is (report §4.2, the step before every filter).

Scores, per image: ``format`` (Pillow's name, e.g. JPEG/PNG), ``width`` and ``height`` (pixels, > 0, as
displayed: the EXIF orientation applied), ``mode`` (Pillow mode of the stored pixels), ``bytes`` (file
size), ``sha256`` (32 bytes; equal hashes are exact duplicates, across all jobs), ``decode_ms`` (wall time
of the full decode, ms, >= 0) and ``orientation`` (the raw EXIF tag, 1..8; 1 when absent).

Guards: the pixel count in the header is checked against ``max_pixels`` before any pixel is decoded
(decompression bombs), and the full decode runs under ``decode_timeout_s``. The full decode is what
finds truncated files. Failures become item errors: ``empty_file``, ``not_an_image``,
``decompression_bomb``, ``decode_timeout``, ``corrupt_media``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from curation.media import DEFAULT_DECODE_TIMEOUT_S, DEFAULT_MAX_PIXELS, MediaError, decode_with_header
from workers.columns import BigInt, SmallInt, ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="largest width*height decoded")
    decode_timeout_s: float = Field(DEFAULT_DECODE_TIMEOUT_S, gt=0, description="wall-clock limit per decode")


@dataclass(frozen=True)
class ProbeScores:
    format: str
    width: int
    height: int
    mode: str
    bytes: BigInt
    sha256: bytes
    decode_ms: float
    orientation: SmallInt  # the raw EXIF tag (1 upright); width and height are as displayed


class ProbeStage(Stage[ProbeParams, ProbeScores]):
    name = "probe"
    view_columns = (ViewColumns("curated_images", "p", ("p.format", "p.width", "p.height", "p.mode", "p.bytes",
                                                     "encode(p.sha256, 'hex') AS sha256", "p.decode_ms",
                                                     "p.orientation AS exif_orientation")),)
    version = "2"  # 2: width/height as displayed (EXIF orientation applied)
    result_type = ProbeScores
    result_table = "probe_results"
    Params = ProbeParams
    run_params = frozenset({"decode_timeout_s", "max_pixels"})
    reuse_by_content = False  # it computes the content hash
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 64
    needs_bytes = True

    def process(self, items: Sequence[StageItem]) -> list[ProbeScores | ItemFailure]:
        return [self._probe_one(item) for item in items]

    def _probe_one(self, item: StageItem) -> ProbeScores | ItemFailure:
        data = item.data or b""
        what = f"asset {item.asset_id} ({item.uri})"
        try:
            started = time.perf_counter()  # one parse and one decode: a PNG's EXIF orientation may follow its pixels
            header, image = decode_with_header(data, max_pixels=self.params.max_pixels,
                                               timeout_s=self.params.decode_timeout_s, what=what)
            decode_ms = (time.perf_counter() - started) * 1000.0
        except MediaError as exc:
            return ItemFailure(exc.error_class, str(exc))
        if item.keep_image:  # a fused pass: the stages after the probe share this, the only full decode
            item.image = image
        return ProbeScores(
            format=header.format, width=header.width, height=header.height, mode=header.mode, bytes=len(data),
            sha256=hashlib.sha256(data).digest(), decode_ms=round(decode_ms, 3), orientation=header.orientation,
        )
