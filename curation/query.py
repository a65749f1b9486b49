"""Read-only SQL for users: ``curation query "SELECT ..."``. The statement runs in a READ ONLY
transaction with a statement timeout, so a query can neither change data nor run away."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text


class QueryError(RuntimeError):
    pass


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]


def run_query(engine: Engine, sql: str, *, timeout_s: float = 60.0, max_rows: int | None = None) -> QueryResult:
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(text("SET TRANSACTION READ ONLY"))
            conn.execute(text("SELECT set_config('statement_timeout', :t, true)"), {"t": f"{int(timeout_s * 1000)}ms"})
            try:
                result = conn.exec_driver_sql(sql)
            except Exception as exc:  # noqa: BLE001 - shown to the user as one line
                msg = str(getattr(exc, "orig", exc)).strip()
                raise QueryError(msg) from None
            if not result.returns_rows:
                return QueryResult([], [])
            columns = list(result.keys())
            rows = [tuple(r) for r in (result.fetchmany(max_rows) if max_rows else result.fetchall())]
    return QueryResult(columns, rows)


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def to_csv(result: QueryResult) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow([_plain(v) for v in row])
    return buf.getvalue()


def to_json(result: QueryResult) -> str:
    return json.dumps([{c: _plain(v) for c, v in zip(result.columns, row)} for row in result.rows], default=str)
