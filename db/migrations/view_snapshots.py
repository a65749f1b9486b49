"""Helpers for migrations that extend a curated view: load an earlier revision's view text (a snapshot)
and append columns and a LATERAL join to it. Kept tiny and append-only: migrations that ran must keep
producing the same SQL."""

from __future__ import annotations

import importlib.util
from pathlib import Path

VERSIONS = Path(__file__).parent / "versions"


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
