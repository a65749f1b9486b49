"""Object detections (stages objects and video_objects); both curated views gain object_labels and
n_objects.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

import sys
from pathlib import Path

from alembic import op

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from view_snapshots import extend_view, load_revision  # noqa: E402

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


OBJECT_COLUMNS = """,
    ob.labels                               AS object_labels,
    ob.n_detections                         AS n_objects,
    ob.stage_version                        AS objects_version"""

CURATED_IMAGES_VIEW = extend_view(load_revision("0005_clip.py").CURATED_IMAGES_VIEW, OBJECT_COLUMNS, "object_results", "ob")
CURATED_SCENES_VIEW = extend_view(load_revision("0005_clip.py").CURATED_SCENES_VIEW, OBJECT_COLUMNS, "object_results", "ob")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE object_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            detections jsonb NOT NULL,
            labels text[] NOT NULL,
            n_detections integer NOT NULL,
            max_conf double precision NOT NULL,
            frames_sampled integer NOT NULL,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, stage_version));
        CREATE INDEX object_results_labels_idx ON object_results USING gin (labels);
        """
    )
    op.execute(CURATED_IMAGES_VIEW)
    op.execute(CURATED_SCENES_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS curated_images")
    op.execute("DROP VIEW IF EXISTS curated_scenes")
    op.execute(load_revision("0005_clip.py").CURATED_IMAGES_VIEW)
    op.execute(load_revision("0005_clip.py").CURATED_SCENES_VIEW)
    op.execute("DROP TABLE IF EXISTS object_results")
