"""Editing pairs (issue 12, report §4.3; ``docs/pairs.md``): assets of kind ``pair`` (uri
``pair:<source>:<target>``, parent = the source image), the mining stages' tables and ``curated_pairs``.

- ``image_pairs``: one row per (pair, ``pair_candidates`` configuration): the mining job, the two images
  (source < target: a→b and b→a are one pair), how it was found (clip, dino, both) and the candidate
  scores computed at mining time from stored results — ``clip_sim``, ``dino_sim``, the cluster and its
  adaptive ``clip_thr``, ``face_sim``.
- ``pair_cluster_thresholds``: each cluster's adaptive CLIP threshold in a mining job.
- ``pair_candidates_results`` (per image: neighbours seen, pairs kept) and ``pair_verify_results`` (per
  pair: matches, inlier groups, transform, overlaps, DINO of the aligned crops) — result tables keyed
  ``(asset_id, config_id)`` like every stage's.
- ``curated_pairs`` (``db/migrations/views/curated_pairs.0019.sql``): Table 1 applied from the job's params.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01
"""

from pathlib import Path

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

VIEWS = Path(__file__).resolve().parent.parent / "views"
TABLES = ("image_pairs", "pair_cluster_thresholds", "pair_candidates_results", "pair_verify_results")


def upgrade() -> None:
    op.execute("ALTER TABLE assets DROP CONSTRAINT assets_kind_check")
    op.execute("ALTER TABLE assets ADD CONSTRAINT assets_kind_check "
               "CHECK (kind IN ('image', 'video', 'scene', 'window', 'pair'))")
    op.execute(
        """
        CREATE TABLE image_pairs (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            config_id text NOT NULL,
            job_id bigint NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
            source_asset_id bigint NOT NULL REFERENCES assets (asset_id),
            target_asset_id bigint NOT NULL REFERENCES assets (asset_id),
            found_by text NOT NULL CHECK (found_by IN ('clip', 'dino', 'both')),
            clip_sim real,
            dino_sim real,
            clip_thr real,
            cluster_id integer,
            face_sim real,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, config_id),
            CHECK (source_asset_id < target_asset_id));
        CREATE INDEX image_pairs_job_idx ON image_pairs (job_id, asset_id);
        CREATE INDEX image_pairs_source_idx ON image_pairs (source_asset_id);
        CREATE INDEX image_pairs_target_idx ON image_pairs (target_asset_id);

        CREATE TABLE pair_cluster_thresholds (
            job_id bigint NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
            clustering_id bigint NOT NULL REFERENCES clusterings (clustering_id) ON DELETE CASCADE,
            cluster_id integer NOT NULL,
            clip_thr real NOT NULL,
            n_members integer NOT NULL,
            n_sampled integer NOT NULL,
            PRIMARY KEY (job_id, cluster_id));

        CREATE TABLE pair_candidates_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            config_id text NOT NULL,
            stage_version text NOT NULL,
            n_neighbours integer NOT NULL,
            n_pairs integer NOT NULL,
            cluster_id integer,
            clip_thr double precision,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, config_id));

        CREATE TABLE pair_verify_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            config_id text NOT NULL,
            stage_version text NOT NULL,
            matcher text NOT NULL,
            matcher_sha256 text NOT NULL,
            n_matches integer NOT NULL,
            inliers integer NOT NULL,
            n_groups smallint NOT NULL,
            group_inliers integer[] NOT NULL,
            fundamental_inliers integer NOT NULL,
            scale double precision,
            rotation_deg double precision,
            tx double precision,
            ty double precision,
            overlap_source double precision,
            overlap_target double precision,
            dino_aligned_sim double precision,
            is_simple_crop boolean NOT NULL,
            dino_model text NOT NULL,
            dino_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, config_id));
        """
    )
    op.execute(f"GRANT SELECT ON {', '.join(TABLES)} TO curation_reader")
    op.execute((VIEWS / "curated_pairs.0019.sql").read_text())
    op.execute("GRANT SELECT ON curated_pairs TO curation_reader")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS curated_pairs")
    op.execute(f"DROP TABLE IF EXISTS {', '.join(TABLES)}")
    for table in ("item_errors", "job_assets"):
        op.execute(f"DELETE FROM {table} WHERE asset_id IN (SELECT asset_id FROM assets WHERE kind = 'pair')")
    op.execute("DELETE FROM assets WHERE kind = 'pair'")
    op.execute("ALTER TABLE assets DROP CONSTRAINT assets_kind_check")
    op.execute("ALTER TABLE assets ADD CONSTRAINT assets_kind_check "
               "CHECK (kind IN ('image', 'video', 'scene', 'window'))")
