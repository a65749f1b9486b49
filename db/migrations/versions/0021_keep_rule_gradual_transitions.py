"""The keep-one rule's framing criterion and the scenes stage's gradual transitions (issue 14 §2–§3).

- ``phash_results.border_fill`` (phash@3): the share of the image's outer ring that is near black, which
  a rotated copy's new corners raise; the curated_images view's near-duplicate rule now follows the
  job's ``keep_rule`` criteria in order (colour, framing, quality, pixels, bytes by default:
  ``workers/phash.py``; ``db/migrations/views/*.0021.sql``, rendered by ``python -m workers.views 0021``).
- ``scene_split_results.gradual_starts`` / ``gradual_ends`` (scenes@2): the frames ``[start, end)`` of
  each fade or dissolve found, which no scene covers; ``model`` / ``weights_sha256``: TransNetV2's
  provenance where it ran (the ``transnetv2`` and ``fused`` detectors).

Revision ID: 0021
Revises: 0019
Create Date: 2026-12-01
"""

import sys
from pathlib import Path

from alembic import op

revision = "0021"
down_revision = "0019"
branch_labels = None
depends_on = None

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from view_snapshots import apply_views  # noqa: E402

PREVIOUS_VIEWS = "0018"  # the newest view snapshots before this revision


def upgrade() -> None:
    op.execute("ALTER TABLE phash_results ADD COLUMN IF NOT EXISTS border_fill double precision")
    op.execute("ALTER TABLE scene_split_results ADD COLUMN IF NOT EXISTS gradual_starts integer[], "
               "ADD COLUMN IF NOT EXISTS gradual_ends integer[], ADD COLUMN IF NOT EXISTS model text, "
               "ADD COLUMN IF NOT EXISTS weights_sha256 text")
    apply_views(op, "0021")


def downgrade() -> None:
    # the views select each result row's every column: drop them, then the columns, then the older views
    for view in ("curated_images", "curated_scenes"):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute("ALTER TABLE scene_split_results DROP COLUMN IF EXISTS gradual_starts, DROP COLUMN IF EXISTS gradual_ends, "
               "DROP COLUMN IF EXISTS model, DROP COLUMN IF EXISTS weights_sha256")
    op.execute("ALTER TABLE phash_results DROP COLUMN IF EXISTS border_fill")
    apply_views(op, PREVIOUS_VIEWS)
