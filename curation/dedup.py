"""Near-duplicate search over perceptual hashes with pgvector's HNSW index on ``bit(64)``
(``bit_hamming_ops``). Called by the runtime inside the completion transaction of a stage that declares
``near_duplicate_column`` (phash: ``phash_results.phash``; video_hash: ``video_hash_results.vhash``).

The rule that turns pairs into "keep one per group" lives in the ``curated_images`` view: an image is
a near duplicate when a neighbour within the distance ranks higher — more pixels, then more bytes,
then the lower asset id. That rule does not depend on the order in which assets were hashed, so it
gives the same answer however the work was split across workers and jobs.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, text

NEIGHBOURS_SEARCHED = 32
PAIR_SEARCH_BITS = 16
"""Pairs are stored up to this Hamming distance whatever the job's ``max_distance`` (at most this): the
threshold is applied by the curated views, so a job with another distance reuses the stored hashes
and pairs and recomputes nothing."""
# the comparisons of each hash table: (kind, the new row's column, the stored rows' column)
_COMPARISONS = {
    ("phash_results", "phash"): (("full", "phash", "phash"), ("mirror", "phash_mirror", "phash"),
                                 ("center", "phash_center", "phash_center"),
                                 # one's centre against the other's whole image: a copy cropped ~10 % per side
                                 ("crop", "phash_center", "phash"), ("crop", "phash", "phash_center")),
    ("video_hash_results", "vhash"): (("full", "vhash", "vhash"),),
}
_LOCK_KEYS = {"phash_results": 4242002, "video_hash_results": 4242004}  # one commit of a table at a time


_SEARCH = """
    SELECT me.asset_id, c.other_id, c.distance, '{kind}' AS kind
    FROM {table} me
    CROSS JOIN LATERAL (
        SELECT o.asset_id AS other_id, (o.{theirs} <~> me.{mine})::int AS distance
        FROM {table} o
        WHERE o.config_id = :c
        ORDER BY o.{theirs} <~> me.{mine}
        LIMIT :k) c
    WHERE me.asset_id = ANY(:ids) AND me.config_id = :c AND me.{mine} IS NOT NULL
      AND c.other_id <> me.asset_id AND c.distance <= :d"""

_SQL = """
WITH found AS MATERIALIZED ({searches}),
both_ways AS (
    SELECT asset_id, other_id, distance, kind FROM found
    UNION ALL
    SELECT other_id, asset_id, distance, kind FROM found),
best AS (
    SELECT asset_id, other_id, min(distance) AS distance, (array_agg(kind ORDER BY distance, kind <> 'full', kind))[1] AS kind
    FROM both_ways GROUP BY asset_id, other_id)
INSERT INTO near_duplicates (asset_id, other_id, config_id, distance, stage_version, kind)
SELECT asset_id, other_id, :c, distance, :v, kind FROM best
ON CONFLICT (asset_id, other_id, config_id) DO UPDATE
    SET distance = excluded.distance, kind = excluded.kind WHERE excluded.distance < near_duplicates.distance
"""

def record_near_duplicates(conn: Connection, table: str, column: str, config_id: str, stage_version: str,
                           asset_ids: Sequence[int]) -> None:
    """Record the pairs within ``PAIR_SEARCH_BITS`` bits of ``table.column`` among the hashes of the same
    configuration, for the rows just written (``asset_ids``), in the caller's transaction. For images the
    pair is found by any of four comparisons (``kind``): full hashes, one's mirrored hash against the
    other's (a flipped copy), the centre hashes (small rotations, borders), or one's centre hash against
    the other's full hash (``crop``: a copy cropped by about 10 % per side); the smallest distance is
    kept (ties: the full comparison). Commits of one table are serialised by an advisory lock, so two
    concurrent commits see each other's rows."""
    comparisons = _COMPARISONS.get((table, column))
    if comparisons is None:
        raise ValueError(f"no hash column {table}.{column}")
    if not asset_ids:
        return
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEYS[table]})
    conn.execute(text("SET LOCAL hnsw.ef_search = 100"))
    conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
    searches = "\n    UNION ALL".join(_SEARCH.format(table=table, kind=kind, mine=mine, theirs=theirs)
                                     for kind, mine, theirs in comparisons)
    conn.execute(text(_SQL.format(searches=searches)),
                 {"ids": list(asset_ids), "c": config_id, "v": stage_version, "k": NEIGHBOURS_SEARCHED,
                  "d": PAIR_SEARCH_BITS})

