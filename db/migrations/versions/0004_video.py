"""Video: scene time ranges on assets, the video stage result tables, and the curated_scenes view.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# one row per scene; the parent video's probe gives size, rate and codec
CURATED_SCENES_VIEW = """
CREATE OR REPLACE VIEW curated_scenes AS
SELECT
    a.asset_id,
    a.uri,
    s.name                                  AS source,
    a.parent_id                             AS video_id,
    a.start_frame,
    a.end_frame,
    a.start_s,
    a.end_s,
    (a.end_s - a.start_s)                   AS duration_s,
    p.container,
    p.codec,
    p.width,
    p.height,
    p.fps,
    p.variable_frame_rate,
    p.rotation,
    p.has_audio,
    p.bytes                                 AS video_bytes,
    encode(p.sha256, 'hex')                 AS video_sha256,
    least(p.width, p.height)                AS short_side,
    greatest(p.width, p.height)             AS long_side,
    round((p.width::numeric / nullif(p.height, 0)), 4)::double precision AS aspect_ratio,
    CASE WHEN least(p.width, p.height) >= 1024 THEN 1024
         WHEN least(p.width, p.height) >= 512  THEN 512
         WHEN least(p.width, p.height) >= 256  THEN 256 END AS bucket,
    h.vhash,
    ex.duplicate_of                         AS exact_duplicate_of,
    nd.duplicate_of                         AS near_duplicate_of,
    nd.distance                             AS near_duplicate_distance,
    (h.asset_id IS NOT NULL AND ex.duplicate_of IS NULL AND nd.duplicate_of IS NULL) AS is_unique,
    d.ms_ssim_mean,
    d.ms_ssim_min,
    d.ms_ssim_max,
    d.pairs                                 AS ms_ssim_pairs,
    d.too_static,
    d.too_dynamic,
    tx.text_boxes_mean,
    tx.text_area_mean,
    sp.stage_version                        AS scenes_version,
    p.stage_version                         AS video_probe_version,
    h.stage_version                         AS video_hash_version,
    d.stage_version                         AS dynamics_version,
    tx.stage_version                        AS video_text_version
FROM assets a
JOIN sources s ON s.source_id = a.source_id
LEFT JOIN LATERAL (SELECT * FROM video_probe_results x WHERE x.asset_id = a.parent_id
                   ORDER BY x.created_at DESC LIMIT 1) p ON true
LEFT JOIN LATERAL (SELECT * FROM scene_split_results x WHERE x.asset_id = a.parent_id
                   ORDER BY x.created_at DESC LIMIT 1) sp ON true
LEFT JOIN LATERAL (SELECT * FROM video_hash_results x WHERE x.asset_id = a.asset_id
                   ORDER BY x.created_at DESC LIMIT 1) h ON true
LEFT JOIN LATERAL (SELECT * FROM dynamics_results x WHERE x.asset_id = a.asset_id
                   ORDER BY x.created_at DESC LIMIT 1) d ON true
LEFT JOIN LATERAL (SELECT * FROM video_text_results x WHERE x.asset_id = a.asset_id
                   ORDER BY x.created_at DESC LIMIT 1) tx ON true
-- exact duplicate: the same frames of a byte-identical video seen first under a lower asset id
LEFT JOIN LATERAL (SELECT min(o.asset_id) AS duplicate_of FROM assets o
                   JOIN video_probe_results op ON op.asset_id = o.parent_id
                   WHERE op.sha256 = p.sha256 AND o.start_frame = a.start_frame AND o.end_frame = a.end_frame
                     AND o.asset_id < a.asset_id) ex ON true
-- near duplicate: a scene within the video_hash distance ranks higher
-- (longer, then more pixels, then the lower asset id); the best-ranked scene of a group is kept
LEFT JOIN LATERAL (SELECT n.other_id AS duplicate_of, n.distance FROM near_duplicates n
                   JOIN assets o ON o.asset_id = n.other_id
                   JOIN LATERAL (SELECT * FROM video_probe_results y WHERE y.asset_id = o.parent_id
                                 ORDER BY y.created_at DESC LIMIT 1) op ON true
                   WHERE n.asset_id = a.asset_id
                     AND (round((o.end_s - o.start_s)::numeric, 2), op.width::bigint * op.height, -o.asset_id)
                       > (round((a.end_s - a.start_s)::numeric, 2), p.width::bigint * p.height, -a.asset_id)
                   ORDER BY round((o.end_s - o.start_s)::numeric, 2) DESC, op.width::bigint * op.height DESC,
                            o.asset_id
                   LIMIT 1) nd ON true
WHERE a.kind = 'scene'
"""


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE assets ADD COLUMN start_s double precision, ADD COLUMN end_s double precision;

        CREATE TABLE video_probe_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            container text NOT NULL,
            codec text NOT NULL,
            width integer NOT NULL,
            height integer NOT NULL,
            fps double precision NOT NULL,
            variable_frame_rate boolean NOT NULL,
            frames integer NOT NULL,
            duration_s double precision NOT NULL,
            rotation smallint NOT NULL,
            has_audio boolean NOT NULL,
            bytes bigint NOT NULL,
            sha256 bytea NOT NULL,
            probe_ms double precision NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, stage_version));
        CREATE INDEX video_probe_results_sha256_idx ON video_probe_results (sha256);

        CREATE TABLE scene_split_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            detector text NOT NULL,
            cut_frames integer[] NOT NULL,
            n_scenes integer NOT NULL,
            n_dropped_short integer NOT NULL,
            n_split_long integer NOT NULL,
            frames integer NOT NULL,
            analysis_ms double precision NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, stage_version));

        CREATE TABLE video_hash_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            vhash bit(64) NOT NULL,
            frames_hashed integer NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, stage_version));
        CREATE INDEX video_hash_results_hnsw_idx ON video_hash_results USING hnsw (vhash bit_hamming_ops);

        CREATE TABLE dynamics_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            ms_ssim_mean double precision,
            ms_ssim_min double precision,
            ms_ssim_max double precision,
            pairs integer NOT NULL,
            too_static boolean NOT NULL,
            too_dynamic boolean NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, stage_version));

        CREATE TABLE video_text_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            text_boxes_mean double precision NOT NULL,
            text_area_mean double precision NOT NULL,
            frames_sampled integer NOT NULL,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, stage_version));
        """
    )
    op.execute(CURATED_SCENES_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS curated_scenes")
    for table in ("video_text_results", "dynamics_results", "video_hash_results", "scene_split_results",
                  "video_probe_results"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("ALTER TABLE assets DROP COLUMN IF EXISTS end_s, DROP COLUMN IF EXISTS start_s")
