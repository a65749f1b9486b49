"""TOPIQ (stage topiq), Q-Align (stages qalign, video_qalign) and SAM 2 + Sobel complexity (stage
complexity); curated_images gains all three, curated_scenes the Q-Align ratings.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""

import sys
from pathlib import Path

from alembic import op

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from view_snapshots import extend_view, load_revision  # noqa: E402

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


TOPIQ_COLUMNS = """,
    tq.topiq_technical,
    tq.topiq_aesthetic,
    tq.stage_version                        AS topiq_version"""

QALIGN_COLUMNS = """,
    qa.qalign_quality,
    qa.qalign_aesthetic,
    qa.sft_candidate                        AS qalign_sft_candidate,
    qa.stage_version                        AS qalign_version"""

COMPLEXITY_COLUMNS = """,
    cx.complexity,
    cx.mask_count,
    cx.mask_coverage,
    cx.too_simple,
    cx.stage_version                        AS complexity_version"""

CURATED_IMAGES_VIEW = extend_view(
    extend_view(
        extend_view(load_revision("0007_watermark.py").CURATED_IMAGES_VIEW, TOPIQ_COLUMNS, "topiq_results", "tq"),
        QALIGN_COLUMNS, "qalign_results", "qa"),
    COMPLEXITY_COLUMNS, "complexity_results", "cx")
CURATED_SCENES_VIEW = extend_view(load_revision("0008_motion.py").CURATED_SCENES_VIEW, QALIGN_COLUMNS,
                                  "qalign_results", "qa")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE topiq_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            topiq_technical double precision NOT NULL,
            topiq_aesthetic double precision NOT NULL,
            technical_model text NOT NULL,
            technical_sha256 text NOT NULL,
            aesthetic_model text NOT NULL,
            aesthetic_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, stage_version));

        CREATE TABLE qalign_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            qalign_quality double precision NOT NULL
                CONSTRAINT qalign_results_qalign_quality_check CHECK (qalign_quality BETWEEN 1 AND 5),
            qalign_aesthetic double precision NOT NULL
                CONSTRAINT qalign_results_qalign_aesthetic_check CHECK (qalign_aesthetic BETWEEN 1 AND 5),
            sft_candidate boolean NOT NULL,
            frames_sampled integer NOT NULL,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, stage_version));

        CREATE TABLE complexity_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            stage_version text NOT NULL,
            mask_count integer NOT NULL CONSTRAINT complexity_results_mask_count_check CHECK (mask_count >= 0),
            mask_coverage double precision NOT NULL,
            edge_density double precision NOT NULL,
            edge_mean double precision NOT NULL,
            complexity double precision NOT NULL,
            too_simple boolean NOT NULL,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, stage_version));
        """
    )
    op.execute(CURATED_IMAGES_VIEW)
    op.execute(CURATED_SCENES_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS curated_images")
    op.execute("DROP VIEW IF EXISTS curated_scenes")
    op.execute(load_revision("0007_watermark.py").CURATED_IMAGES_VIEW)
    op.execute(load_revision("0008_motion.py").CURATED_SCENES_VIEW)
    op.execute("DROP TABLE IF EXISTS complexity_results")
    op.execute("DROP TABLE IF EXISTS qalign_results")
    op.execute("DROP TABLE IF EXISTS topiq_results")
