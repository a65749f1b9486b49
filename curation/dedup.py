"""Near-duplicate search over perceptual hashes with pgvector's HNSW index on ``bit(64)``
(``bit_hamming_ops``). Called by the runtime inside the completion transaction of the phash stage
(images, ``phash_results.phash``) and of the video_hash stage (scenes, ``video_hash_results.vhash``).

The rule that turns pairs into "keep one per group" lives in the ``curated_images`` view: an image is
a near duplicate when a neighbour within the distance ranks higher — more pixels, then more bytes,
then the lower asset id. That rule does not depend on the order in which assets were hashed, so it
gives the same answer however the work was split across workers and jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy import Connection, text

if TYPE_CHECKING:  # the config is a value handed in by the runtime
    from workers.stage import StageConfig

_LOCK_KEY = 4242002  # serialises phash commits so that two concurrent commits see each other's rows
NEIGHBOURS_SEARCHED = 32
PAIR_SEARCH_BITS = 16
"""Pairs are stored up to this Hamming distance whatever the job's ``max_distance`` (at most this): the
threshold is applied by the curated views, so a job with another distance reuses the stored hashes
and pairs and recomputes nothing."""
_HASH_TABLES = {("phash_results", "phash"), ("video_hash_results", "vhash")}


def near_duplicate_indexer(table: str, column: str, lock_key: int) -> Callable[[Connection, Any, Sequence[int], BaseModel], None]:
    """An indexer (see ``workers.stage.Indexer``) recording pairs within ``PAIR_SEARCH_BITS`` bits of
    ``table.column`` among the hashes of the same configuration. Commits of one table are serialised by an advisory lock, so two concurrent
    commits see each other's rows."""
    if (table, column) not in _HASH_TABLES:
        raise ValueError(f"no hash column {table}.{column}")
    sql = text(
        f"""
        WITH pairs AS MATERIALIZED (
            SELECT me.asset_id, c.other_id, c.distance
            FROM {table} me
            CROSS JOIN LATERAL (
                SELECT o.asset_id AS other_id, (o.{column} <~> me.{column})::int AS distance
                FROM {table} o
                WHERE o.config_id = :c
                ORDER BY o.{column} <~> me.{column}
                LIMIT :k) c
            WHERE me.asset_id = ANY(:ids) AND me.config_id = :c
              AND c.other_id <> me.asset_id AND c.distance <= :d)
        INSERT INTO near_duplicates (asset_id, other_id, config_id, distance, stage_version)
        SELECT asset_id, other_id, :c, distance, :v FROM pairs
        UNION
        SELECT other_id, asset_id, :c, distance, :v FROM pairs
        ON CONFLICT DO NOTHING
        """
    )

    def record(conn: Connection, config: StageConfig, asset_ids: Sequence[int], params: BaseModel) -> None:
        if not asset_ids:
            return
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key})
        conn.execute(text("SET LOCAL hnsw.ef_search = 100"))
        conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
        conn.execute(sql, {"ids": list(asset_ids), "c": config.config_id, "v": config.stage_version,
                           "k": NEIGHBOURS_SEARCHED, "d": PAIR_SEARCH_BITS})

    record.__name__ = f"record_near_duplicates_{table}"
    return record


record_near_duplicates = near_duplicate_indexer("phash_results", "phash", _LOCK_KEY)
