"""Helpers for migrations that change a curated view. Since migration 0013 a view is a plain SQL file
rendered from the stage registry (``workers/views.py``) and committed per revision
(``views/<view>.<revision>.sql``): ``apply_views`` drops both views and creates them from a revision's
files. Before 0013 a migration extended an earlier revision's view text (``load_revision`` +
``extend_view``). Kept tiny and append-only: migrations that ran must keep producing the same SQL."""

from __future__ import annotations

import importlib.util
from pathlib import Path

VERSIONS = Path(__file__).parent / "versions"
VIEWS = Path(__file__).parent / "views"
VIEW_NAMES = ("curated_images", "curated_scenes")


def apply_views(op, revision: str) -> None:
    """Drop the curated views and create them from ``views/<view>.<revision>.sql``; the read-only role
    (migration 0012) may select them."""
    for view in VIEW_NAMES:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    for view in VIEW_NAMES:
        op.execute((VIEWS / f"{view}.{revision}.sql").read_text())
    op.execute(f"GRANT SELECT ON {', '.join(VIEW_NAMES)} TO curation_reader")


def load_revision(file: str):
    """The module of an earlier migration file in ``versions/``."""
    spec = importlib.util.spec_from_file_location(f"rev_{file.split('_')[0]}", VERSIONS / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def extend_view(view_sql: str, columns: str, table: str, alias: str) -> str:
    """``view_sql`` with ``columns`` (SQL text starting with ',') appended to the select list and the
    latest row of ``table`` for the asset joined as ``alias``, before the duplicate joins."""
    select_end = view_sql.index("\nFROM assets a")
    out = view_sql[:select_end] + columns + view_sql[select_end:]
    join = (f"LEFT JOIN LATERAL (SELECT * FROM {table} x WHERE x.asset_id = a.asset_id\n"
            f"                   ORDER BY x.created_at DESC LIMIT 1) {alias} ON true\n-- exact duplicate")
    if out.count("-- exact duplicate") != 1:
        raise ValueError("the view has no single '-- exact duplicate' marker")
    return out.replace("-- exact duplicate", join, 1)
