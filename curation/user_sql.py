"""The read-only boundary for SQL a user types: ``curation query``, export predicates (``--where``,
``export.where``) and encode predicates.

Two layers, each enough on its own for the guarantees that matter:

1. **A privilege, not a mode.** User SQL runs on a connection that logs in as the ``curation_reader``
   role (created by migration 0012): ``SELECT`` on the curated views and the catalogue tables and
   nothing else, ``default_transaction_read_only``, a statement timeout set at connection time, not a
   superuser and in none of the ``pg_*`` server-file / program roles. ``SET TRANSACTION READ ONLY`` on the
   owner's connection (what this replaced) is a mode that ``COMMIT;`` ends.
2. **Checked before anything runs**, with PostgreSQL's own parser (``pglast`` = libpg_query): a query is
   exactly one ``SELECT`` (``WITH … SELECT``, ``VALUES`` and ``TABLE`` included) with no ``INTO``, no row
   locks and no data-modifying CTE; a predicate is one boolean expression over the view: no comments,
   no ``;``, balanced parentheses, and it must stay a lone ``WHERE`` clause when placed in one. Calls to
   session- or server-affecting functions (``set_config``, advisory locks, ``pg_terminate_backend``,
   ``dblink``, large objects, server files) are refused with a clear message.

The reader's connection: ``CURATION_READER_DATABASE_URL`` when set, else the main DSN with the user
replaced by ``curation_reader`` and the password from ``CURATION_READER_PASSWORD`` (none: trust / peer /
``.pgpass``, as the embedded server uses).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

READER_ROLE = "curation_reader"

# functions that change the session or the server, or reach outside the database
_DENIED_FUNCTIONS = (
    "set_config", "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
    "pg_promote", "pg_switch_wal", "pg_create_restore_point", "pg_backup_start", "pg_backup_stop",
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_file_write",
    "txid_current", "pg_current_xact_id", "pg_notify", "nextval", "setval",
)
_DENIED_PREFIXES = ("pg_advisory", "pg_try_advisory", "dblink", "lo_", "pg_ls_", "pg_log_")
_WRITE_NODES = ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")


class UnsafeSQL(ValueError):
    """User SQL refused before it ran; the message says what to change."""


def _parse(sql: str, what: str) -> tuple:
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        return parse_sql(sql)
    except ParseError as exc:
        raise UnsafeSQL(f"{what} is not valid SQL: {exc}") from None


def _walk(node: Any) -> Iterator[Any]:
    """Every AST node under ``node`` (itself included)."""
    from pglast.ast import Node

    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Node):
            yield current
            for slot in current.__slots__:
                stack.append(getattr(current, slot, None))
        elif isinstance(current, (list, tuple)):
            stack.extend(current)


def _function_name(call: Any) -> str:
    return ".".join(part.sval for part in call.funcname if hasattr(part, "sval")).lower()


def _check_tree(stmt: Any, what: str) -> None:
    for node in _walk(stmt):
        kind = type(node).__name__
        if kind in _WRITE_NODES:
            verb = kind.removesuffix("Stmt").upper()
            raise UnsafeSQL(f"{what} may only read: it contains {verb}")
        if kind == "SelectStmt":
            if node.intoClause is not None:
                raise UnsafeSQL(f"{what} may only read: SELECT … INTO creates a table")
            if node.lockingClause:
                raise UnsafeSQL(f"{what} may only read: FOR UPDATE / FOR SHARE locks rows")
        if kind == "FuncCall":
            name = _function_name(node)
            base = name.rsplit(".", 1)[-1]
            if base in _DENIED_FUNCTIONS or base.startswith(_DENIED_PREFIXES):
                raise UnsafeSQL(f"{what} may not call {name}(): it changes the session or the server")


def check_query(sql: str) -> None:
    """Refuse anything but exactly one read-only SELECT statement."""
    if not sql.strip():
        raise UnsafeSQL("the query is empty")
    stmts = _parse(sql, "the query")
    if len(stmts) != 1:
        raise UnsafeSQL(f"give exactly one statement per query, not {len(stmts)} (nothing was run)")
    stmt = stmts[0].stmt
    kind = type(stmt).__name__
    if kind != "SelectStmt":
        verb = kind.removesuffix("Stmt").upper()
        raise UnsafeSQL(f"queries are read-only: only SELECT (or WITH … SELECT, VALUES, TABLE), not {verb} "
                        "(nothing was run)")
    _check_tree(stmt, "the query")


def check_predicate(predicate: str, *, what: str = "the predicate") -> None:
    """Refuse anything but one boolean expression usable as ``WHERE (<predicate>)``."""
    from pglast.parser import scan

    if not predicate.strip():
        raise UnsafeSQL(f"{what} is empty")
    try:
        tokens = scan(predicate)
    except Exception as exc:  # noqa: BLE001 - the scanner's own message
        raise UnsafeSQL(f"{what} is not valid SQL: {exc}") from None
    depth = 0
    for token in tokens:
        if token.name in ("SQL_COMMENT", "C_COMMENT"):
            raise UnsafeSQL(f"{what} may not contain comments ('--' or '/* */')")
        text = predicate[token.start : token.end + 1]
        if text == ";":
            raise UnsafeSQL(f"{what} must be a single SQL expression (no ';')")
        depth += {"(": 1, ")": -1}.get(text, 0)
        if depth < 0:
            raise UnsafeSQL(f"{what} closes a parenthesis it did not open")
    if depth != 0:
        raise UnsafeSQL(f"{what} leaves a parenthesis open")
    stmts = _parse(f"SELECT 1 WHERE ({predicate})", what)
    stmt = stmts[0].stmt if len(stmts) == 1 else None
    lone_where = (
        stmt is not None and type(stmt).__name__ == "SelectStmt" and stmt.whereClause is not None
        and getattr(stmt.op, "name", str(stmt.op)) == "SETOP_NONE"
        and not any(getattr(stmt, f) for f in ("fromClause", "groupClause", "havingClause", "sortClause",
                                              "limitCount", "limitOffset", "windowClause", "distinctClause",
                                              "withClause", "lockingClause"))
        and len(stmt.targetList or ()) == 1
    )
    if not lone_where:
        raise UnsafeSQL(f"{what} must be one boolean expression over the view's columns")
    _check_tree(stmt, what)


def reader_url(main_url: str) -> str:
    """The DSN user SQL runs under (see the module docstring)."""
    explicit = os.environ.get("CURATION_READER_DATABASE_URL")
    if explicit:
        url = explicit
        if url.startswith(("postgresql://", "postgres://")):
            url = "postgresql+psycopg2://" + url.split("://", 1)[1]
        return url
    url = make_url(main_url).set(username=READER_ROLE, password=os.environ.get("CURATION_READER_PASSWORD"))
    return url.render_as_string(hide_password=False)


def reader_engine(main_url: str | Engine, *, timeout_s: float = 60.0) -> Engine:
    """A fresh-connection engine logged in as the reader role: read-only by default and by privilege,
    every statement limited to ``timeout_s``. No pooling: nothing a statement sets outlives it."""
    if isinstance(main_url, Engine):
        main_url = main_url.url.render_as_string(hide_password=False)
    options = f"-c default_transaction_read_only=on -c statement_timeout={max(1, int(timeout_s * 1000))}"
    return create_engine(reader_url(main_url), poolclass=NullPool,
                         connect_args={"options": options, "application_name": "curation-user-sql",
                                       "connect_timeout": 10})
