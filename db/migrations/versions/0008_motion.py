"""Camera / object / light dynamics of scenes (stage motion); curated_scenes gains them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

import sys
from pathlib import Path

from alembic import op

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from view_snapshots import extend_view, load_revision  # noqa: E402

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


MOTION_COLUMNS = """,
    mo.camera_motion,
    mo.object_motion,
    mo.light_dynamics,
    mo.stage_version                        AS motion_version"""

CURATED_SCENES_VIEW = extend_view(load_revision("0007_watermark.py").CURATED_SCENES_VIEW, MOTION_COLUMNS, "motion_results", "mo")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE motion_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            camera_motion double precision NOT NULL,
            object_motion double precision NOT NULL,
            light_dynamics double precision NOT NULL,
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
    op.execute(load_revision("0007_watermark.py").CURATED_SCENES_VIEW)
    op.execute("DROP TABLE IF EXISTS motion_results")
