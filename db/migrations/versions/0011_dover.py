"""DOVER technical / aesthetic / overall video quality of scenes (stage dover); curated_scenes gains them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25
"""

import sys
from pathlib import Path

from alembic import op

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from view_snapshots import extend_view, load_revision  # noqa: E402

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


DOVER_COLUMNS = """,
    dv.dover_technical,
    dv.dover_aesthetic,
    dv.dover_overall,
    dv.stage_version                        AS dover_version"""

CURATED_SCENES_VIEW = extend_view(load_revision("0009_topiq_qalign_complexity.py").CURATED_SCENES_VIEW, DOVER_COLUMNS,
                                  "dover_results", "dv")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE dover_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            dover_technical double precision NOT NULL,
            dover_aesthetic double precision NOT NULL,
            dover_overall double precision NOT NULL,
            technical_raw double precision NOT NULL,
            aesthetic_raw double precision NOT NULL,
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
    op.execute(load_revision("0009_topiq_qalign_complexity.py").CURATED_SCENES_VIEW)
    op.execute("DROP TABLE IF EXISTS dover_results")
