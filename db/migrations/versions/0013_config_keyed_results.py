"""Results keyed by their configuration; curated views per job, with the job's thresholds.

- ``stage_configs``: one row per configuration (stage version + the params that change the score +
  each model's weights identity); ``config_id`` is its stable hash (``workers.stage.StageConfig``).
- every result table (and ``near_duplicates``) gains ``config_id``; the primary key becomes
  ``(asset_id, config_id)``, so results of several configurations live side by side. Rows written
  before this migration get the legacy configuration ``legacy:<stage_version>``.
- ``job_stages``: each job's stages with their resolved params (defaults included) — the thresholds the
  views apply when a slice is read; ``job_configs``: the configurations each job's stages used.
- ``curated_images`` / ``curated_scenes`` become one row per (job, asset): the views in
  ``db/migrations/views/*.0013.sql`` (plain SQL, frozen with this revision).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from pathlib import Path

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

VIEWS = Path(__file__).resolve().parent.parent / "views"

RESULT_TABLES = (
    "probe_results", "resolution_results", "phash_results", "edge_results", "quality_results", "text_results",
    "video_probe_results", "scene_split_results", "video_hash_results", "dynamics_results", "video_text_results",
    "clip_results", "object_results", "watermark_results", "motion_results", "topiq_results", "qalign_results",
    "complexity_results", "dover_results",
)


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE stage_configs (
            config_id text PRIMARY KEY,
            stage text NOT NULL,
            stage_version text NOT NULL,
            params jsonb NOT NULL,
            models jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now());

        CREATE TABLE job_stages (
            job_id bigint NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
            stage text NOT NULL,
            position integer NOT NULL,
            params jsonb NOT NULL,
            PRIMARY KEY (job_id, stage));

        CREATE TABLE job_configs (
            job_id bigint NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
            stage text NOT NULL,
            config_id text NOT NULL REFERENCES stage_configs (config_id),
            PRIMARY KEY (job_id, stage, config_id));
        """
    )
    for table in RESULT_TABLES:
        op.execute(f"ALTER TABLE {table} ADD COLUMN config_id text")
        op.execute(f"UPDATE {table} SET config_id = 'legacy:' || stage_version")
        op.execute(
            f"INSERT INTO stage_configs (config_id, stage, stage_version, params, models) "
            f"SELECT DISTINCT config_id, split_part(stage_version, '@', 1), stage_version, '{{}}'::jsonb, '{{}}'::jsonb FROM {table} "
            f"ON CONFLICT DO NOTHING"
        )
        op.execute(f"ALTER TABLE {table} ALTER COLUMN config_id SET NOT NULL")
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
        op.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (asset_id, config_id)")
    op.execute("ALTER TABLE near_duplicates ADD COLUMN config_id text")
    op.execute("UPDATE near_duplicates SET config_id = 'legacy:' || stage_version")
    op.execute("ALTER TABLE near_duplicates ALTER COLUMN config_id SET NOT NULL")
    op.execute("ALTER TABLE near_duplicates DROP CONSTRAINT near_duplicates_pkey")
    op.execute("ALTER TABLE near_duplicates ADD PRIMARY KEY (asset_id, other_id, config_id)")
    # jobs submitted before: their stages as written in the spec (thresholds absent: flags NULL), and
    # every legacy configuration of their stages
    op.execute(
        """
        INSERT INTO job_stages (job_id, stage, position, params)
        SELECT j.job_id, st->>'name', (o - 1)::int, coalesce(st->'params', '{}')
        FROM jobs j, jsonb_array_elements(j.spec->'stages') WITH ORDINALITY AS t(st, o)
        ON CONFLICT DO NOTHING;
        INSERT INTO job_configs (job_id, stage, config_id)
        SELECT js.job_id, js.stage, c.config_id FROM job_stages js
        JOIN stage_configs c ON c.config_id LIKE 'legacy:' || js.stage || '@%';
        """
    )
    op.execute("DROP VIEW IF EXISTS curated_images")
    op.execute("DROP VIEW IF EXISTS curated_scenes")
    op.execute((VIEWS / "curated_images.0013.sql").read_text())
    op.execute((VIEWS / "curated_scenes.0013.sql").read_text())
    op.execute("GRANT SELECT ON curated_images, curated_scenes, stage_configs, job_stages, job_configs "
               "TO curation_reader")


def downgrade() -> None:
    # back to one result per (asset, stage_version): the newest configuration of each version stays
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from view_snapshots import load_revision

    op.execute("DROP VIEW IF EXISTS curated_images")
    op.execute("DROP VIEW IF EXISTS curated_scenes")
    for table in RESULT_TABLES:
        op.execute(
            f"DELETE FROM {table} t USING {table} n WHERE n.asset_id = t.asset_id "
            f"AND n.stage_version = t.stage_version AND (n.created_at, n.config_id) > (t.created_at, t.config_id)"
        )
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
        op.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (asset_id, stage_version)")
        op.execute(f"ALTER TABLE {table} DROP COLUMN config_id")
    op.execute(
        "DELETE FROM near_duplicates t USING near_duplicates n WHERE n.asset_id = t.asset_id "
        "AND n.other_id = t.other_id AND n.config_id > t.config_id"
    )
    op.execute("ALTER TABLE near_duplicates DROP CONSTRAINT near_duplicates_pkey")
    op.execute("ALTER TABLE near_duplicates ADD PRIMARY KEY (asset_id, other_id)")
    op.execute("ALTER TABLE near_duplicates DROP COLUMN config_id")
    op.execute("DROP TABLE job_configs")
    op.execute("DROP TABLE job_stages")
    op.execute("DROP TABLE stage_configs")
    op.execute(load_revision("0009_topiq_qalign_complexity.py").CURATED_IMAGES_VIEW)
    op.execute(load_revision("0011_dover.py").CURATED_SCENES_VIEW)
    op.execute("GRANT SELECT ON curated_images, curated_scenes TO curation_reader")
