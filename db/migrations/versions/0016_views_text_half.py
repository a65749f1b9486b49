"""The curated views with the text half's columns (captions, domain, clusters), rendered from the stage
registry by ``python -m workers.views 0016`` (``db/migrations/views/*.0016.sql``); the raw EXIF
orientation of an image (``probe_results.orientation``: probe@2 measures images as displayed); phash@2's
mirrored and centre hashes and colourfulness, and the comparison that found a near-duplicate pair
(``near_duplicates.kind``: full, mirror, center).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

import sys
from pathlib import Path

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from view_snapshots import apply_views  # noqa: E402


def upgrade() -> None:
    op.execute("ALTER TABLE probe_results ADD COLUMN orientation smallint NOT NULL DEFAULT 1")
    # phash@2: mirrored and centre hashes (flipped copies, small rotations), colourfulness (keep colour)
    op.execute("ALTER TABLE phash_results ADD COLUMN phash_mirror bit(64), ADD COLUMN phash_center bit(64), "
               "ADD COLUMN colourfulness double precision")
    op.execute("CREATE INDEX phash_results_center_hnsw_idx ON phash_results USING hnsw (phash_center bit_hamming_ops)")
    op.execute("ALTER TABLE near_duplicates ADD COLUMN kind text NOT NULL DEFAULT 'full'")
    apply_views(op, "0016")


def downgrade() -> None:
    for view in ("curated_images", "curated_scenes"):  # they read probe_results.*: drop them around the column
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute("ALTER TABLE probe_results DROP COLUMN orientation")
    op.execute("ALTER TABLE near_duplicates DROP COLUMN kind")
    op.execute("DROP INDEX IF EXISTS phash_results_center_hnsw_idx")
    op.execute("ALTER TABLE phash_results DROP COLUMN phash_mirror, DROP COLUMN phash_center, DROP COLUMN colourfulness")
    apply_views(op, "0013")
