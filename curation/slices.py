"""Browsing a slice, one page at a time, and everything stored about one asset: what the console's slice
browser (``curation serve``) shows.

A slice is a user's predicate over a curated view, so it is checked (``curation.user_sql.check_predicate``,
the same rule as export ``--where``) before anything runs and then runs as the read-only
``curation_reader`` role with a statement timeout. An asset's stored results are read by the platform
with a fixed query keyed by the asset id: no user text reaches that SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from curation.export import EXPORT_VIEWS
from curation.user_sql import UnsafeSQL, check_predicate, reader_engine

# columns a slice card does not show as a score (ids, hashes, provenance, the thumbnail's own size)
_NOT_SHOWN = {"job_id", "asset_id", "exact_duplicate_of", "near_duplicate_of", "semantic_duplicate_of",
              "video_id", "start_frame", "end_frame", "cluster_id", "thumbnail_width", "thumbnail_height",
              "exif_orientation", "rotation", "width", "height", "bytes", "long_side", "decode_ms", "decoded"}
SCORES_PER_CARD = 6


class SliceError(ValueError):
    """The slice could not be read: the predicate was refused before running, or the database refused it
    (an unknown column, a type error, the statement timeout). The message is the user's to read."""


@dataclass(frozen=True)
class SliceRow:
    asset_id: int
    job_id: int
    uri: str
    has_thumbnail: bool
    scores: list[tuple[str, Any]]  # (column, value) of the first few numeric or boolean columns set


@dataclass
class SlicePage:
    view: str
    predicate: str
    page: int
    per_page: int
    rows: list[SliceRow] = field(default_factory=list)
    more: bool = False  # another page follows


def _scores(record: dict) -> list[tuple[str, Any]]:
    """The first few numbers of the row (scores, in view order), then its flags."""
    numbers, flags = [], []
    for name, value in record.items():
        if name in _NOT_SHOWN or name.endswith("_version") or value is None:
            continue
        if isinstance(value, bool):
            flags.append((name, value))
        elif isinstance(value, (int, float)):
            numbers.append((name, round(value, 3) if isinstance(value, float) else value))
    return (numbers + flags)[:SCORES_PER_CARD]


def read_slice(engine: Engine, predicate: str, *, view: str = "curated_images", job_id: int | None = None,
               page: int = 0, per_page: int = 24, timeout_s: float = 15.0) -> SlicePage:
    """One page (``page`` from 0) of ``view`` rows matching ``predicate``, ordered by asset id, optionally
    within one job. Raises ``SliceError``; a refused predicate never reaches the database."""
    if view not in EXPORT_VIEWS:
        raise SliceError(f"unknown view {view!r}; one of {', '.join(EXPORT_VIEWS)}")
    try:
        check_predicate(predicate)
    except UnsafeSQL as exc:
        raise SliceError(f"{exc} (nothing was run)") from None
    page, per_page = max(0, page), max(1, min(per_page, 200))
    # the numbers are ints, formatted in; no parameters at all, so psycopg2 leaves '%' and ':' in the
    # predicate alone (``LIKE '%cat%'``)
    job_clause = f"AND c.job_id = {int(job_id)} " if job_id is not None else ""
    sql = (f"SELECT c.* FROM {view} c WHERE ({predicate}) {job_clause}"
           f"ORDER BY c.asset_id, c.job_id LIMIT {per_page + 1} OFFSET {page * per_page}")
    reader = reader_engine(engine, timeout_s=timeout_s)
    try:
        with reader.connect() as conn:
            cursor = conn.connection.driver_connection.cursor()
            cursor.execute(sql)
            names = [d.name for d in cursor.description]
            records = [dict(zip(names, r)) for r in cursor.fetchall()]
            conn.rollback()
    except Exception as exc:  # noqa: BLE001 - the database's own message, e.g. an unknown column
        message = str(getattr(exc, "orig", exc)).strip().splitlines()
        raise SliceError(f"the predicate failed: {message[0] if message else exc.__class__.__name__}") from None
    finally:
        reader.dispose()
    result = SlicePage(view=view, predicate=predicate, page=page, per_page=per_page, more=len(records) > per_page)
    for record in records[:per_page]:
        result.rows.append(SliceRow(asset_id=record["asset_id"], job_id=record["job_id"], uri=record["uri"],
                                    has_thumbnail=record.get("thumbnail_uri") is not None, scores=_scores(record)))
    return result


