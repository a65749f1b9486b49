"""Object detections (stages objects and video_objects); both curated views gain object_labels and
n_objects.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _revision(file: str):
    spec = importlib.util.spec_from_file_location(file, Path(__file__).with_name(file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with_objects(view_sql: str) -> str:
    """A 0005 view with the object columns appended and their join added."""
    select_end = view_sql.index("\nFROM assets a")
    columns = """,
    ob.labels                               AS object_labels,
    ob.n_detections                         AS n_objects,
    ob.stage_version                        AS objects_version"""
    out = view_sql[:select_end] + columns + view_sql[select_end:]
    join = """LEFT JOIN LATERAL (SELECT * FROM object_results x WHERE x.asset_id = a.asset_id
                   ORDER BY x.created_at DESC LIMIT 1) ob ON true
-- exact duplicate"""
    assert out.count("-- exact duplicate") == 1
    return out.replace("-- exact duplicate", join, 1)


CURATED_IMAGES_VIEW = _with_objects(_revision("0005_clip.py").CURATED_IMAGES_VIEW)
CURATED_SCENES_VIEW = _with_objects(_revision("0005_clip.py").CURATED_SCENES_VIEW)


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
    op.execute(_revision("0005_clip.py").CURATED_IMAGES_VIEW)
    op.execute(_revision("0005_clip.py").CURATED_SCENES_VIEW)
    op.execute("DROP TABLE IF EXISTS object_results")
