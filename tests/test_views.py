"""The curated views are rendered from the stage registry (workers/views.py): the newest committed SQL
file of each view must equal today's rendering (so a stage's view columns change only with a migration),
and the migrated database's views must have exactly the rendered columns."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from curation.db import make_engine
from workers.views import VIEW_NAMES, ViewError, declarations, newest_snapshot, render_view


@pytest.mark.parametrize("view", VIEW_NAMES)
def test_the_newest_snapshot_is_the_registry_rendering(view):
    revision, path = newest_snapshot(view)
    assert path.read_text() == render_view(view, revision), (
        f"{view}: the stage registry's view columns changed since {path.name}; add a migration that applies "
        "`python -m workers.views <revision>`'s new file")


@pytest.mark.parametrize("view", VIEW_NAMES)
def test_the_migrated_view_has_the_rendered_columns(db_url, view):
    engine = make_engine(db_url, pool_size=1)
    with engine.connect() as conn:
        columns = conn.execute(text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = :v ORDER BY ordinal_position"),
            {"v": view}).scalars().all()
    rendered = render_view(view, "x")
    select = rendered[rendered.index("SELECT\n") + 7: rendered.index("\nFROM job_assets")].split(",\n")
    names = [item.strip().rsplit(" AS ", 1)[-1].rsplit(".", 1)[-1] for item in select]
    assert columns == names
    assert columns[:2] == ["job_id", "asset_id"]


def test_every_stage_of_a_view_declares_its_table_and_version():
    for view in VIEW_NAMES:
        names = [name for name, _, _ in declarations(view)]
        assert len(names) == len(set(names)), view
    assert {"probe", "resolution", "phash", "edges", "text"} <= {n for n, _, _ in declarations("curated_images")}
    assert {"video_probe", "scenes", "video_hash", "dynamics"} <= {n for n, _, _ in declarations("curated_scenes")}


def test_a_broken_declaration_is_refused():
    with pytest.raises(ViewError):
        render_view("curated_everything", "x")
