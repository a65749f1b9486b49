"""Time windows of long videos (assets of kind ``window``: the scene split of one long video runs as
several tasks), and the first frame's presentation time in video_probe_results (window edges fall
between frames).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE assets DROP CONSTRAINT assets_kind_check")
    op.execute("ALTER TABLE assets ADD CONSTRAINT assets_kind_check CHECK (kind IN ('image', 'video', 'scene', 'window'))")
    op.execute("ALTER TABLE video_probe_results ADD COLUMN start_s double precision NOT NULL DEFAULT 0")


def downgrade() -> None:
    # curated_scenes reads video_probe_results.* : drop it around the column, then restore 0009's view
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from view_snapshots import load_revision

    op.execute("DROP VIEW IF EXISTS curated_scenes")
    op.execute("ALTER TABLE video_probe_results DROP COLUMN start_s")
    op.execute(load_revision("0009_topiq_qalign_complexity.py").CURATED_SCENES_VIEW)
    for table in ("scene_split_results", "item_errors", "job_assets"):
        op.execute(f"DELETE FROM {table} WHERE asset_id IN (SELECT asset_id FROM assets WHERE kind = 'window')")
    op.execute("DELETE FROM assets WHERE kind = 'window'")
    op.execute("ALTER TABLE assets DROP CONSTRAINT assets_kind_check")
    op.execute("ALTER TABLE assets ADD CONSTRAINT assets_kind_check CHECK (kind IN ('image', 'video', 'scene'))")
