"""Read-only SQL for users: ``curation query "SELECT ..."``. The statement is checked (exactly one
read-only SELECT) and runs as the ``curation_reader`` role with a statement timeout (curation/user_sql.py),
so a query can neither change data nor run away. ``%`` in a query is an operator, not a placeholder."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from curation.user_sql import UnsafeSQL, check_query, reader_engine


class QueryError(RuntimeError):
    pass


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]


def run_query(engine: Engine, sql: str, *, timeout_s: float = 60.0, max_rows: int | None = None) -> QueryResult:
    """Run one user statement as the reader role (``engine`` is the platform's: only its address is used)."""
    try:
        check_query(sql)
    except UnsafeSQL as exc:
        raise QueryError(str(exc)) from None
    reader = reader_engine(engine, timeout_s=timeout_s)
    try:
        with reader.connect() as conn:
            cursor = conn.connection.driver_connection.cursor()
            try:
                cursor.execute(sql)  # no parameters: psycopg2 leaves '%' alone
            except Exception as exc:  # noqa: BLE001 - shown to the user as one line
                raise QueryError(str(exc).strip()) from None
            if cursor.description is None:
                return QueryResult([], [])
            columns = [d.name for d in cursor.description]
            rows = [tuple(r) for r in (cursor.fetchmany(max_rows) if max_rows else cursor.fetchall())]
            conn.rollback()
    except QueryError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. the reader role cannot log in
        raise QueryError(f"cannot connect as the read-only role: {str(getattr(exc, 'orig', exc)).strip()}") from None
    finally:
        reader.dispose()
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
