"""Near-duplicate search over perceptual hashes with pgvector's HNSW index on ``bit(64)``
(``bit_hamming_ops``). Called by the runtime inside the phash stage's completion transaction.

The rule that turns pairs into "keep one per group" lives in the ``curated_images`` view: an image is
a near duplicate when a neighbour within the distance ranks higher — more pixels, then more bytes,
then the lower asset id. That rule does not depend on the order in which assets were hashed, so it
gives the same answer however the work was split across workers and jobs.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel
from sqlalchemy import Connection, text

_LOCK_KEY = 4242002  # serialises phash commits so that two concurrent commits see each other's rows
NEIGHBOURS_SEARCHED = 32


def record_near_duplicates(conn: Connection, stage_version: str, asset_ids: Sequence[int], params: BaseModel) -> None:
    if not asset_ids:
        return
    max_distance = int(params.max_distance)
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    conn.execute(text("SET LOCAL hnsw.ef_search = 100"))
    conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
    conn.execute(
        text(
            """
            WITH pairs AS MATERIALIZED (
                SELECT me.asset_id, c.other_id, c.distance
                FROM phash_results me
                CROSS JOIN LATERAL (
                    SELECT o.asset_id AS other_id, (o.phash <~> me.phash)::int AS distance
                    FROM phash_results o
                    WHERE o.stage_version = :v
                    ORDER BY o.phash <~> me.phash
                    LIMIT :k) c
                WHERE me.asset_id = ANY(:ids) AND me.stage_version = :v
                  AND c.other_id <> me.asset_id AND c.distance <= :d)
            INSERT INTO near_duplicates (asset_id, other_id, distance, stage_version)
            SELECT asset_id, other_id, distance, :v FROM pairs
            UNION
            SELECT other_id, asset_id, distance, :v FROM pairs
            ON CONFLICT DO NOTHING
            """
        ),
        {"ids": list(asset_ids), "v": stage_version, "k": NEIGHBOURS_SEARCHED, "d": max_distance},
    )
