"""The curated views with the text half's columns (captions, domain, clusters), rendered from the stage
registry by ``python -m workers.views 0016`` (``db/migrations/views/*.0016.sql``).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

from pathlib import Path

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

VIEWS = Path(__file__).resolve().parent.parent / "views"


def _apply(revision_: str) -> None:
    for view in ("curated_images", "curated_scenes"):
        op.execute(f"DROP VIEW IF EXISTS {view}")
        op.execute((VIEWS / f"{view}.{revision_}.sql").read_text())
    op.execute("GRANT SELECT ON curated_images, curated_scenes TO curation_reader")


def upgrade() -> None:
    _apply("0016")


def downgrade() -> None:
    _apply("0013")