# --- one asset --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredResult:
    """One result row of one stage's table, with what made it (``stage_configs``)."""

    table: str
    config_id: str
    stage: str | None
    stage_version: str
    created_at: Any
    params: dict | None
    models: dict | None
    values: list[tuple[str, str]]  # (column, value as shown)


@dataclass(frozen=True)
class AssetDetail:
    asset_id: int
    uri: str
    kind: str
    source: str
    parent_id: int | None
    start_s: float | None
    end_s: float | None
    jobs: list[int]
    results: list[StoredResult]
    errors: list[tuple[str, str, str, str]]  # (stage, stage_version, error class, message)


class UnknownAsset(LookupError):
    """No asset has this id."""


def _shown(value: Any) -> str:
    if isinstance(value, (bytes, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if hasattr(value, "shape") or (isinstance(value, list) and len(value) > 16):
        n = value.shape[0] if hasattr(value, "shape") else len(value)
        return f"<vector of {n}>"
    shown = str(value)
    return shown if len(shown) <= 400 else shown[:400] + "…"


def asset_detail(engine: Engine, asset_id: int, tables: list[str] | None = None) -> AssetDetail:
    """Every stored result of the asset in every built-in stage's table (every configuration, not only the
    ones a job used), each with its configuration's stage, params and models, and its item errors."""
    from curation.metrics import result_tables

    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT a.asset_id, a.uri, a.kind, s.name AS source, a.parent_id, a.start_s, a.end_s FROM assets a "
            "JOIN sources s ON s.source_id = a.source_id WHERE a.asset_id = :a"), {"a": asset_id}).first()
        if row is None:
            raise UnknownAsset(f"no asset {asset_id}")
        jobs = list(conn.execute(text("SELECT job_id FROM job_assets WHERE asset_id = :a ORDER BY job_id"),
                                 {"a": asset_id}).scalars())
        # the result tables this database has (a stage newer than its migrations has none yet) with the
        # per-asset key
        keyed = set(conn.execute(text(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND column_name IN ('asset_id', 'config_id', 'stage_version', 'created_at') "
            "GROUP BY table_name HAVING count(*) = 4")).scalars())
        results = []
        for table in [t for t in (tables or result_tables()) if t in keyed]:
            for r in conn.execute(text(
                    f"SELECT r.*, sc.stage AS _stage, sc.params AS _params, sc.models AS _models FROM {table} r "
                    "LEFT JOIN stage_configs sc ON sc.config_id = r.config_id WHERE r.asset_id = :a "
                    "ORDER BY r.created_at"), {"a": asset_id}).mappings():
                values = [(k, _shown(v)) for k, v in r.items()
                          if not k.startswith("_") and k not in ("asset_id", "config_id", "stage_version", "created_at")]
                results.append(StoredResult(table=table, config_id=r["config_id"], stage=r["_stage"],
                                            stage_version=r["stage_version"], created_at=r["created_at"],
                                            params=r["_params"], models=r["_models"], values=values))
        errors = [tuple(e) for e in conn.execute(text(
            "SELECT stage, stage_version, error_class, message FROM item_errors WHERE asset_id = :a ORDER BY stage"),
            {"a": asset_id})]
    return AssetDetail(asset_id=row.asset_id, uri=row.uri, kind=row.kind, source=row.source, parent_id=row.parent_id,
                       start_s=row.start_s, end_s=row.end_s, jobs=jobs, results=results, errors=errors)


def thumbnail_uri(engine: Engine, asset_id: int, job_id: int | None = None) -> str | None:
    """The stored thumbnail of an asset: the one of a configuration ``job_id`` used, else the newest. Only
    URIs a thumbnail stage wrote are ever returned, so a web path can never name a file."""
    sql = ("SELECT t.thumbnail_uri FROM thumbnail_results t WHERE t.asset_id = :a "
           "ORDER BY (t.config_id IN (SELECT config_id FROM job_configs WHERE job_id = :j)) DESC, t.created_at DESC "
           "LIMIT 1")
    with engine.connect() as conn:
        return conn.execute(text(sql), {"a": asset_id, "j": job_id}).scalar()
