"""CLIP embeddings and zero-shot classes (stages clip and video_clip); both curated views gain the
classes. The per-model HNSW indexes are created by the stage when a model's first rows are written
(curation/embeddings.py): pgvector indexes a fixed dimension and models differ.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

import sys
from pathlib import Path

from alembic import op

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from view_snapshots import extend_view, load_revision  # noqa: E402

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CLIP_COLUMNS = """,
    cl.location,
    cl.location_p,
    cl.style,
    cl.style_p,
    cl.main_subject,
    cl.main_subject_p,
    cl.place_type,
    cl.place_type_p,
    cl.stage_version                        AS clip_version"""

CURATED_IMAGES_VIEW = extend_view(load_revision("0003_quality_text.py").CURATED_IMAGES_VIEW, CLIP_COLUMNS, "clip_results", "cl")
CURATED_SCENES_VIEW = extend_view(load_revision("0004_video.py").CURATED_SCENES_VIEW, CLIP_COLUMNS, "clip_results", "cl")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE clip_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            embedding vector NOT NULL,
            location text NOT NULL,
            location_p double precision NOT NULL,
            style text NOT NULL,
            style_p double precision NOT NULL,
            main_subject text NOT NULL,
            main_subject_p double precision NOT NULL,
            place_type text NOT NULL,
            place_type_p double precision NOT NULL,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            taxonomy_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, stage_version));
        """
    )
    op.execute(CURATED_IMAGES_VIEW)
    op.execute(CURATED_SCENES_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS curated_images")
    op.execute("DROP VIEW IF EXISTS curated_scenes")
    op.execute(load_revision("0003_quality_text.py").CURATED_IMAGES_VIEW)
    op.execute(load_revision("0004_video.py").CURATED_SCENES_VIEW)
    op.execute("DROP TABLE IF EXISTS clip_results")
