"""Watermark scores (stages watermark and video_watermark); both curated views gain them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _revision(file: str):
    spec = importlib.util.spec_from_file_location(file, Path(__file__).with_name(file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with_watermark(view_sql: str) -> str:
    """An earlier view (a snapshot) with the watermark columns appended and their join added."""
    select_end = view_sql.index("\nFROM assets a")
    columns = """,
    wm.classifier_p                         AS watermark_classifier_p,
    wm.detector_conf                        AS watermark_detector_conf,
    wm.watermark,
    wm.stage_version                        AS watermark_version"""
    out = view_sql[:select_end] + columns + view_sql[select_end:]
    join = """LEFT JOIN LATERAL (SELECT * FROM watermark_results x WHERE x.asset_id = a.asset_id
                   ORDER BY x.created_at DESC LIMIT 1) wm ON true
-- exact duplicate"""
    assert out.count("-- exact duplicate") == 1
    return out.replace("-- exact duplicate", join, 1)


CURATED_IMAGES_VIEW = _with_watermark(_revision("0006_objects.py").CURATED_IMAGES_VIEW)
CURATED_SCENES_VIEW = _with_watermark(_revision("0006_objects.py").CURATED_SCENES_VIEW)


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
    op.execute(_revision("0006_objects.py").CURATED_IMAGES_VIEW)
    op.execute(_revision("0006_objects.py").CURATED_SCENES_VIEW)
    op.execute("DROP TABLE IF EXISTS watermark_results")
