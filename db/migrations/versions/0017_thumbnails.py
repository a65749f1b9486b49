"""Thumbnails (issue 13 §1): ``thumbnail_results`` holds where the ``thumbnail`` stage (a WebP of each
image, long side 256) and the ``video_thumbnail`` stage (a contact sheet of each scene) wrote their
picture, and its size; the curated views show ``thumbnail_uri``, ``thumbnail_width`` and
``thumbnail_height`` (``db/migrations/views/*.0017.sql``, rendered by ``python -m workers.views 0017``).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

import sys
from pathlib import Path

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from view_snapshots import apply_views  # noqa: E402


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE thumbnail_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            config_id text NOT NULL,
            stage_version text NOT NULL,
            thumbnail_uri text NOT NULL,
            thumbnail_width integer NOT NULL,
            thumbnail_height integer NOT NULL,
            thumbnail_frames integer NOT NULL,
            thumbnail_bytes integer NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, config_id));
        """
    )
    op.execute("GRANT SELECT ON thumbnail_results TO curation_reader")
    apply_views(op, "0017")


def downgrade() -> None:
    apply_views(op, "0016")  # the 0016 views do not read thumbnail_results: drop the table after them
    op.execute("DROP TABLE IF EXISTS thumbnail_results")
