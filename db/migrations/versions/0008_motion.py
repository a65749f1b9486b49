"""Camera / object / light dynamics of scenes (stage motion); curated_scenes gains them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _revision(file: str):
    spec = importlib.util.spec_from_file_location(file, Path(__file__).with_name(file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with_motion(view_sql: str) -> str:
    select_end = view_sql.index("\nFROM assets a")
    columns = """,
    mo.camera_motion,
    mo.object_motion,
    mo.light_dynamics,
    mo.stage_version                        AS motion_version"""
    out = view_sql[:select_end] + columns + view_sql[select_end:]
    join = """LEFT JOIN LATERAL (SELECT * FROM motion_results x WHERE x.asset_id = a.asset_id
                   ORDER BY x.created_at DESC LIMIT 1) mo ON true
-- exact duplicate"""
    assert out.count("-- exact duplicate") == 1
    return out.replace("-- exact duplicate", join, 1)


CURATED_SCENES_VIEW = _with_motion(_revision("0007_watermark.py").CURATED_SCENES_VIEW)


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
    op.execute(_revision("0007_watermark.py").CURATED_SCENES_VIEW)
    op.execute("DROP TABLE IF EXISTS motion_results")
