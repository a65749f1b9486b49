"""Watermark scores (stages watermark and video_watermark); both curated views gain them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

import sys
from pathlib import Path

from alembic import op

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from view_snapshots import extend_view, load_revision  # noqa: E402

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


WATERMARK_COLUMNS = """,
    wm.classifier_p                         AS watermark_classifier_p,
    wm.detector_conf                        AS watermark_detector_conf,
    wm.watermark,
    wm.stage_version                        AS watermark_version"""

CURATED_IMAGES_VIEW = extend_view(load_revision("0006_objects.py").CURATED_IMAGES_VIEW, WATERMARK_COLUMNS,
                                  "watermark_results", "wm")
CURATED_SCENES_VIEW = extend_view(load_revision("0006_objects.py").CURATED_SCENES_VIEW, WATERMARK_COLUMNS,
                                  "watermark_results", "wm")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE watermark_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            classifier_p double precision NOT NULL,
            detector_conf double precision,
            watermark boolean NOT NULL,
            frames_sampled integer NOT NULL,
            classifier_model text NOT NULL,
            classifier_sha256 text NOT NULL,
            detector_model text,
            detector_sha256 text,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, stage_version));
        """
    )
    op.execute(CURATED_IMAGES_VIEW)
    op.execute(CURATED_SCENES_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS curated_images")
    op.execute("DROP VIEW IF EXISTS curated_scenes")
    op.execute(load_revision("0006_objects.py").CURATED_IMAGES_VIEW)
    op.execute(load_revision("0006_objects.py").CURATED_SCENES_VIEW)
    op.execute("DROP TABLE IF EXISTS watermark_results")
