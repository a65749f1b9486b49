"""Inputs of editing-pair mining (issue 12, report §4.3): ``dino_results`` holds the ``dino`` stage's DINOv2
embeddings (an undimensioned ``vector`` like ``clip_results.embedding``; the runtime creates each model's
HNSW cosine index, ``curation.embeddings``), ``face_results`` the ``faces`` stage's face count, boxes,
largest face and the 128-d dlib descriptor of single-face images. ``curated_images`` shows ``face_count``
and ``largest_face_fraction`` (``db/migrations/views/*.0018.sql``, rendered by ``python -m workers.views 0018``).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01
"""

import sys
from pathlib import Path

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from view_snapshots import apply_views  # noqa: E402


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE dino_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            config_id text NOT NULL,
            stage_version text NOT NULL,
            embedding vector NOT NULL,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, config_id));

        CREATE TABLE face_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            config_id text NOT NULL,
            stage_version text NOT NULL,
            face_count integer NOT NULL,
            boxes jsonb NOT NULL,
            largest_face_fraction double precision NOT NULL,
            embedding vector,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, config_id));
        """
    )
    op.execute("GRANT SELECT ON dino_results, face_results TO curation_reader")
    apply_views(op, "0018")


def downgrade() -> None:
    apply_views(op, "0017")  # the 0017 views do not read face_results: drop the tables after them
    op.execute("DROP TABLE IF EXISTS face_results")
    op.execute("DROP TABLE IF EXISTS dino_results")
