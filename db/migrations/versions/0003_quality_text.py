"""Quality (BRISQUE) and text (PP-OCRv4) results; curated_images gains brisque, text_boxes, text_area.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# the whole view as of this revision (a migration is a snapshot; new columns are appended at the end)
CURATED_IMAGES_VIEW = """
CREATE OR REPLACE VIEW curated_images AS
SELECT
    a.asset_id,
    a.uri,
    s.name                                  AS source,
    p.format,
    p.width,
    p.height,
    p.mode,
    p.bytes,
    encode(p.sha256, 'hex')                 AS sha256,
    p.decode_ms,
    r.short_side,
    r.long_side,
    r.aspect_ratio,
    h.phash,
    e.edge_density,
    e.edge_mean,
    (p.asset_id IS NOT NULL)                AS decoded,
    ex.duplicate_of                         AS exact_duplicate_of,
    nd.duplicate_of                         AS near_duplicate_of,
    nd.distance                             AS near_duplicate_distance,
    (p.asset_id IS NOT NULL AND ex.duplicate_of IS NULL AND nd.duplicate_of IS NULL) AS is_unique,
    CASE WHEN r.short_side >= 1024 THEN 1024
         WHEN r.short_side >= 512  THEN 512
         WHEN r.short_side >= 256  THEN 256 END AS bucket,
    p.stage_version                         AS probe_version,
    r.stage_version                         AS resolution_version,
    h.stage_version                         AS phash_version,
    e.stage_version                         AS edges_version,
    q.brisque,
    tx.text_boxes,
    tx.text_area,
    q.stage_version                         AS quality_version,
    tx.stage_version                        AS text_version
FROM assets a
JOIN sources s ON s.source_id = a.source_id
LEFT JOIN LATERAL (SELECT * FROM probe_results x WHERE x.asset_id = a.asset_id
                   ORDER BY x.created_at DESC LIMIT 1) p ON true
LEFT JOIN LATERAL (SELECT * FROM resolution_results x WHERE x.asset_id = a.asset_id
                   ORDER BY x.created_at DESC LIMIT 1) r ON true
LEFT JOIN LATERAL (SELECT * FROM phash_results x WHERE x.asset_id = a.asset_id
                   ORDER BY x.created_at DESC LIMIT 1) h ON true
LEFT JOIN LATERAL (SELECT * FROM edge_results x WHERE x.asset_id = a.asset_id
                   ORDER BY x.created_at DESC LIMIT 1) e ON true
LEFT JOIN LATERAL (SELECT * FROM quality_results x WHERE x.asset_id = a.asset_id
                   ORDER BY x.created_at DESC LIMIT 1) q ON true
LEFT JOIN LATERAL (SELECT * FROM text_results x WHERE x.asset_id = a.asset_id
                   ORDER BY x.created_at DESC LIMIT 1) tx ON true
-- exact duplicate: the same bytes were seen first under a lower asset id (any job)
LEFT JOIN LATERAL (SELECT min(o.asset_id) AS duplicate_of FROM probe_results o
                   WHERE o.sha256 = p.sha256 AND o.asset_id < a.asset_id) ex ON true
-- near duplicate: a neighbour within the phash distance ranks higher
-- (more pixels, then more bytes, then the lower asset id); the best-ranked asset of a group is kept
LEFT JOIN LATERAL (SELECT n.other_id AS duplicate_of, n.distance FROM near_duplicates n
                   JOIN LATERAL (SELECT * FROM probe_results y WHERE y.asset_id = n.other_id
                                 ORDER BY y.created_at DESC LIMIT 1) op ON true
                   WHERE n.asset_id = a.asset_id
                     AND (op.width::bigint * op.height, op.bytes, -op.asset_id)
                       > (p.width::bigint * p.height, p.bytes, -a.asset_id)
                   ORDER BY op.width::bigint * op.height DESC, op.bytes DESC, op.asset_id
                   LIMIT 1) nd ON true
WHERE a.kind = 'image'
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE quality_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            brisque double precision NOT NULL,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, stage_version));

        CREATE TABLE text_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            text_boxes integer NOT NULL,
            text_area double precision NOT NULL,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, stage_version));
        """
    )
    op.execute(CURATED_IMAGES_VIEW)


def downgrade() -> None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("rev0001", Path(__file__).with_name("0001_foundation.py"))
    rev0001 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rev0001)
    op.execute("DROP VIEW IF EXISTS curated_images")
    op.execute(rev0001.CURATED_IMAGES_VIEW)
    op.execute("DROP TABLE IF EXISTS text_results")
    op.execute("DROP TABLE IF EXISTS quality_results")
